"""mpidl.allocator in fresh processes: freed memory stays mapped, so a step's arrays stop
faulting their pages in (a child process each, since the setting lasts the process's life)."""

import subprocess
import sys
import textwrap

import pytest
from support import child_env

# A training step's pattern: activations kept until backward, then all freed together. With
# glibc's defaults the freed top of the heap goes back to the kernel and the next step faults
# it in again.
CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from mpidl import allocator
    print(allocator.configure(sys.argv[1]))
    def step():
        kept = [np.ones(1 << 20, np.float32) for _ in range(16)]   # 16 x 4 MiB
        del kept
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")
PAGES_PER_STEP = 16 * (4 << 20) // 4096


def faults_per_step(choice):
    out = subprocess.run([sys.executable, "-c", CHILD, choice], capture_output=True, text=True, check=True,
                         timeout=60, env=child_env()).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_stops_the_page_faults_that_the_default_takes():
    in_effect, kept = faults_per_step("keep")
    assert in_effect == "keep"
    assert kept < 0.01 * PAGES_PER_STEP
    in_effect, default = faults_per_step("system")
    assert in_effect == "system"
    assert default > 0.25 * PAGES_PER_STEP   # the premise: without it the pages fault in every step

