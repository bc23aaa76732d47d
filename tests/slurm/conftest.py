"""A throw-away single-node SLURM cluster for the ``slurm`` tests (``make test-slurm``).

munged, slurmctld and slurmd run in the foreground as children of the test session, with their key,
sockets, state, spool, logs and pid files in one temporary folder, talking over 127.0.0.1 on free ports.
Client commands (sbatch, squeue, scancel) find the cluster through ``SLURM_CONF``. Teardown cancels the
cluster's jobs, stops the daemons it started (by pid) and any job process they left, and removes the
folder, also when a test fails. Without root or without the distribution's ``slurm-wlm`` and ``munge``
packages (installed on first use with apt-get) the tests skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SBIN = os.pathsep.join(["/usr/sbin", "/usr/bin", "/sbin", os.environ.get("PATH", "")])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"
NODE = "avlm-node"


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN)


def _missing() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get when a daemon or client is missing, or skip."""
    if not _missing():
        return
    if os.geteuid() != 0:
        pytest.skip(f"SLURM is not installed ({', '.join(_missing())} missing) and installing needs root")
    apt = _which("apt-get")
    if apt is None:
        pytest.skip(f"SLURM is not installed ({', '.join(_missing())} missing) and apt-get is absent")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=environment, capture_output=True, text=True)
    if result.returncode != 0:  # a fresh machine may not have package lists yet
        subprocess.run([apt, "update", "-qq"], env=environment, capture_output=True, text=True)
        result = subprocess.run(install, env=environment, capture_output=True, text=True)
    if result.returncode != 0 or _missing():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"could not install {' '.join(PACKAGES)} with apt-get: {tail[0]}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 2048


@dataclass
class LocalSlurm:
    """One node, one partition, state under ``root``; see the module docstring."""

    root: Path
    cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def partition(self) -> str:
        return PARTITION

    @property
    def memory_mb(self) -> int:
        # Half the machine: the node must never promise more than slurmd finds.
        return max(1024, _memory_mb() // 2)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment client commands (and the jobs they submit) need to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SBIN, **extra}

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [_which(args[0]) or args[0], *args[1:]], env=self.env(), capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _write_config(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for name in ("state", "spool"):
            (self.root / name).mkdir(mode=0o700)
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=avlm-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            # Listen on the configured addresses (127.0.0.1), not on every interface.
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge / 'munge.socket'}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'slurmd.log'}",
            # No cgroups (containers rarely delegate them) and no accounting database.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "KillWait=3",
            "MinJobAge=600",
            "MailProg=/bin/true",
            "GresTypes=gpu",  # GPUs are a known resource, of which this node has none
            f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.stdout", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [_which(name), *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        (self.root / f"{name}.test.pid").write_text(f"{process.pid}\n")

    def start(self) -> None:
        self._write_config()
        munge = self.root / "munge"
        self._start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={munge / 'munge.socket'}",
            f"--key-file={munge / 'munge.key'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
            "--origin=127.0.0.1",
        )
        self._wait(lambda: (munge / "munge.socket").exists(), "munged", 15)
        self._start("slurmctld", "-D", "-f", str(self.conf))
        self._wait(lambda: self.command("sinfo", check=False).returncode == 0, "slurmctld", 30)
        self._start("slurmd", "-D", "-f", str(self.conf), "-N", NODE)
        self._wait(self._node_idle, "slurmd", 60)

    def _node_idle(self) -> bool:
        state = self.command("sinfo", "-h", "-n", NODE, "-o", "%t", check=False).stdout.strip()
        return state == "idle"

    def _wait(self, ready, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                break
            if ready():
                return
            time.sleep(0.3)
        log = self.root / f"{name}.log"
        if not log.exists():
            log = self.root / "munge" / f"{name}.log"
        output = (self.root / f"{name}.stdout").read_text()
        details = (log.read_text() if log.exists() else "") + output
        raise RuntimeError(f"{name} did not start within {timeout:.0f} s:\n{details[-3000:]}")

    def jobs(self) -> list[str]:
        """Job ids (array tasks as ``<job>_<task>``) the cluster still knows as pending or running."""
        result = self.command("squeue", "-h", "-o", "%i %t", check=False)
        return [line.split()[0] for line in result.stdout.splitlines() if line.split()[1:] != ["CG"]]

    def wait_idle(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.command("squeue", "-h", check=False).stdout.strip():
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started, kill what their jobs left behind."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.command("scancel", f"--partition={PARTITION}", check=False)
            self.wait_idle(30)
        for name in ("slurmd", "slurmctld"):
            self._terminate(name)
        # Job steps (slurmstepd and its children) outlive slurmd; they carry this cluster's SLURM_CONF.
        for pid in _processes_with_environment(f"SLURM_CONF={self.conf}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._terminate("munged")

    def _terminate(self, name: str) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _processes_with_environment(marker: str) -> list[int]:
    """Pids of processes (other than this one) whose environment holds ``marker``."""
    found = []
    needle = marker.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node cluster for the session; stopped and removed afterwards."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="the slurm extra is not installed: pip install -e '.[slurm]' (make test-slurm does it)",
    )
    ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="avlm-slurm-"))
    cluster = LocalSlurm(root)
    try:
        try:
            cluster.start()
        except RuntimeError as error:
            pytest.skip(f"could not start a local SLURM: {error}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
