"""Collectives of mpidl.parallel.comm; expected values follow from rank and size, so they hold at any size."""

import numpy as np
import pytest

from mpidl.parallel.comm import MismatchError, world


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_allreduce_mean_of_rank_is_mid_rank(dtype):
    comm = world()
    buf = np.full(1000, comm.rank, dtype=dtype)
    comm.allreduce_mean_(buf)
    assert buf.dtype == dtype
    np.testing.assert_array_equal(buf, np.full(1000, (comm.size - 1) / 2, dtype=dtype))


@pytest.mark.mpi
def test_allreduce_sum_and_min_max():
    comm = world()
    buf = np.array([1.0, comm.rank], dtype=np.float64)
    comm.allreduce_sum_(buf)
    np.testing.assert_array_equal(buf, [comm.size, comm.size * (comm.size - 1) / 2])
    lo, hi = comm.allreduce_min_max(np.array([float(comm.rank)]))
    assert lo[0] == 0 and hi[0] == comm.size - 1


@pytest.mark.mpi
def test_bcast_gives_everyone_rank0s_array():
    comm = world()
    buf = np.arange(10, dtype=np.float32) + 100 * comm.rank
    comm.bcast_(buf, root=0)
    np.testing.assert_array_equal(buf, np.arange(10, dtype=np.float32))


@pytest.mark.mpi
def test_check_same_passes_when_equal_and_names_ranks_when_not():
    comm = world()
    comm.check_same("same thing", b"\x01" * 32)
    if comm.size == 1:
        return
    with pytest.raises(MismatchError, match=r"thing differs between ranks: rank\(s\) \[1\]"):
        comm.check_same("thing", b"\x02" * 32 if comm.rank == 1 else b"\x01" * 32)


@pytest.mark.mpi
def test_first_failure_is_lowest_failing_rank():
    comm = world()
    assert comm.first_failure(False) is None
    last = comm.size - 1
    assert comm.first_failure(comm.rank == last) == last
    assert comm.first_failure(True) == 0
