"""The lr of a `retrain` row, picked on val200: the lr whose `val` run of the same row scored best.

    python -m glora.sweep.pick LR=VAL_RUN [LR=VAL_RUN ...] -- COMMAND [ARGS ...]

runs ``COMMAND ARGS --lr <picked>`` in place of itself (same process, so the sweep's signals reach
the CLI). A `val` run's score is its results.json ``search_acc1`` (accuracy on val200, which it did
not train on); ties go to the smaller lr. The test accuracy is never looked at.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping

from glora.errors import ConfigError, one_line_errors


def val_score(run: Path) -> float | None:
    """The search-split accuracy of a finished run (its results.json), None if not finished."""
    path = Path(run) / "results.json"
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["search_acc1"])


def chosen_lr(candidates: Mapping[float, Path]) -> float | None:
    """The lr with the best val200 accuracy (the smaller lr on a tie); None until all finished."""
    scores = {lr: val_score(run) for lr, run in candidates.items()}
    if not scores or any(s is None for s in scores.values()):
        return None
    return max(scores, key=lambda lr: (scores[lr], -lr))


def pick_command(candidates: Mapping[float, Path], command: list[str], argv: list[str]) -> list[str]:
    """The command line that picks the lr when it starts, then runs ``command argv --lr LR``."""
    pairs = [f"{lr:g}={run}" for lr, run in candidates.items()]
    return [sys.executable, "-m", "glora.sweep.pick", *pairs, "--", *command, *argv]


def main(argv: list[str]) -> None:
    """Parse ``LR=RUN ... -- COMMAND``, pick, and exec the command with ``--lr``."""
    if "--" not in argv:
        raise ConfigError("usage: pick.py LR=VAL_RUN ... -- SCRIPT [ARGS ...]")
    cut = argv.index("--")
    candidates = {float(lr): Path(run) for lr, _, run in (a.partition("=") for a in argv[:cut])}
    lr = chosen_lr(candidates)
    if lr is None:
        missing = [str(run) for run in candidates.values() if val_score(run) is None]
        raise ConfigError(f"cannot pick an lr: no results.json yet in {', '.join(missing) or 'any run'}")
    command = [*argv[cut + 1:], "--lr", f"{lr:g}"]
    print(f"pick: lr {lr:g} (val200 of {len(candidates)} runs)", flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    with one_line_errors():
        main(sys.argv[1:])
