"""A model factory for the command line and the job scripts:

    mpirun -n 2 python -m mpidl.train --model examples/my_models.py:build --dataset digits --epochs 10

A factory takes the sample shape, the class count and the options (--hidden) and returns a module.
"""

import numpy as np

from mpidl import nn


def build(sample_shape, num_classes, options):
    width = options.get("hidden", (96,))[0]
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(sample_shape)), width), nn.Tanh(),
                         nn.Linear(width, num_classes, init="xavier"))
