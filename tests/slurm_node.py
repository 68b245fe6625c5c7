"""A single-node Slurm on this machine, for the Slurm backend's test (and .ci/run).

    python -m tests.slurm_node start|stop|status

Debian's slurm-wlm and munge packages; munged with its own key and socket, slurmctld and slurmd on
localhost with 2 CPUs, no cgroups (proctrack/linuxproc, task/none), no accounting, everything under
GLORA_SLURM_DIR (default /tmp/glora-slurm). Clients find it through SLURM_CONF=<dir>/slurm.conf.
``start()`` returns None once the node is idle, or a one-line reason why it cannot run here.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("GLORA_SLURM_DIR", "/tmp/glora-slurm"))
CONF = ROOT / "slurm.conf"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def env() -> dict[str, str]:
    """The environment a Slurm client needs to reach this node."""
    return {**os.environ, "SLURM_CONF": str(CONF)}


def config(host: str) -> str:
    """slurm.conf: one node, 2 CPUs, scheduled per CPU, quick scheduling, nothing else."""
    return "\n".join([
        "ClusterName=glora-test", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={ROOT / 'munge.sock'}", "CredType=cred/munge",
        "SlurmctldPort=16817", "SlurmdPort=16818", f"StateSaveLocation={ROOT / 'state'}",
        f"SlurmdSpoolDir={ROOT / 'spool'}", f"SlurmctldPidFile={ROOT / 'slurmctld.pid'}",
        f"SlurmdPidFile={ROOT / 'slurmd.pid'}", f"SlurmctldLogFile={ROOT / 'slurmctld.log'}",
        f"SlurmdLogFile={ROOT / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2", "MpiDefault=none", "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "MinJobAge=30", "KillWait=10",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""])


def running() -> bool:
    """Is this node already up (started earlier, e.g. by .ci/run)?"""
    return CONF.is_file() and shutil.which("sinfo") is not None and idle()


def idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env(), capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")


def _run(cmd: list[str]) -> str | None:
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    return None if out.returncode == 0 else f"{cmd[0]} failed: {(out.stderr or out.stdout).strip()[:200]}"


def start(timeout: float = 30.0) -> str | None:
    """Start munged, slurmctld and slurmd unless already up; None when idle, else the reason."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"no {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    if running():
        return None
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (ROOT / sub).mkdir(parents=True, exist_ok=True)
    key = ROOT / "munge.key"
    if not key.is_file():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
    CONF.write_text(config(host))
    steps = [["munged", "-f", f"--socket={ROOT / 'munge.sock'}", f"--key-file={key}",
              f"--log-file={ROOT / 'munged.log'}", f"--pid-file={ROOT / 'munged.pid'}",
              f"--seed-file={ROOT / 'munged.seed'}"],
             ["slurmctld", "-c", "-f", str(CONF)], ["slurmd", "-f", str(CONF)]]
    for cmd in steps:
        if cmd[0] == "munged" and (ROOT / "munge.sock").exists() and _run(["munge", "-S", str(ROOT / "munge.sock"), "-n"]) is None:
            continue  # already running
        reason = _run(cmd)
        if reason:
            return reason
    deadline = time.time() + timeout
    while time.time() < deadline:
        if idle():
            return None
        time.sleep(0.5)
    return f"the node did not become idle within {timeout:.0f}s (see {ROOT / 'slurmctld.log'})"


def stop() -> None:
    """Stop the daemons started by ``start`` (by their pid files)."""
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = ROOT / f"{name}.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "start":
        why = start()
        print(f"slurm node: {'idle' if why is None else 'not started: ' + why}; SLURM_CONF={CONF}")
        sys.exit(0 if why is None else 1)
    elif command == "stop":
        stop()
    else:
        print("idle" if running() else "not running")
