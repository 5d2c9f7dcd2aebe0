"""The trainer's step against the textbook loop written out by hand: zero the gradients,
forward and backward, update. The trainer lets the optimizer zero the gradients on its way
(no separate pass); the weights must come out identical, with and without micro-batches.
An unknown setting is refused with a suggestion."""

import numpy as np
import pytest

import mpidl
from mpidl import nn
from mpidl.parallel.comm import SerialComm
from mpidl.cli import parse_config
from mpidl.trainer import Trainer


@pytest.mark.parametrize("extra", [["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05"],
                                   ["--optimizer", "adam", "--lr", "0.01", "--accumulate", "3"]])
def test_trainer_steps_equal_the_loop_written_out(extra):
    args = ["--model", "mlp", "--max-steps", "6", "--batch-size", "32", "--dtype", "float64", "--seed", "4",
            "--progress", "none", *extra]
    trained = Trainer.from_config(parse_config(args), SerialComm())
    trained.train()

    by_hand = Trainer.from_config(parse_config(args), SerialComm())
    steps = iter(by_hand.sampler.epoch(0))
    for i in range(6):
        step = next(steps)
        x, y = by_hand.prepare_batch(step)
        by_hand.store.zero_grad()
        n = len(step.indices)
        for part in np.array_split(np.arange(n), by_hand.cfg.accumulate):
            by_hand.model.loss_and_backward(x[part], y[part], weight=step.weight * len(part) / n)
        by_hand.optimizer.step(by_hand.store.data, by_hand.store.grad, by_hand.schedule(i))
    np.testing.assert_array_equal(trained.store.data, by_hand.store.data)
    assert not trained.store.grad.any()          # left zeroed by the last update


def test_trainer_rejects_an_unknown_setting_with_a_suggestion():
    x, y = np.zeros((8, 4)), np.zeros(8, dtype=int)
    with pytest.raises(mpidl.ConfigError, match="did you mean batch_size"):
        mpidl.Trainer(nn.Linear(4, 2), train=(x, y), epochs=1, batch_sise=4,
                      comm=mpidl.parallel.comm.SerialComm())


def test_a_run_that_ended_mid_epoch_resumes_to_a_larger_target_exactly(tmp_path):
    """--max-steps 20 (inside epoch 1 of 22 steps), then --resume with --max-steps 40: the same
    weights as 40 steps without interruption, and the checkpoint records the true position."""
    from mpidl.checkpoint import meta_of, read_checkpoint
    base = ["--model", "mlp", "--hidden", "16", "--dtype", "float64", "--progress", "none",
            "--checkpoint-dir", str(tmp_path / "ck")]
    first = Trainer.from_config(parse_config([*base, "--max-steps", "20"]), SerialComm())
    first.fit()
    meta = meta_of(read_checkpoint(str(tmp_path / "ck" / "ckpt-000000020.npz")))
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, 20)
    resumed = Trainer.from_config(parse_config([*base, "--max-steps", "40", "--resume", "latest"]), SerialComm())
    resumed.fit()
    whole = Trainer.from_config(parse_config(["--model", "mlp", "--hidden", "16", "--dtype", "float64",
                                              "--max-steps", "40"]), SerialComm())
    whole.train()
    assert resumed.global_step == 40
    np.testing.assert_array_equal(resumed.store.data, whole.store.data)


def test_resuming_a_finished_run_says_so_and_writes_strict_json(tmp_path, capsys):
    import json
    # 22 steps: exactly one epoch of the digits, so the resumed run has no step and no epoch left
    args = ["--model", "mlp", "--hidden", "16", "--max-steps", "22", "--progress", "none",
            "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "out")]
    Trainer.from_config(parse_config(args), SerialComm()).fit()
    again = Trainer.from_config(parse_config([*args, "--resume", "latest"]), SerialComm())
    again.fit()
    assert "already at step 22 of 22: nothing to train" in capsys.readouterr().out
    text = (tmp_path / "out" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary["train_loss"] is None and summary["steps"] == 22


@pytest.mark.parametrize("eval_batch,calls", [(None, 4), (1000, 1)])
def test_evaluation_batches_default_to_the_training_share(eval_batch, calls):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)), rng.integers(0, 3, 200)
    settings = dict(batch_size=32, max_steps=1, progress="none")
    if eval_batch:
        settings["eval_batch_size"] = eval_batch
    t = mpidl.Trainer(nn.Sequential(nn.Linear(8, 3)), train=(x[:100], y[:100]), val=(x[100:], y[100:]),
                      comm=SerialComm(), **settings)
    sizes = []
    evaluate_sums = t.model.evaluate_sums
    t.model.evaluate_sums = lambda xb, yb: sizes.append(len(xb)) or evaluate_sums(xb, yb)
    loss, _ = t.evaluate()
    assert len(sizes) == calls and sum(sizes) == 100 and max(sizes) <= (eval_batch or 32)
    assert np.isfinite(loss)
