"""The project's exception types for expected failures.

Every failure a user can cause and fix (a bad flag, a missing file, a checkpoint of another run, a
full disk) raises a subclass of :class:`GLoRAError` whose message is one line naming the file or
value. The command-line entry points print ``error: <message>`` for these and nothing else; any
other exception is a bug and keeps its traceback.

Several subclasses also derive from the built-in type they replaced (``ValueError``,
``RuntimeError``, ``FloatingPointError``), so callers that caught those keep working.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class GLoRAError(Exception):
    """An expected failure; ``str(e)`` is one line naming the culprit."""


class ConfigError(GLoRAError, ValueError):
    """A flag, YAML value or setting outside its valid range, or settings that contradict."""


class DataError(GLoRAError):
    """A problem with the data on disk or a task name."""


class WeightsError(GLoRAError, RuntimeError):
    """Backbone weights are missing or do not fit the model, or the model cannot be built."""


class CheckpointError(GLoRAError, RuntimeError):
    """A checkpoint or search state is missing, unreadable, malformed or of another run."""


class BudgetError(GLoRAError, ValueError):
    """No subnet of the space has a parameter count inside the requested budget."""


class TargetError(GLoRAError, ValueError):
    """The layers chosen for GLoRA (``--targets``) cannot be used as asked."""


class OutputError(GLoRAError):
    """An output folder or file cannot be written, or belongs to another run."""


@contextlib.contextmanager
def one_line_errors(prefix: str = "error: ") -> Iterator[None]:
    """Turn a :class:`GLoRAError` raised in the block into ``SystemExit("error: <message>")``."""
    try:
        yield
    except GLoRAError as err:
        raise SystemExit(prefix + one_line(err)) from None


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (line breaks inside it become spaces)."""
    return " ".join(str(err).split("\n")).strip() or type(err).__name__
