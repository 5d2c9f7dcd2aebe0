"""A checkpoint written by mpidl 0.1.0 (before modules were built from sizes) still resumes:
the built-in models kept their parameter names, and the resumed run ends with the weights
of an uninterrupted run of this version.

Within 1e-6, not bitwise: the fixture's first five steps ran on one BLAS kernel, and another
(OPENBLAS_CORETYPE=Haswell against SkylakeX here) rounds float32 GEMMs differently, by 3e-8
after ten steps. A lost optimiser state or a shifted parameter moves weights by 1e-3 or more."""

import os
import shutil

import numpy as np

from mpidl.cli import parse_config
from mpidl.parallel.comm import SerialComm
from mpidl.trainer import Trainer
from support import REPO

FIXTURE = os.path.join(REPO, "tests", "helpers", "fixtures", "ckpt-v0.1.0-mlp16-step5.npz")
ARGS = ["--model", "mlp", "--hidden", "16", "--max-steps", "10"]


def test_a_0_1_0_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "ckpt-000000005.npz")
    resumed = Trainer.from_config(parse_config([*ARGS, "--checkpoint-dir", str(tmp_path), "--resume", "latest"]),
                                  SerialComm())
    assert resumed.resume() is not None and resumed.global_step == 5
    resumed.train()
    whole = Trainer.from_config(parse_config(ARGS), SerialComm())
    whole.train()
    np.testing.assert_allclose(resumed.store.data, whole.store.data, rtol=0, atol=1e-6)
