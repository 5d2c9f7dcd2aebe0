"""A network lab on one machine: "nodes" made of network namespaces, joined by veth pairs to a
bridge in a switch namespace, every node's link shaped by tc's token bucket filter (tbf) in
both directions; MPICH's hydra starts ranks in them over TCP.

    with Lab(nodes=2, rate_mbit=100) as lab:
        print(lab.bulk_rate(0, 1))                      # achieved rate of a TCP transfer, Mbit/s
        proc = lab.mpiexec(["-m", "mpidl.train", "--max-steps", "20"], ranks_per_node=1)

Each node's namespace has its own hostname (through `unshare --uts`), so MPI sees separate
nodes: ranks on one node share memory, ranks on two nodes talk TCP across the shaped link.
Needs root (or CAP_NET_ADMIN); this kernel has tbf and htb but no netem, so no added delay:
the lab shapes bandwidth only, and latency is what the veth, the bridge and TCP give.
Everything is named ``mpidl-lab<pid>-...`` and torn down by name on exit, also after a failure;
:func:`remove_stale` deletes what a killed run left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PREFIX = "mpidl-lab"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAUNCH_SCRIPT = """#!/bin/sh
# Stands in for ssh: hydra calls it as  SCRIPT [ssh options] HOST COMMAND
while [ "${1#-}" != "$1" ]; do shift; done
host="$1"; shift
case "$host" in
%s
    *) echo "netlab: no namespace for host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname \\"$ns\\"; exec $*"
"""


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _tc(ns, *args, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when namespaces and tbf can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    name = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here ({made.stderr.strip()})"
    try:
        _ip("-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        shaped = _tc(name, "qdisc", "add", "dev", "pa", "root", "tbf", "rate", "100mbit", "burst", "64kb",
                     "latency", "50ms", check=False)
        if shaped.returncode != 0:
            return f"tc cannot add a tbf qdisc ({shaped.stderr.strip()})"
    finally:
        _ip("netns", "delete", name, check=False)
    return None


def remove_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone."""
    removed = []
    out = _ip("-j", "netns", "list", check=False).stdout or "[]"
    for entry in json.loads(out):
        name = entry["name"]
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


def tbf_burst_bytes(rate_mbit: float) -> int:
    """The bucket: what the rate sends in 2 ms, at least 64 KiB (a 10 Gbit/s bucket must hold
    a few TSO segments per kernel tick, or tbf cannot reach its rate)."""
    return max(64 * 1024, int(rate_mbit * 1e6 / 8 * 0.002))


