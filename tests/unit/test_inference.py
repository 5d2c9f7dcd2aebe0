"""mpidl.load: a run folder back to a model that predicts what the trained one did."""

import json
import os

import numpy as np
import pytest

import mpidl
from mpidl import nn
from mpidl.cli import parse_config
from mpidl.data import load_dataset
from mpidl.parallel.comm import SerialComm
from mpidl.trainer import Trainer
from support import REPO


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))


def test_a_script_built_model_loads_with_its_net_and_predicts_the_same(tmp_path):
    d = load_dataset("digits")
    t = mpidl.Trainer(_net(), train=(d.x_train / 16.0, d.y_train), val=(d.x_val / 16.0, d.y_val), epochs=3,
                      out=str(tmp_path), progress="none", comm=SerialComm())
    t.fit()
    with open(tmp_path / "summary.json") as f:
        json.load(f)  # strict JSON
    p = mpidl.load(str(tmp_path), net=_net())
    np.testing.assert_array_equal(p.outputs(d.x_val / 16.0), t.model.predict(d.x_val / 16.0))
    assert (p.predict(d.x_val / 16.0) == d.y_val).mean() == pytest.approx(t.evaluate()[1])
    with pytest.raises(mpidl.UserError, match="pass net="):
        mpidl.load(str(tmp_path))
    with pytest.raises(mpidl.UserError, match="do not fit"):
        mpidl.load(str(tmp_path), net=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def test_a_built_in_model_and_a_factory_rebuild_from_the_run_folder(tmp_path):
    d = load_dataset("digits")
    examples = os.path.join(REPO, "examples")
    for model in ("mlp", os.path.join(examples, "my_models.py") + ":build"):
        out = tmp_path / model.replace("/", "_")
        t = Trainer.from_config(parse_config(["--model", model, "--epochs", "2", "--out", str(out),
                                              "--progress", "none"]), SerialComm())
        t.fit()
        p = mpidl.load(str(out / "weights.npz"))
        # raw uint8 images in: the loader applies the training scale (1/16) itself
        accuracy = (p.predict(d.x_val) == d.y_val).mean()
        assert accuracy == pytest.approx(t.evaluate()[1]) and accuracy > 0.5


def test_a_model_given_as_module_path(tmp_path, monkeypatch):
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("from mpidl import nn\n\ndef tiny(shape, n, options):\n"
                                 "    return nn.Sequential(nn.Flatten(), nn.Linear(64, n))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = Trainer.from_config(parse_config(["--model", "mymodels.nets:tiny", "--max-steps", "3"]), SerialComm())
    assert [p.name for p in t.store.params] == ["1.weight", "1.bias"]
    with pytest.raises(mpidl.ConfigError, match="has no function"):
        Trainer.from_config(parse_config(["--model", "mymodels.nets:missing"]), SerialComm())
