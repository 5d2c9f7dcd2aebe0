"""The scripts in examples/ as a user runs them, under mpiexec -n 2, checked for accuracy."""

import re

import pytest

from support import run_mpi


@pytest.mark.slow
@pytest.mark.parametrize("script,least", [("own_mlp.py", 0.95), ("own_layer.py", 0.90), ("own_loop.py", 0.93),
                                          ("own_loop_model_parallel.py", 0.93)])
def test_example_trains_under_two_ranks(script, least, tmp_path):
    proc = run_mpi(2, [f"{__import__('support').REPO}/examples/{script}"], timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.findall(r"validation accuracy ([0-9.]+)", proc.stdout)
    assert len(found) == 1, proc.stdout  # printed once, by rank 0
    assert float(found[0]) >= least, proc.stdout


def test_a_user_error_in_a_script_is_one_line_and_exit_2(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import numpy as np, mpidl\nfrom mpidl import nn\nmpidl.world()\n"
                      "mpidl.Trainer(nn.Linear(4, 2), train=(np.zeros((8, 4)), np.zeros(8, int)), epochs=1,"
                      " batch_sise=4)\n")
    proc = run_mpi(2, [str(script)], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == ["mpidl: error: Trainer: unknown setting 'batch_sise'; did you mean batch_size?"], proc.stderr


def test_world_gives_each_rank_its_share_of_the_cores(tmp_path):
    """A script under mpirun gets what the command line gets: BLAS threads = cores / ranks."""
    script = tmp_path / "threads.py"
    script.write_text("import os, mpidl\nfrom threadpoolctl import threadpool_info\ncomm = mpidl.world()\n"
                      "n = max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas')\n"
                      "print(f'rank {comm.rank} blas {n} cores {len(os.sched_getaffinity(0))} size {comm.size}')\n")
    env = __import__("support").child_env()
    env.pop("OMP_NUM_THREADS", None)  # what a user's shell has: nothing set
    proc = run_mpi(2, [str(script)], timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    # two ranks print to one stream: their lines may run together
    found = re.findall(r"rank (\d) blas (\d+) cores (\d+) size (\d+)", proc.stdout)
    assert sorted(rank for rank, *_ in found) == ["0", "1"], proc.stdout
    for _, blas, cores, size in found:
        assert int(blas) == max(1, int(cores) // int(size)), proc.stdout
