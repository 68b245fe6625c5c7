"""What a sweep shows while it runs: a compact table refreshed in place on a terminal, plain lines
otherwise (a log file, CI), and a summary that names each failed job's log."""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from glora.sweep.jobs import KINDS, STATES, Job, in_use_by
from glora.sweep.queue import WAITING_CODES, in_queue

COLUMNS = ("done", "running", "queued", "failed", "waiting", "skipped", "interrupted")
# The line the sweep appends to a job's log when the job failed (`status` reads it back).
FAILED_MARK = "sweep: failed: "


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
        self.silenced: OSError | None = None  # set when the stream cannot be written (a full disk)

    def _emit(self, text: str, flush: bool = False) -> None:
        """Write to the stream; one that cannot take it silences the board, not the sweep."""
        if self.silenced is not None:
            return
        try:
            self.stream.write(text)
            if flush:
                self.stream.flush()
        except OSError as err:
            self.silenced = err

    def note(self, text: str) -> None:
        """A line above the live table (or just a line)."""
        self._write(text)

    def _write(self, text: str) -> None:
        self._clear()
        self._emit(text + "\n", flush=not self.live)
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
        self._emit("\n".join(rows) + "\n", flush=True)
        self._drawn, self._last = len(rows), time.time()

    def _clear(self) -> None:
        if self.live and self._drawn:
            self._emit(f"\x1b[{self._drawn}F\x1b[J")  # up to the table's first line, clear below
            self._drawn = 0

    def close(self) -> None:
        self._clear()
        self._emit("", flush=True)


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


def current_states(jobs: dict[str, Job], runs: Path) -> list[tuple[Job, str, str]]:
    """(job, state, detail) per job, as ``status`` shows it: done; running (Slurm id or pid);
    queued (Slurm id); failed (why: its settings, stale inputs, or its log's last line); todo."""
    live = in_queue(jobs, runs)
    rows = []
    for name, job in jobs.items():
        line = last_line(job.log)
        if job.state == "done":
            rows.append((job, "done", ""))
        elif name in live:
            slurm_id, code = live[name]
            rows.append((job, "queued" if code in WAITING_CODES else "running", f"slurm {slurm_id}"))
        elif (holder := in_use_by(job)) is not None:
            rows.append((job, "running", f"pid {holder}"))
        elif job.state == "failed":
            rows.append((job, "failed", job.note))
        elif line.startswith(FAILED_MARK):
            rows.append((job, "failed", line.removeprefix(FAILED_MARK)))
        else:
            rows.append((job, "todo", ""))
    return rows


def status_lines(jobs: dict[str, Job], runs: Path) -> list[str]:
    """One line per job (state, name, detail), then the totals."""
    rows = current_states(jobs, runs)
    width = max((len(job.name) for job, _, _ in rows), default=0)
    lines = [f"{state:<8} {job.name:<{width}}  {detail}".rstrip() for job, state, detail in rows]
    counts = Counter(state for _, state, _ in rows)
    totals = ", ".join(f"{counts[s]} {s}" for s in ("done", "running", "queued", "failed", "todo") if counts[s])
    return lines + [f"status: {len(rows)} jobs under {runs}: {totals}"]
