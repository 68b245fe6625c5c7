"""Progress reporting that suits both a terminal and a log file.

    for x in progress(loader, "epoch 3"): ...               # iterate
    with progress(desc="generate", total=n, unit="img") as bar:
        make(n, bar.update)                                  # or count by hand

On a terminal (the stream's ``isatty()``) this is a tqdm bar. Otherwise (a log file, a pipe, a
job scheduler) a carriage-return bar would fill the log with one huge line, so plain lines are
written instead: one at the start, one each time another ~10 % is done, one at the end. With
an unknown total the count lines come at 1, 2, 4, 8, ... items.
"""
from __future__ import annotations

import math
import sys
import time
from typing import IO, Any, Iterable, Iterator

from tqdm import tqdm

STEPS = 10  # off a terminal, a line every 100 / STEPS % of the total (plus first and last)


class PlainProgress:
    """A tqdm look-alike (iterate, ``update``, ``set_postfix``, ``close``, ``with``) that writes
    whole lines: ``desc: 40/100 img (40%) 3.2 s``."""

    def __init__(self, iterable: "Iterable | None" = None, desc: str = "",
                 total: "int | None" = None, unit: str = "it", file: "IO[str] | None" = None,
                 steps: int = STEPS):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.steps = max(1, steps)
        self.file = sys.stderr if file is None else file
        self.n, self.postfix, self.closed = 0, "", False
        self._start = time.perf_counter()
        self._next = self._due_after(0)
        self._write()

    def _due_after(self, count: int) -> float:
        """The count at which the next line is due: the first step boundary above ``count``."""
        if self.total is None:
            return 1 << count.bit_length()  # 0 -> 1, 1 -> 2, 2..3 -> 4, 4..7 -> 8, ...
        dues = (math.ceil(self.total * k / self.steps) for k in range(1, self.steps))
        return next((due for due in dues if due > count), math.inf)  # the last line is close()'s

    def _write(self, suffix: str = "") -> None:
        label = f"{self.desc}: " if self.desc else ""
        counts = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        elapsed = time.perf_counter() - self._start
        print(f"{label}{counts} {self.unit}{percent} {elapsed:.1f} s{self.postfix}{suffix}",
              file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items and write a line if another step is done."""
        self.n += n
        if self.n >= self._next and not self.closed:
            self._next = self._due_after(self.n)
            if self.total is None or self.n < self.total:
                self._write()

    def set_postfix(self, **values: Any) -> None:
        """Values (e.g. ``loss='0.123'``) appended to the following lines."""
        self.postfix = "".join(f" {k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Write the last line once: the count reached, and whether that is all of ``total``."""
        if not self.closed:
            self.closed = True
            self._write(" done" if self.total is None or self.n >= self.total else " stopped")

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: "Iterable | None" = None, desc: str = "", total: "int | None" = None,
             enabled: bool = True, unit: str = "it", file: "IO[str] | None" = None,
             steps: int = STEPS, **tqdm_kwargs: Any) -> "tqdm | PlainProgress":
    """A tqdm bar on a terminal, plain progress lines otherwise, nothing if not ``enabled``.

    ``steps``: off a terminal, lines at every 1/steps of the total (1: only a first and a last
    line, e.g. one pair per training epoch). ``tqdm_kwargs`` (e.g. ``leave=False``) apply to the
    terminal bar only.
    """
    stream = sys.stderr if file is None else file
    if not enabled:
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, **tqdm_kwargs)
    return PlainProgress(iterable, desc, total, unit, stream, steps)
