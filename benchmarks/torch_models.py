"""mpidl's built-in networks rebuilt in PyTorch, layer for layer: the peer in the benchmarks
and the reference in the numerics tests (torch is never a runtime dependency of mpidl)."""

from __future__ import annotations


def torch_resnet20(channels: int = 3, n_out: int = 10):
    """ResNet-20 as mpidl.models.resnet builds it: projection shortcuts (1x1 conv + BN) where
    the shape changes, convolutions without bias, BN after each."""
    import torch
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.inner = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                       nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            self.shortcut = (None if stride == 1 and c_in == c_out else
                             nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.BatchNorm2d(c_out)))

        def forward(self, x):
            skip = x if self.shortcut is None else self.shortcut(x)
            return torch.relu(skip + self.inner(x))

    layers = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for s, c_out in enumerate((16, 32, 64)):
        for b in range(3):
            layers.append(Block(c_in, c_out, 2 if s > 0 and b == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_out)]
    return nn.Sequential(*layers)


def tensors_in_order(net) -> list:
    """Conv and linear weights (and biases), then batch norm's weight, bias, running mean and
    running variance: the order in which mpidl's parameter store lists them."""
    import torch
    out = []
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            out += [m.weight] + ([m.bias] if m.bias is not None else [])
        elif isinstance(m, torch.nn.BatchNorm2d):
            out += [m.weight, m.bias, m.running_mean, m.running_var]
    return out
