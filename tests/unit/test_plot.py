"""mpidl.plot: learning curves of several runs in one PNG, from step and epoch records, old files
without "kind", regression runs without accuracy; every error is one line, exit 2, no file."""

import json
import math
import sys

import pytest

pytest.importorskip("matplotlib")

from mpidl.plot import main, read_run  # noqa: E402


def _epoch(epoch, step, loss, acc, kind=True):
    rec = {"epoch": epoch, "step": step, "train_loss": loss, "val_loss": loss * 1.1, "val_accuracy": acc,
           "samples_per_sec": 5e4, "wall_time": step * 0.01, "lr": 0.001, "val_terms": {}}
    return {"kind": "epoch", **rec} if kind else rec


def _write_run(folder, records, summary=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return str(folder)


def classification_run(tmp_path, name="adam"):
    """Step records every 10 steps, an epoch record every 50, accuracy present."""
    records = []
    for e in range(1, 5):
        for s in range((e - 1) * 50 + 10, e * 50 + 1, 10):
            records.append({"kind": "step", "step": s, "epoch": e, "train_loss": 2 * math.exp(-s / 80),
                            "lr": 0.001, "samples_per_sec": 51234.0, "wall_time": s * 0.01})
        records.append(_epoch(e, e * 50, 2 * math.exp(-e * 50 / 80), 1 - 0.8 * math.exp(-e / 2)))
    return _write_run(tmp_path / name, records, {"config": {"model": "mlp", "dataset": "digits"},
                                                 "world_size": 2, "val_split": "val"})


def regression_run(tmp_path, name="regr"):
    return _write_run(tmp_path / name, [_epoch(e, e * 30, 1.0 / e, None) for e in range(1, 6)])


def old_run(tmp_path, name="old"):
    """A file from before records had a "kind": every line is an epoch record."""
    return _write_run(tmp_path / name, [_epoch(e, e * 40, 1.5 / e, 0.5 + e / 20, kind=False) for e in range(1, 6)])


def _assert_png(path, min_width=300):
    import matplotlib.image
    data = open(path, "rb").read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= 200 and img.shape[1] >= min_width
    return img


def test_two_runs_overlaid(tmp_path, capsys):
    out = tmp_path / "curves.png"
    a, b = classification_run(tmp_path), old_run(tmp_path)
    assert main([a, b, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (2 runs)"
    img = _assert_png(out)
    assert img.shape[1] > img.shape[0] * 1.8  # two panels side by side
    assert img.std() > 0.05  # not blank


def test_regression_only_has_one_panel(tmp_path, capsys):
    both, single = tmp_path / "both.png", tmp_path / "single.png"
    assert main([classification_run(tmp_path), "-o", str(both)]) == 0
    assert main([regression_run(tmp_path), "-o", str(single)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {single} (1 run)"
    wide, narrow = _assert_png(both), _assert_png(single)
    assert narrow.shape[1] < 0.75 * wide.shape[1]


def test_mixed_classification_and_regression_with_labels(tmp_path, capsys):
    out = tmp_path / "mixed.png"
    argv = [classification_run(tmp_path), regression_run(tmp_path), old_run(tmp_path),
            "-o", str(out), "--labels", "Adam, regression ,old format"]
    assert main(argv) == 0
    assert "(3 runs)" in capsys.readouterr().out
    _assert_png(out)


def test_default_output_name(tmp_path, capsys, monkeypatch):
    run = classification_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main([run]) == 0
    assert capsys.readouterr().out.strip() == "wrote curves.png (1 run)"
    _assert_png(tmp_path / "curves.png")


def test_read_run_prefers_step_records_and_skips_nulls(tmp_path):
    run = read_run(classification_run(tmp_path))
    assert run.folder == "adam" and run.train_from_steps and run.val_split == "val"
    assert [s for s, _ in run.train_loss] == list(range(10, 201, 10))
    assert [s for s, _ in run.val_loss] == [50, 100, 150, 200] == [s for s, _ in run.val_accuracy]
    reg = read_run(regression_run(tmp_path) + "/")  # a trailing slash still names the folder
    assert reg.folder == "regr" and not reg.train_from_steps and reg.val_accuracy == []
    assert [s for s, _ in reg.train_loss] == [30, 60, 90, 120, 150]
    records = [_epoch(1, 10, 1.0, 0.5), {**_epoch(2, 20, 0.5, 0.6), "val_loss": None},
               {"kind": "step", "step": 5, "train_loss": None}, {"kind": "something-new", "step": 1}]
    gappy = read_run(_write_run(tmp_path / "gappy", records))
    assert gappy.val_loss == [(10, 1.1)] and len(gappy.val_accuracy) == 2
    assert not gappy.train_from_steps and [s for s, _ in gappy.train_loss] == [10, 20]


def _bad_dirs(tmp_path):
    (tmp_path / "empty-folder").mkdir()
    broken = _write_run(tmp_path / "broken", [_epoch(1, 10, 1.0, 0.5)])
    with open(broken + "/metrics.jsonl", "a") as f:
        f.write("\n{\"kind\": \"epoch\", \"step\": 2\n")
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "metrics.jsonl").write_text("\n\n")
    listy = tmp_path / "listy"
    listy.mkdir()
    (listy / "metrics.jsonl").write_text("[1, 2]\n")
    return broken


@pytest.mark.parametrize("args,message", [
    (["{tmp}/nowhere"], "nowhere: no such run folder"),
    (["{tmp}/empty-folder"], "empty-folder: no metrics.jsonl"),
    (["{tmp}/broken"], "broken/metrics.jsonl line 3: not JSON"),
    (["{tmp}/blank"], "blank/metrics.jsonl: no records"),
    (["{tmp}/listy"], "listy/metrics.jsonl line 1: not a JSON object"),
    (["{good}", "{good}", "--labels", "only-one"], "--labels gives 1 label(s) for 2 run(s)"),
    (["{good}", "--labels", "a,b"], "--labels gives 2 label(s) for 1 run(s)"),
    (["{good}", "{tmp}/nowhere"], "nowhere: no such run folder"),  # one bad run: nothing drawn
])
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    _bad_dirs(tmp_path)
    good = classification_run(tmp_path)
    out = tmp_path / "out.png"
    argv = [a.format(tmp=tmp_path, good=good) for a in args] + ["-o", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpidl.plot: error: ")
    assert message in lines[0]
    assert captured.out == ""
    assert not out.exists()


def test_unwritable_output(tmp_path, capsys):
    good = classification_run(tmp_path)
    for out in (tmp_path / "no-such-folder" / "c.png", tmp_path / "curves.xyz"):
        assert main([good, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mpidl.plot: error: cannot write {out}") and err.count("\n") == 1
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adam"]  # no temporary files left behind


def test_missing_matplotlib(tmp_path, capsys, monkeypatch):
    good = classification_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    out = tmp_path / "c.png"
    assert main([good, "-o", str(out)]) == 2
    assert capsys.readouterr().err == "mpidl.plot: error: needs matplotlib: pip install 'mpidl[plot]'\n"
    assert not out.exists()


def test_module_runs_as_a_script(tmp_path):
    import subprocess
    out = tmp_path / "c.png"
    proc = subprocess.run([sys.executable, "-m", "mpidl.plot", classification_run(tmp_path), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out} (1 run)\n"
    _assert_png(out)
