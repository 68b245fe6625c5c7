"""Run logs: every step writes a text log beside its outputs through ``logging`` (the command line,
versions, a line per epoch or generation and the result), and, with ``--log-tensorboard DIR``,
TensorBoard scalars. The terminal gets the same lines as before, without timestamps; progress bars
stay on the terminal only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
from pathlib import Path
from typing import Iterator

LOGGER = logging.getLogger("glora.run")
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False  # the CLIs print what they log; no second copy through the root logger


class _Terminal(logging.Handler):
    """Messages as plain lines on the current standard output (as ``print`` writes them)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "file_only", False):
            print(record.getMessage(), flush=True)


LOGGER.addHandler(_Terminal())


def log(message: str, *, file_only: bool = False) -> None:
    """One line for the terminal and the run's log (``file_only``: for the log alone)."""
    LOGGER.info(message, extra={"file_only": file_only})


@contextlib.contextmanager
def run_log(path: str | os.PathLike, command: str, argv, versions: dict) -> Iterator[Path]:
    """Append this run's lines to ``path`` (created if absent) while the block runs, starting with
    ``command`` and its ``argv`` and the ``versions``."""
    path = Path(path)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    LOGGER.addHandler(handler)
    try:
        log(f"command: {shlex.join([command, *argv])}", file_only=True)
        log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), file_only=True)
        yield path
    finally:
        LOGGER.removeHandler(handler)
        handler.close()


class Scalars:
    """``--log-tensorboard DIR``: scalars for TensorBoard (needs the ``tensorboard`` extra); without
    a folder it records nothing."""

    def __init__(self, folder: str | None):
        self.writer = None
        if folder:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch.utils.tensorboard needs the tensorboard package
                raise SystemExit("error: --log-tensorboard needs tensorboard: pip install tensorboard "
                                 "(or the tensorboard extra, pip install '.[tensorboard]')") from None
            self.writer = SummaryWriter(folder)

    def add(self, step: int, **values: float) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
