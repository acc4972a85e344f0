"""A throwaway one-node SLURM cluster on this machine, for the cluster tests and for trying by hand.

Debian's SLURM 22.05 (``slurmctld``, ``slurmd``, ``slurm-client``) and ``munge``, run as root, with
everything they write in one folder of their own: their own munge key and socket, ports nobody else
uses, state, spool, logs and pid files. Nothing system-wide is configured or left running, so
several clusters (one per pytest-xdist worker) can run side by side. Clients find the cluster
through ``SLURM_CONF`` (see :meth:`LocalSlurm.env`).

By hand::

    python tests/slurm_cluster.py start /tmp/slurm   # prints the export line for sbatch, srun, squeue
    export SLURM_CONF=/tmp/slurm/slurm.conf
    sbatch --wrap hostname
    python tests/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo")
PARTITION = "debug"


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the local cluster (not root, no apt, packages missing); the reason says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    """Installs Debian's SLURM and munge packages when missing (root with apt-get only), as the
    Makefile installs the dataset package."""
    if all(shutil.which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("the local SLURM cluster needs root (its daemons run as root)")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *PACKAGES]
    with open(Path(tempfile.gettempdir()) / "fairnas-slurm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time (pytest-xdist workers each start a cluster)
        if all(shutil.which(d) for d in DAEMONS):
            return
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-500:]}")
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        raise ClusterUnavailable(f"after installing {' '.join(PACKAGES)}, still missing: {', '.join(missing)}")


class LocalSlurm:
    """One node (this machine, ``cpus`` CPUs), one partition ``debug``; daemons owned by this object.

    Args:
        root: Folder for the configuration, key, sockets, state and logs (created).
        cpus: CPUs the node declares.
    """

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]

    # ----------------------------------------------------------------- configuration
    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        ctld_port, d_port = free_port(), free_port()
        self.conf.write_text(
            f"""# a throwaway one-node cluster (tests/slurm_cluster.py)
ClusterName=fairnas-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r / "munge" / "munge.socket"},cred_expire=10
CredType=cred/munge
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        )

    def env(self) -> dict[str, str]:
        """The environment variables that point SLURM's commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    # ----------------------------------------------------------------- start and stop
    def start(self, timeout: float = 60.0) -> LocalSlurm:
        """Starts munged, slurmctld and slurmd; returns once ``sinfo`` shows the node idle."""
        ensure_installed()
        if os.geteuid() != 0:
            raise ClusterUnavailable("the local SLURM cluster needs root (its daemons run as root)")
        self.stop()
        self._write_config()
        r, env = self.root, {**os.environ, **self.env()}
        m = r / "munge"
        self._run(["munged", "--force", f"--key-file={m / 'munge.key'}", f"--socket={m / 'munge.socket'}",
                   f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                   f"--seed-file={m / 'munged.seed'}"], env)  # fmt: skip
        self._run(["slurmctld", "-c", "-i", "-f", str(self.conf)], env)
        self._run(["slurmd", "-c", "-f", str(self.conf)], env)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True)
            state = out.stdout.strip()
            if out.returncode == 0 and state == "idle":
                return self
            time.sleep(0.5)
        logs = "\n".join(self._tail(p) for p in (r / "log" / "slurmctld.log", r / "log" / "slurmd.log"))
        self.stop()
        raise ClusterUnavailable(
            f"the local SLURM node did not become idle in {timeout:.0f} s (state {state!r})\n{logs}"
        )

    def _run(self, command: list[str], env: dict[str, str]) -> None:
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            self.stop()
            raise ClusterUnavailable(f"{' '.join(command[:2])} failed ({done.returncode}): {done.stderr.strip()}")

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def stop(self, timeout: float = 20.0) -> None:
        """Cancels every job, then stops the daemons this cluster started (by their pid files)."""
        if self.conf.is_file() and (self.root / "slurmctld.pid").is_file():
            env = {**os.environ, **self.env()}
            subprocess.run(["scancel", "--full", "--quiet", "--user=root"], env=env, capture_output=True, timeout=30)
        pids = [self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"]
        for pid_file in pids:
            pid = _read_pid(pid_file)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid_file.unlink(missing_ok=True)
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python tests/slurm_cluster.py start|stop <folder>")
    cluster = LocalSlurm(Path(sys.argv[2]))
    if sys.argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
