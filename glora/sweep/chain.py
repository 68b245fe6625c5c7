"""Is a finished job's output still the output of its inputs? The CLIs' own ``--resume auto`` check
compares a job's settings; this compares what it was made from, by content.

- A search or an export (``evolution``) records the sha256 of the checkpoint it read
  (``supernet_sha256`` in ``results.json``); the checkpoint at ``--load_path`` must still hash to
  it. A training checkpoint that was trained again (more epochs, other settings) therefore makes
  its export stale, and a supernet trained again makes its search stale.
- A fixed subnet trained from a search's ``subnet.yaml`` records its layer choices; the file must
  still hold them.

A stale output is :class:`StaleError`, one line naming both sides; it is never counted done.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import vtab
from glora.errors import CheckpointError
from glora.run.checkpoint import load_checkpoint, load_subnet, state_digest
from glora.space import PRESETS


class StaleError(CheckpointError):
    """A finished job whose inputs changed after it ran (one line)."""


def check_inputs(script: str, args: argparse.Namespace) -> None:
    """Raise StaleError if a finished job of ``script`` (supernet | evolution) has changed inputs."""
    if script == "evolution":
        _check_loaded_checkpoint(args)
    elif args.subnet and args.subnet not in PRESETS:
        _check_subnet_file(args)


def _check_loaded_checkpoint(args: argparse.Namespace) -> None:
    results = Path(args.save_path) / "results.json"
    record = json.loads(results.read_text())
    made_from = record.get("supernet_sha256")
    if made_from is None:  # written before results recorded their input: nothing to compare
        return
    ckpt_path = Path(args.load_path) / f"{vtab.resolve_task(args.dataset).name}.pt"
    keep = f"move {Path(args.save_path)} aside to keep it and run this job on the new input"
    if not ckpt_path.is_file():
        raise StaleError(f"{results} was made from {ckpt_path}, which is gone; restore it, or {keep}")
    ckpt = load_checkpoint(ckpt_path, mmap=True)
    now = state_digest(ckpt["state_dict"])
    if now != made_from:
        raise StaleError(f"{results} was made from {ckpt_path} at epoch {record.get('supernet_epochs')} "
                         f"(sha256 {made_from[:12]}…), which now holds epoch {ckpt.get('epoch')} "
                         f"(sha256 {now[:12]}…); {keep}")


def _check_subnet_file(args: argparse.Namespace) -> None:
    ckpt_path = Path(args.save_path) / f"{vtab.resolve_task(args.dataset).name}.pt"
    ckpt = load_checkpoint(ckpt_path, mmap=True)
    keep = f"move {Path(args.save_path)} aside to keep it and train the new subnet"
    if not Path(args.subnet).is_file():
        raise StaleError(f"{ckpt_path} trained the subnet of {args.subnet}, which is gone; restore it, or {keep}")
    if load_subnet(args.subnet, ckpt["layer_names"], ckpt["rank"]) != ckpt.get("subnet"):
        raise StaleError(f"{ckpt_path} trained another subnet than {args.subnet} now holds; {keep}")