class Lab:
    def __init__(self, nodes: int = 2, rate_mbit: float | None = None, tag: str | None = None,
                 queue_ms: float = 50.0):
        self.n = nodes
        self.tag = tag or str(os.getpid())
        self.switch = f"{PREFIX}{self.tag}-sw"
        self.names = [f"{PREFIX}{self.tag}-n{i}" for i in range(nodes)]
        self.addrs = [f"10.214.0.{i + 1}" for i in range(nodes)]
        self.rate_mbit, self.queue_ms = rate_mbit, queue_ms
        self.launcher = None

    # -- building and tearing down -------------------------------------------------
    def __enter__(self) -> "Lab":
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addrs)):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", self.switch)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{i}", "up")
        if self.rate_mbit:
            self.shape(self.rate_mbit)
        self._write_launcher()

    def close(self) -> None:
        for ns in [*self.names, self.switch]:
            _ip("netns", "delete", ns, check=False)
        if self.launcher and os.path.exists(self.launcher):
            os.unlink(self.launcher)

    def _write_launcher(self) -> None:
        cases = "\n".join(f'    {addr}|{ns}) ns="{ns}" ;;' for addr, ns in zip(self.addrs, self.names))
        self.launcher = f"/tmp/{PREFIX}{self.tag}-launch.sh"
        with open(self.launcher, "w") as f:
            f.write(LAUNCH_SCRIPT % cases)
        os.chmod(self.launcher, 0o755)

    # -- the links -------------------------------------------------------------------
    def shape(self, rate_mbit: float | None) -> None:
        """Every node's link to `rate_mbit` in both directions (None: unshaped)."""
        self.rate_mbit = rate_mbit
        for i, ns in enumerate(self.names):
            for where, dev in ((ns, "eth0"), (self.switch, f"p{i}")):
                _tc(where, "qdisc", "del", "dev", dev, "root", check=False)
                if rate_mbit:
                    _tc(where, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                        "burst", str(tbf_burst_bytes(rate_mbit)), "latency", f"{self.queue_ms}ms")

    def set_link(self, node: int, up: bool) -> None:
        """Take a node's link down (its veth end on the switch) or bring it back."""
        _ip("-n", self.switch, "link", "set", f"p{node}", "up" if up else "down")

    def link_stats(self, node: int) -> dict:
        """Bytes and packets through the node's eth0, and the shaper's drops and overlimits."""
        link = json.loads(_ip("-n", self.names[node], "-j", "-s", "link", "show", "dev", "eth0").stdout)[0]
        qdisc = json.loads(_tc(self.names[node], "-j", "-s", "qdisc", "show", "dev", "eth0").stdout or "[{}]")[0]
        return {"tx_bytes": link["stats64"]["tx"]["bytes"], "rx_bytes": link["stats64"]["rx"]["bytes"],
                "drops": qdisc.get("drops", 0), "overlimits": qdisc.get("overlimits", 0)}

    # -- running things in it ------------------------------------------------------
    def run_in(self, node: int, argv, **kw):
        return subprocess.run(["ip", "netns", "exec", self.names[node], *argv], **kw)

    def bulk_rate(self, src: int = 0, dst: int = 1, nbytes: int = 16 * 2 ** 20) -> float:
        """Achieved rate of one TCP transfer of `nbytes` from node src to node dst, Mbit/s."""
        port = 5201
        receiver = subprocess.Popen(["ip", "netns", "exec", self.names[dst], sys.executable, "-c", _RECEIVER,
                                     str(port)], stdout=subprocess.PIPE, text=True)
        try:
            sender = self.run_in(src, [sys.executable, "-c", _SENDER, self.addrs[dst], str(port), str(nbytes)],
                                 capture_output=True, text=True, timeout=300)
            if sender.returncode != 0:
                raise RuntimeError(f"netlab: bulk transfer failed: {sender.stderr[-1000:]}")
            seconds = float(receiver.communicate(timeout=300)[0].split()[0])
        finally:
            receiver.kill()
        return nbytes * 8 / seconds / 1e6

    def _command(self, args, ranks_per_node, nodes, env):
        nodes = nodes or self.n
        run_env = {**os.environ, "UCX_TLS": "tcp,self", "FI_PROVIDER": "tcp",
                   "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
        cmd = ["ip", "netns", "exec", self.names[0], mpiexec_binary(), "-launcher", "ssh",
               "-launcher-exec", self.launcher, "-iface", "eth0", "-hosts", ",".join(self.addrs[:nodes]),
               "-n", str(nodes * ranks_per_node), "-ppn", str(ranks_per_node), sys.executable, *args]
        return cmd, run_env

    def mpiexec(self, args, ranks_per_node: int = 1, nodes: int | None = None, env: dict | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
        """`python ARGS` on `nodes` nodes (all by default) with ranks_per_node ranks each, started
        from node 0 by hydra, TCP between nodes (UCX's tcp transport, or libfabric's tcp)."""
        cmd, run_env = self._command(args, ranks_per_node, nodes, env)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env)

    def popen(self, args, ranks_per_node: int = 1, nodes: int | None = None, env: dict | None = None):
        """mpiexec in the background (its output in files); end it with :meth:`finish`."""
        cmd, run_env = self._command(args, ranks_per_node, nodes, env)
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=run_env, start_new_session=True)
        proc.files = (out, err)
        return proc

    @staticmethod
    def finish(proc, timeout: float = 0.0):
        """(exit status, stdout, stderr) of a popen'd job, killed (its whole group) if it has not
        ended within `timeout` seconds."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            code = proc.wait()
        texts = []
        for f in proc.files:
            f.seek(0)
            texts.append(f.read())
            f.close()
        return code, *texts


def mpiexec_binary() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
c, _ = s.accept(); n = 0; buf = bytearray(1 << 20); t0 = None
while True:
    k = c.recv_into(buf)
    if t0 is None: t0 = time.perf_counter()
    if not k: break
    n += k
print(time.perf_counter() - t0, n, flush=True)
"""

_SENDER = """
import socket, sys, time
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); break
    except OSError:
        time.sleep(0.05)
block = b"\\0" * (1 << 20); left = int(sys.argv[3])
while left > 0:
    left -= c.send(block[:min(left, len(block))])
c.shutdown(socket.SHUT_WR); c.recv(1)
"""
