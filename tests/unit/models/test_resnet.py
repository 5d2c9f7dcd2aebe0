"""resnet20: the architecture of He et al. (2016, CIFAR form), and its forward pass and every
gradient against the same network in PyTorch (float64, training mode)."""

import numpy as np
import pytest
import support  # noqa: F401  (puts benchmarks/ on the path)
from torch_models import tensors_in_order, torch_resnet20

from mpidl.models.base import build_model

torch = pytest.importorskip("torch")


def test_architecture_is_resnet20():
    model = build_model("resnet20", (3, 32, 32), 10, {}, dtype="float32", seed=0)
    trainable = [p for p in model.store.params if not p.buffer]
    convs = [p for p in trainable if p.data.ndim == 4 and p.data.shape[2:] == (3, 3)]
    assert len(convs) == 19  # 1 + 3 stages x 3 blocks x 2, plus the fc layer: 20 weighted layers
    assert sum(p.data.size for p in trainable) == 272_474  # the 0.27M of He et al.'s table 6
    projections = [p.name for p in trainable if p.data.ndim == 4 and p.data.shape[2:] == (1, 1)]
    assert projections == ["stage2_1.block.shortcut.conv.weight", "stage3_1.block.shortcut.conv.weight"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_and_every_gradient_equal_pytorch(shape):
    model = build_model("resnet20", shape, 10, {}, dtype="float64", seed=3)
    ref = torch_resnet20(shape[0], 10).double()
    mine = model.store.params
    theirs = tensors_in_order(ref)
    assert [tuple(p.data.shape) for p in mine] == [tuple(t.shape) for t in theirs]
    with torch.no_grad():
        for p, t in zip(mine, theirs):
            t.copy_(torch.from_numpy(np.array(p.data)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *shape))
    y = rng.integers(0, 10, 6)
    model.store.zero_grad()
    loss = model.loss_and_backward(x, y)
    ref.train()
    out = ref(torch.from_numpy(x))
    ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for p, t in zip(mine, theirs):
        if p.buffer:  # running statistics, updated in the forward pass
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=p.name)
        else:
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-8, atol=1e-11, err_msg=p.name)
