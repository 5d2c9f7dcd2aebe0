"""mpidl: data-parallel deep learning with NumPy kernels and MPI Allreduce.

    import mpidl
    from mpidl import nn

    comm = mpidl.world()        # MPI starts here: BLAS threads per rank, abort hook, watchdog
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    mpidl.Trainer(net, train=(x, y), val=(xv, yv), loss="cross_entropy", optimizer="adam",
                  lr=1e-3, batch_size=256, epochs=5, out="runs/mine").fit()

Importing mpidl does not start MPI; only :func:`mpidl.world` (or a Trainer) does.
"""

__version__ = "0.2.0"

from mpidl import data, nn, optim, testing  # noqa: E402
from mpidl.errors import ConfigError, DataError, TrainingHalted, UserError  # noqa: E402
from mpidl.inference import load  # noqa: E402
from mpidl.models import Model, register  # noqa: E402
from mpidl.parallel import DistributedOptimizer, Grid, ShardedModel, broadcast_and_verify, world  # noqa: E402
from mpidl.trainer import Trainer  # noqa: E402

__all__ = ["__version__", "world", "nn", "optim", "data", "testing", "Model", "Trainer",
           "DistributedOptimizer", "Grid", "ShardedModel", "broadcast_and_verify", "load", "register",
           "UserError", "ConfigError", "DataError", "TrainingHalted"]
