"""Layers and containers: ``from mpidl import nn``; ``nn.Linear(784, 256)``.

Grouped by kind: base (Module, Sequential, Residual, reshaping), basic (dense, embedding,
activations, dropout), conv (convolution, pooling), norm (batch and layer norm), sequence
(recurrent, attention, positions, Transformer block). See mpidl/nn/base.py for the protocol
a layer of your own follows.
"""

from mpidl.nn.base import Flatten, ImageRows, Layer, MeanOverTime, Module, Residual, Sequential
from mpidl.nn.basic import GELU, Dropout, Embedding, Linear, ReLU, Sigmoid, Softmax, Tanh
from mpidl.nn.conv import AvgPool2d, Conv2d, Conv2dPoolReLU, GlobalAvgPool2d, MaxPool2d
from mpidl.nn.norm import BatchNorm1d, BatchNorm2d, LayerNorm, SyncBatchNorm1d, SyncBatchNorm2d
from mpidl.nn.sequence import (LearnedPositions, MultiHeadSelfAttention, Recurrent, SinusoidalPositions,
                               TransformerBlock)
from mpidl.params import Param

__all__ = ["Module", "Layer", "Param", "Sequential", "Residual", "Flatten", "ImageRows", "MeanOverTime",
           "Linear", "Embedding", "ReLU", "Sigmoid", "Tanh", "Softmax", "GELU", "Dropout",
           "Conv2d", "Conv2dPoolReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
           "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm1d", "SyncBatchNorm2d", "LayerNorm",
           "Recurrent", "MultiHeadSelfAttention", "SinusoidalPositions", "LearnedPositions",
           "TransformerBlock"]
