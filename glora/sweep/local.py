"""The local backend: jobs as subprocesses over slots (GPU slots pinned with CUDA_VISIBLE_DEVICES,
or CPU processes), dependencies respected, a failure stopping only the jobs that need it.

Ctrl-C or SIGTERM: no new job starts, every running job gets SIGINT (the CLIs save their state on
it) and the sweep waits for them; a second signal kills them. Rerunning the sweep resumes.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from glora.errors import OutputError
from glora.sweep.jobs import Job, finished, in_use_by, job_environment
from glora.sweep.status import FAILED_MARK, Board, last_line

STOPPING_STATES = ("failed", "interrupted", "skipped")


@dataclass
class Running:
    job: Job
    proc: subprocess.Popen
    log: IO
    slot: int


def launch(job: Job, env: dict[str, str], prefix: str = "", **popen) -> tuple[subprocess.Popen, IO]:
    """Start a job's CLI in its own process group, its output appended to its log after a header line."""
    header = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {prefix}{shlex.join(job.command())}\n"
    log = None
    try:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(job.log, "ab", buffering=0)  # unbuffered: nothing left to fail again at exit
        log.write(header.encode())
    except OSError as err:  # a full or read-only disk: this job cannot run, the sweep goes on
        if log is not None:
            log.close()
        raise OutputError(f"not started: cannot write its log {job.log}: {err.strerror or err}") from None
    # Its own process group: a Ctrl-C at the terminal reaches the sweep only, which forwards it once.
    proc = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, **popen)
    return proc, log


def append_line(log: Path, line: str) -> None:
    """Add a line to a job's log; a full or read-only disk costs only that line."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


def slots_for(gpus: list[str], jobs_per_gpu: int, jobs: int) -> list[str | None]:
    """One entry per concurrent job: a CUDA_VISIBLE_DEVICES value, or None (no pinning)."""
    return [g for g in gpus for _ in range(jobs_per_gpu)] if gpus else [None] * jobs


class LocalBackend:
    """Run jobs on this machine; ``run`` returns False if the sweep was interrupted."""

    def __init__(self, slots: list[str | None], board: Board, env: dict[str, str] | None = None):
        self.slots, self.board = slots, board
        self.env = job_environment(dict(os.environ if env is None else env))
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        # N processes with all cores' threads each would oversubscribe the CPU many times over.
        self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(slots))))
        self.running: list[Running] = []
        self.signals = 0

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1
        kill = signal.SIGINT if self.signals == 1 else signal.SIGKILL
        if self.signals == 1:
            self.board.note(f"stopping: waiting for {len(self.running)} running job(s) to save their "
                              "state (signal again to kill them)")
        for r in self.running:
            try:
                os.killpg(r.proc.pid, kill)  # its own process group: the CLI and its children
            except ProcessLookupError:
                pass

    def _start(self, job: Job, slot: int) -> None:
        env = dict(self.env)
        gpu = self.slots[slot]
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            proc, log = launch(job, env, f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else "")
        except OutputError as err:
            self.board.finish(job, "failed", str(err))
            return
        self.running.append(Running(job, proc, log, slot))
        self.board.start(job, f"gpu {gpu}" if gpu is not None else "")

    def _reap(self) -> None:
        for r in [r for r in self.running if r.proc.poll() is not None]:
            self.running.remove(r)
            r.log.close()
            rc = r.proc.returncode
            if rc == 0:
                try:
                    ok = finished(r.job)
                except Exception as err:  # noqa: BLE001 - reported as this job's failure
                    ok, rc = None, f"{type(err).__name__}: {err}"
                if ok:
                    self.board.finish(r.job, "done")
                    continue
            reason = last_line(r.job.log) or f"exit {rc}"
            if rc == 0:
                reason = "exited 0 but its outputs are incomplete"
            state = "interrupted" if self.signals else "failed"
            self.board.finish(r.job, state, f"exit {rc}: {reason}" if isinstance(rc, int) else reason)
            if state == "failed":
                append_line(r.job.log, FAILED_MARK + r.job.note)  # for `status`

    def _next(self, waiting: list[Job], jobs: dict[str, Job]) -> None:
        for job in list(waiting):
            deps = [jobs[d] for d in job.deps]
            blocked = next((d for d in deps if d.state in STOPPING_STATES), None)
            if blocked is not None:
                waiting.remove(job)
                self.board.finish(job, "skipped", f"needs {blocked.name} ({blocked.state})")
            elif all(d.state == "done" for d in deps) and len(self.running) < len(self.slots):
                waiting.remove(job)
                holder = in_use_by(job)
                if holder is not None:  # another sweep (or a hand-started run) has it: never twice
                    self.board.finish(job, "failed", f"not started: {job.out} is in use by another run "
                                                     f"(pid {holder})")
                    continue
                used = {r.slot for r in self.running}
                self._start(job, next(i for i in range(len(self.slots)) if i not in used))

    def run(self, jobs: dict[str, Job]) -> bool:
        """Run every waiting job; True when the sweep was not interrupted."""
        waiting = [j for j in jobs.values() if j.state == "waiting"]
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.running or (waiting and not self.signals):
                if not self.signals:
                    self._next(waiting, jobs)
                time.sleep(0.2)
                self._reap()
                self.board.refresh()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        for job in waiting:
            job.note = "not started (the sweep was interrupted)"
        return not self.signals
