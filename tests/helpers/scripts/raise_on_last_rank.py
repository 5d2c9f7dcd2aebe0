"""One rank raises while the others wait in a collective: the job must end, not hang."""

import numpy as np

from mpidl.parallel.comm import world
from mpidl.parallel.guard import install_abort_on_exception

comm = world()
install_abort_on_exception(comm)
buf = np.ones(4)
if comm.rank == comm.size - 1:
    raise ValueError("deliberate failure for the abort test")
comm.allreduce_sum_(buf)  # the other ranks block here until the abort reaches them
