"""What the sweep submitted to Slurm and where those jobs are now.

``RUNS/.slurm_jobs.json`` records, per job name, the Slurm id of its array task and its stderr
file, written at each submission. A later sweep (``--slurm-no-wait`` again, or a waiting one) asks
``squeue`` about those ids: a job still queued or running is not submitted again, and ``status``
shows it with its id.
"""
from __future__ import annotations

import getpass
import json
import subprocess
from pathlib import Path

from glora.io.files import atomic_write
from glora.sweep.jobs import Job
from glora.sweep.plan import PlanError

RECORD = ".slurm_jobs.json"
# squeue's state codes for a job that is not running yet (pending, or requeued and held back).
WAITING_CODES = ("PD", "RQ", "RH", "RD", "RF")


def read_record(runs: Path) -> dict[str, dict]:
    """Job name -> {"id": Slurm id, "stderr": path}, as recorded (empty if none or unreadable)."""
    try:
        data = json.loads((runs / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and "id" in v} if isinstance(data, dict) else {}


def write_record(runs: Path, entries: dict[str, dict]) -> None:
    """Add ``entries`` to the record (atomically; OutputError naming the file if it cannot be written)."""
    atomic_write(runs / RECORD, json.dumps({**read_record(runs), **entries}, indent=1))


def queued() -> dict[str, str] | None:
    """Slurm job id (123_4 for an array task) -> state code (PD, R, ...) of this user's jobs;
    None when squeue fails (a busy controller: ask again at the next poll)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %t"],
                             capture_output=True, text=True)
    except OSError:  # no squeue here
        return None
    if out.returncode != 0:
        return None
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def in_queue(jobs: dict[str, Job], runs: Path) -> dict[str, tuple[str, str]]:
    """Job name -> (Slurm id, state code) for the unfinished jobs whose recorded id is still in
    Slurm's queue; PlanError if there are recorded ids and squeue cannot be asked."""
    record = read_record(runs)
    names = [name for name, job in jobs.items() if job.state != "done" and name in record]
    if not names:
        return {}
    states = queued()
    if states is None:
        raise PlanError(f"squeue failed, so whether the jobs recorded in {runs / RECORD} are still queued "
                        "is unknown; run the sweep again where squeue works")
    return {n: (record[n]["id"], states[record[n]["id"]]) for n in names if record[n]["id"] in states}
