"""What a sweep shows while it runs: a compact table refreshed in place on a terminal, plain lines
otherwise (a log file, CI), and a summary that names each failed job's log."""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from glora.sweep.jobs import KINDS, STATES, Job

COLUMNS = ("done", "running", "failed", "waiting", "skipped", "interrupted")


def last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log (progress bars' carriage returns removed)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:limit] if lines else ""


def elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Board:
    """Job states as they change: lines, plus a live table when ``stream`` is a terminal."""

    def __init__(self, jobs: dict[str, Job], stream: TextIO = sys.stdout, live: bool | None = None):
        self.jobs, self.stream = jobs, stream
        self.live = stream.isatty() if live is None else live
        self.started: dict[str, float] = {}
        self.where: dict[str, str] = {}
        self._drawn, self._last = 0, 0.0

    def note(self, text: str) -> None:
        """A line above the live table (or just a line)."""
        self._write(text)

    def _write(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self.refresh(force=True)

    def start(self, job: Job, where: str = "") -> None:
        job.state = "running"
        self.started[job.name], self.where[job.name] = time.time(), where
        self._write(f"start   {job.name}{f' [{where}]' if where else ''}  (log {job.log})")

    def finish(self, job: Job, state: str, note: str = "") -> None:
        """Record a job's end (done, failed, interrupted, skipped) with its one-line reason."""
        job.state, job.note = state, note
        took = f" in {elapsed(time.time() - self.started[job.name])}" if job.name in self.started else ""
        label = {"done": "done   ", "failed": "FAILED ", "interrupted": "stopped", "skipped": "skip   "}[state]
        tail = f"{took}" if state == "done" else f": {note}"
        self._write(f"{label} {job.name}{tail}")

    def table(self) -> list[str]:
        """Counts per stage and state, then the running jobs."""
        counts = Counter((j.kind, j.state) for j in self.jobs.values())
        rows = [f"{'stage':<9}" + "".join(f"{c:>12}" for c in COLUMNS)]
        for kind in KINDS:
            if any(j.kind == kind for j in self.jobs.values()):
                rows.append(f"{kind:<9}" + "".join(f"{counts[(kind, c)]:>12}" for c in COLUMNS))
        now = time.time()
        for name, start in self.started.items():
            if self.jobs[name].state == "running":
                where = f" [{self.where[name]}]" if self.where[name] else ""
                rows.append(f"  running {name}{where} {elapsed(now - start)}")
        return rows

    def refresh(self, force: bool = False) -> None:
        """Redraw the live table (at most once a second unless forced)."""
        if not self.live or (not force and time.time() - self._last < 1.0):
            return
        self._clear()
        rows = self.table()
        self.stream.write("\n".join(rows) + "\n")
        self.stream.flush()
        self._drawn, self._last = len(rows), time.time()

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the table's first line, clear below
            self._drawn = 0

    def close(self) -> None:
        self._clear()
        self.stream.flush()


def summary(jobs: dict[str, Job]) -> list[str]:
    """Totals per state, then one line per job that did not finish, naming its log."""
    counts = Counter(j.state for j in jobs.values())
    already = sum(j.state == "done" and j.note.startswith("already finished") for j in jobs.values())
    parts = [f"{counts[s]} {s}" + (f" ({already} already finished)" if s == "done" and already else "")
             for s in STATES if counts[s]]
    lines = [f"sweep: {len(jobs)} jobs: " + ", ".join(parts)]
    for job in jobs.values():
        if job.state in ("failed", "interrupted", "skipped"):
            log = f"; log {job.log}" if job.log.is_file() else ""
            lines.append(f"  {job.state.upper() if job.state == 'failed' else job.state} {job.name}: {job.note}{log}")
    return lines
