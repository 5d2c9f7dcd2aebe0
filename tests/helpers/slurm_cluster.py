"""A one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd started as child
processes with all state under one temporary folder, a generated slurm.conf, stopped by PID.

It installs nothing: the machine needs Debian's slurm-wlm and munge (CI's .ci/run installs them)
and root (slurmd starts jobs as their user).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CPUS = 8  # declared, not real: SlurmdParameters=config_overrides lets a 2-core machine run 8 tasks


def missing_requirements() -> str | None:
    """Why this machine cannot run the cluster, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their owner)"
    absent = [d for d in (*DAEMONS, "sbatch", "scontrol") if shutil.which(d) is None
              and not os.path.exists(f"/usr/sbin/{d}")]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install -y slurm-wlm munge)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.node = socket.gethostname()
        self.conf = os.path.join(self.root, "slurm.conf")
        self.procs: dict[str, subprocess.Popen] = {}
        # Job ids name MPI's shared-memory segments (via the PMI key space): start at a random
        # id so that a leftover job of an earlier test cluster cannot collide with a new one.
        self.first_job_id = 1000 + int.from_bytes(os.urandom(3), "little")

    # -- life cycle -----------------------------------------------------------------
    def start(self, timeout: float = 60) -> "LocalSlurm":
        for sub in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged refuses group/world-writable parents
        key = os.path.join(self.root, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket")
        self._spawn("munged", [_binary("munged"), "-F", "-f", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.root}/munge/munged.pid",
                               f"--log-file={self.root}/log/munged.log",
                               f"--seed-file={self.root}/munge/munged.seed"])
        self._wait_for(lambda: os.path.exists(self.munge_socket), 10, "munged socket")
        ctl_port, node_port = _free_ports(2)
        self._write_conf(ctl_port, node_port)
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", self.conf])
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-f", self.conf, "-N", self.node])
        self._wait_for(self._node_idle, timeout, f"node {self.node} to become idle")
        return self

    def stop(self) -> None:
        """Cancel what is still queued or running (its ranks would outlive the daemons and
        busy-poll), then stop the daemons by PID."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            subprocess.run([_binary("scancel"), "--full", "--user=root"], env=self.env(), capture_output=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                out = subprocess.run([_binary("squeue"), "-h", "-o", "%i"], capture_output=True, text=True,
                                     env=self.env()).stdout
                if not out.strip():
                    break
                time.sleep(0.3)
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(os.path.join(self.root, "log", f"{name}.stdout"), "wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        log.close()

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                       + self.logs())
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout} s for {what}:\n" + self.logs())

    def _node_idle(self) -> bool:
        out = subprocess.run([_binary("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                             env=self.env()).stdout
        return out.strip() == "idle"

    def _write_conf(self, ctl_port: int, node_port: int) -> None:
        r = self.root
        lines = f"""
        ClusterName=mpidltest
        FirstJobId={self.first_job_id}
        SlurmctldHost={self.node}(127.0.0.1)
        SlurmctldPort={ctl_port}
        SlurmdPort={node_port}
        SlurmUser=root
        SlurmdUser=root
        AuthType=auth/munge
        CredType=cred/munge
        AuthInfo=socket={self.munge_socket}
        StateSaveLocation={r}/state
        SlurmdSpoolDir={r}/spool
        SlurmctldPidFile={r}/state/slurmctld.pid
        SlurmdPidFile={r}/spool/slurmd.pid
        SlurmctldLogFile={r}/log/slurmctld.log
        SlurmdLogFile={r}/log/slurmd.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_CPU
        SchedulerType=sched/builtin
        SlurmdParameters=config_overrides
        MpiDefault=none
        ReturnToService=2
        JobRequeue=1
        MinJobAge=3600
        KillWait=5
        InactiveLimit=0
        AccountingStorageType=accounting_storage/none
        JobCompType=jobcomp/none
        JobAcctGatherType=jobacct_gather/none
        MailProg=/bin/true
        NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
        PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
        """
        with open(self.conf, "w") as f:
            f.write("\n".join(line.strip() for line in lines.strip().splitlines()) + "\n")

    # -- using it -------------------------------------------------------------------
    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["SLURM_CONF"] = self.conf
        for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            if var != "SLURM_CONF":
                del env[var]
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, cmd: list[str], check: bool = True, **env) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(**env), timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        return proc

    def sbatch(self, script: str, options=(), args=(), *, cwd: str, **env) -> int:
        """Submit `script` with sbatch `options` and script `args`; returns the job id."""
        proc = subprocess.run([_binary("sbatch"), "--parsable", *options, script, *args], capture_output=True,
                              text=True, env=self.env(**env), cwd=cwd, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {proc.stderr}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict:
        """scontrol's fields for a job (for an array: its tasks are separate records)."""
        out = self.run([_binary("scontrol"), "-o", "show", "job", str(job_id)]).stdout
        records = []
        for line in out.strip().splitlines():
            records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
        return records[0] if len(records) == 1 else {"tasks": records}

    def wait(self, job_id: int, timeout: float = 120, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                              "NODE_FAIL", "OUT_OF_MEMORY")) -> list[dict]:
        """Wait until every record of the job (all array tasks) is in one of `states`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            records = info.get("tasks", [info])
            if all(r.get("JobState") in states for r in records):
                return records
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {[r.get('JobState') for r in records]} after {timeout} s\n"
                           + self.logs())

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log", "slurmctld.stdout", "slurmd.stdout"):
            path = os.path.join(self.root, "log", name)
            if os.path.exists(path):
                parts.append(f"--- {name}\n" + open(path, errors="replace").read()[-tail:])
        return "\n".join(parts)
