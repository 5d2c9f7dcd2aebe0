"""Convolutional networks: the classic CIFAR-10 CNN and LeNet-5."""

from __future__ import annotations

from mpidl.models.base import ModelSpec, register
from mpidl.nn import Conv2dPoolReLU, Flatten, Linear, ReLU, Sequential


def build_cnn(shape, n_out, options):
    """The classic CIFAR-10 network; on 1-channel 28x28 images the same layers give fc 3136->512.

    Each conv-ReLU-maxpool block is one fused layer, Conv2dPoolReLU: max-pooling commutes with
    ReLU (both are monotone), so conv-maxpool-ReLU is the same function, and computing it in
    one pass never stores the full-resolution convolution output (see mpidl.ops.convpool).
    """
    channels, height, width = shape
    return Sequential({
        "conv1": Conv2dPoolReLU(channels, 32, 3, padding=1),
        "conv2": Conv2dPoolReLU(32, 64, 3, padding=1),
        "flatten": Flatten(),
        "fc1": Linear(64 * (height // 4) * (width // 4), 512), "relu": ReLU(),
        "fc2": Linear(512, n_out, init="xavier")})


def build_lenet(shape, n_out, options):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling; 28x28 inputs are padded to 32x32."""
    channels, height, width = shape
    pad = max(0, (32 - min(height, width)) // 2)
    h, w = ((height + 2 * pad - 4) // 2 - 4) // 2, ((width + 2 * pad - 4) // 2 - 4) // 2
    return Sequential({
        "conv1": Conv2dPoolReLU(channels, 6, 5, padding=pad),  # see build_cnn
        "conv2": Conv2dPoolReLU(6, 16, 5),
        "flatten": Flatten(),
        "fc1": Linear(16 * h * w, 120), "relu1": ReLU(),
        "fc2": Linear(120, 84), "relu2": ReLU(),
        "fc3": Linear(84, n_out, init="xavier")})


register("cnn", ModelSpec(build_cnn, "cross_entropy", "classification",
                          dict(dataset="fashion-mnist", epochs=4, batch_size=64, optimizer="sgd", lr=0.02,
                               momentum=0.9, schedule="cosine"),
                          "conv32-pool-conv64-pool-fc512 (CIFAR-10 classic; 1-channel variant for 28x28)"))
register("lenet", ModelSpec(build_lenet, "cross_entropy", "classification",
                            dict(dataset="fashion-mnist", epochs=5, batch_size=64, optimizer="sgd", lr=0.02,
                                 momentum=0.9),
                            "LeNet-5: conv6-pool-conv16-pool-fc120-fc84, ReLU"))
