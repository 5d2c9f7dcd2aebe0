"""mpidl: data-parallel deep learning with NumPy kernels and MPI Allreduce.

Importing mpidl does not start MPI; only :func:`mpidl.comm.world` does.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
