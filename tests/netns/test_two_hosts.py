"""Two hosts made of two network namespaces joined by a veth pair: a 2-rank training with one rank
on each, talking TCP over the veth, must end with the weights of the same run on one host.

How it maps to a real cluster: MPICH's hydra starts the remote rank through its ssh launcher;
here `-launcher-exec` points at a small script that, instead of ssh-ing to HOST, runs the
command in HOST's namespace (with its own hostname, so MPICH sees two nodes, as it would).
On real nodes the same line is `mpiexec -hosts node1,node2 -n 2 -ppn 1 python -m mpidl.train ...`
(or srun --mpi=pmi2 under SLURM); `-iface` picks the network when a node has several.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from support import child_env, mpiexec, run_train

pytestmark = pytest.mark.netns
TRAIN = ["-m", "mpidl.train", "--model", "mlp", "--max-steps", "30", "--batch-size", "64", "--seed", "4",
         "--progress", "none", "--expect-ranks", "2"]

LAUNCH_SCRIPT = """#!/bin/sh
# Stands in for ssh: hydra calls it as  SCRIPT [ssh options] HOST COMMAND
while [ "${1#-}" != "$1" ]; do shift; done
host="$1"; shift
echo "$host" >> "$0.log"
case "$host" in
%s
    *) echo "no namespace for host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname \\"$ns\\"; exec $*"
"""


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _veth_bytes(ns: str, dev: str) -> int:
    stats = json.loads(_ip("-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout)[0]["stats64"]
    return stats["rx"]["bytes"] + stats["tx"]["bytes"]


@pytest.fixture
def two_hosts():
    tag = f"{os.getpid() % 100000}"
    names, devs = (f"mpidl-a{tag}", f"mpidl-b{tag}"), (f"mva{tag}", f"mvb{tag}")
    addrs = ("10.213.0.1", "10.213.0.2")
    probe = _ip("netns", "add", names[0], check=False) if os.geteuid() == 0 else None
    if probe is None or probe.returncode != 0:
        why = "needs root" if probe is None else f"`ip netns add` is not permitted here ({probe.stderr.strip()})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the two-host test, but it {why}")
        pytest.skip(f"two network namespaces as hosts: {why}")
    try:
        _ip("netns", "add", names[1])
        _ip("link", "add", devs[0], "type", "veth", "peer", "name", devs[1])
        for ns, dev, addr in zip(names, devs, addrs):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names, devs, addrs
    finally:
        for ns in names:  # deleting a namespace deletes its end of the veth, and so the pair
            _ip("netns", "delete", ns, check=False)


def test_two_ranks_on_two_hosts_match_one_host(two_hosts, tmp_path):
    names, devs, addrs = two_hosts
    launcher = tmp_path / "ns-launch.sh"
    cases = "\n".join(f'    {addr}) ns="{ns}" ;;' for addr, ns in zip(addrs, names))
    launcher.write_text(LAUNCH_SCRIPT % cases)
    launcher.chmod(0o755)

    before = _veth_bytes(names[0], devs[0])
    # mpiexec runs on "host a"; tcp only and no shared memory, as between real nodes.
    env = child_env(UCX_TLS="tcp,self", MPIR_CVAR_NOLOCAL="1", FI_PROVIDER="tcp",
                    PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    cmd = ["ip", "netns", "exec", names[0], mpiexec(), "-launcher", "ssh", "-launcher-exec", str(launcher),
           "-iface", devs[0], "-hosts", ",".join(addrs), "-n", "2", "-ppn", "1",
           sys.executable, *TRAIN, "--out", str(tmp_path / "two-hosts")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    moved = _veth_bytes(names[0], devs[0]) - before

    assert (tmp_path / "ns-launch.sh.log").read_text().split() == [addrs[1]]  # rank 1 went to host b
    one_host = run_train(2, [*TRAIN[2:], "--out", str(tmp_path / "one-host")], timeout=120)
    assert one_host.returncode == 0, one_host.stderr

    def weights(name):
        with np.load(tmp_path / name / "weights.npz", allow_pickle=False) as z:
            return z["params"]

    two, one = weights("two-hosts"), weights("one-host")
    # Every step's gradient Allreduce crossed the veth: at least the whole buffer once per step.
    assert moved >= 30 * two.nbytes, f"only {moved} bytes on the veth: MPI did not use the network"
    assert np.array_equal(two, one)  # two ranks sum a+b in either order: bitwise the same
