"""ResNet for small images (He et al. 2016, "Deep Residual Learning for Image Recognition",
section 4.2, the CIFAR-10 form): a 3x3 convolution with 16 channels, three stages of n basic
blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 halves the resolution),
global average pooling and one dense layer: 6n + 2 layers, resnet20 for n = 3.

Built only from the public mpidl.nn API, as a user's model would be. A basic block is
relu(shortcut(x) + bn(conv(relu(bn(conv(x)))))); the shortcut is the identity where shapes
match and a projection (1x1 convolution with stride 2, then batch norm) where they change
(He et al.'s option B). Convolutions have no bias: the batch norm after each one has it.
"""

from __future__ import annotations

from mpidl.models.base import ModelSpec, register
from mpidl.nn import BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, ReLU, Residual, Sequential

STAGE_CHANNELS = (16, 32, 64)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> dict:
    return {"conv": Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            "bn": BatchNorm2d(c_out)}


def basic_block(c_in: int, c_out: int, stride: int) -> Sequential:
    inner = Sequential({"conv1": Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                        "bn1": BatchNorm2d(c_out), "relu": ReLU(),
                        "conv2": Conv2d(c_out, c_out, 3, padding=1, bias=False), "bn2": BatchNorm2d(c_out)})
    shortcut = None if stride == 1 and c_in == c_out else Sequential(conv_bn(c_in, c_out, 1, stride))
    return Sequential({"block": Residual(inner, shortcut), "relu": ReLU()})


def build_resnet(shape, n_out, options, blocks_per_stage: int = 3) -> Sequential:
    channels = shape[0] if len(shape) == 3 else 1
    layers = {"stem": Sequential({**conv_bn(channels, STAGE_CHANNELS[0], 3, 1), "relu": ReLU()})}
    c_in = STAGE_CHANNELS[0]
    for s, c_out in enumerate(STAGE_CHANNELS):
        for b in range(blocks_per_stage):
            stride = 2 if s > 0 and b == 0 else 1
            layers[f"stage{s + 1}_{b + 1}"] = basic_block(c_in, c_out, stride)
            c_in = c_out
    layers.update(pool=GlobalAvgPool2d(), flatten=Flatten(), fc=Linear(c_in, n_out, init="xavier"))
    return Sequential(layers)


register("resnet20", ModelSpec(build_resnet, "cross_entropy", "classification",
                               dict(dataset="fashion-mnist", epochs=5, batch_size=128, optimizer="sgd", lr=0.1,
                                    momentum=0.9, weight_decay=1e-4, schedule="cosine", warmup_steps=100),
                               "ResNet-20 (He et al. 2016, CIFAR form: 16/32/64 channels, batch norm, "
                               "projection shortcuts)"))
