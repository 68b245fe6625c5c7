"""Typed settings: each step's argparse namespace turned into one frozen record, once, at the boundary.

argparse owns the flags, their types and defaults (``glora.run.config``); ``from_args`` copies
exactly the parser's destinations into a :class:`TrainSettings` (``supernet``) or a
:class:`SearchSettings` (``evolution``), with ``given``: the destinations set on the command line or
in the ``--config`` YAML, the one rule for "given explicitly". Past the boundary nothing reads or
rewrites a namespace: a value the run resolves later (``--resume auto``, the settings a search
adopts from its checkpoint) makes a new record with :func:`dataclasses.replace`.

``record()`` is the plain-typed form written to ``args.yaml``, checkpoints and ``results.json``; it
is a valid ``--config`` for the same step.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from glora.run.config import given_keys, parse_args

NOT_FLAGS = ("given", "argv")  # fields that say where the settings came from

@dataclass(frozen=True)
class Common:
    """The flags both steps share (see ``glora.run.config.add_common_args``)."""

    dataset: str
    data_path: str
    model: str
    model_kwargs: dict
    pretrained: str
    input_size: int
    rank: int
    targets: str | None
    protocol: str
    batch_size: int
    eval_batch_size: int
    drop_path: float
    device: str
    precision: str
    compile: str
    subnet: str | None
    resume: bool | str
    overwrite: bool
    progress: bool
    save_path: str
    seed: int
    log_tensorboard: str | None
    print_config: bool
    given: frozenset = field(default=frozenset(), kw_only=True, compare=False)
    argv: tuple = field(default=(), kw_only=True, compare=False)  # the command line it came from

    @classmethod
    def from_args(cls, args: argparse.Namespace, given: Sequence[str] = (), argv: Sequence[str] = ()):
        """The record of ``args`` (exactly this class's fields; the ``--config`` path is not one)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in NOT_FLAGS]
        return cls(**{name: getattr(args, name) for name in names}, given=frozenset(given), argv=tuple(argv))

    @classmethod
    def from_argv(cls, parser: argparse.ArgumentParser, argv: Sequence[str] | None):
        """Parse ``argv`` (CLI > ``--config`` YAML > defaults) into a record that knows what was given."""
        argv = list(sys.argv[1:] if argv is None else argv)
        return cls.from_args(parse_args(parser, argv), given_keys(parser, argv), argv)

    def replace(self, **changes: Any):
        """A copy with ``changes``; the record itself never changes."""
        return dataclasses.replace(self, **changes)

    def as_yaml(self) -> str:
        """``record()`` as YAML: what ``--print-config`` prints and ``args.yaml`` holds."""
        return yaml.safe_dump(self.record(), sort_keys=False)

    def record(self) -> dict[str, Any]:
        """The settings as plain types, in field order (YAML files, checkpoints, results)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in NOT_FLAGS + ("print_config",)}


@dataclass(frozen=True)
class TrainSettings(Common):
    """Step 1 (``glora.run.supernet``): a supernet, a fixed subnet or a baseline."""

    lr: float
    weight_decay: float
    epochs: int
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    eval_every: int
    save_every: int
    eval_subnets: int
    full_finetune: bool
    init_from: str | None
    unused_supports: str

    @property
    def zero_fill_grads(self) -> bool:
        """``--unused-supports update`` (the original): unused supports keep zero-filled gradients."""
        return self.unused_supports == "update"


@dataclass(frozen=True)
class SearchSettings(Common):
    """Step 2 (``glora.run.evolution``): the search, or the export of a trained model."""

    load_path: str
    param_limits: float
    min_param_limits: float
    max_epochs: int
    select_num: int
    population_num: int
    m_prob: float
    crossover_num: int
    mutation_num: int
    allow_partial: bool
    sampling: str
    plain_tries: int

    @property
    def max_params(self) -> int:
        return round(self.param_limits * 1e6)

    @property
    def min_params(self) -> int:
        return round(self.min_param_limits * 1e6)


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [_plain(v) for v in value]
    return str(value)
