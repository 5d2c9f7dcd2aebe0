"""weights.npz loads into a PyTorch model of the same architecture and gives the same outputs
(the README's export example, run for real)."""

import os

import numpy as np
import pytest

from support import run_train


def test_mlp_weights_load_into_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    out = str(tmp_path / "run")
    proc = run_train(1, ["--model", "mlp", "--hidden", "32,16", "--max-steps", "80", "--out", out,
                         "--progress", "none"], timeout=120)
    assert proc.returncode == 0, proc.stderr

    # --- the README example -------------------------------------------------------
    class MLP(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = nn.ModuleDict({f"fc{i + 1}": nn.Linear(a, b) for i, (a, b)
                                         in enumerate(zip(sizes[:-1], sizes[1:]))})

        def forward(self, x):
            x = x.flatten(1)
            *hidden, last = self.layers.values()
            for layer in hidden:
                x = torch.relu(layer(x))
            return last(x)

    weights = np.load(os.path.join(out, "weights.npz"))
    state = {"layers." + k.removeprefix("param/"): torch.from_numpy(weights[k])
             for k in weights.files if k.startswith("param/")}
    net = MLP([64, 32, 16, 10])
    net.load_state_dict(state)  # strict: every name and shape must match
    # -------------------------------------------------------------------------------

    from mpidl.checkpoint import load_weights
    from mpidl.data import load_dataset
    from mpidl.models import build_model
    data = load_dataset("digits")
    x = data.inputs(data.x_val, np.float32)
    ours = build_model("mlp", data.sample_shape, 10, {"hidden": (32, 16)}, dtype=np.float32, seed=123)  # different initial weights, then overwritten
    for name, value in load_weights(os.path.join(out, "weights.npz")).items():
        ours.store.named()[name][...] = value
    expected = ours.forward(x, train=False)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == data.y_val).mean() > 0.5  # trained, not just initialised
