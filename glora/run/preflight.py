"""Checks made up front, before a model is trained or data is read: each flag against its
valid range, the rank against the targeted layers, the batch size against the training split, and
one forward pass that the model accepts the input and calls every targeted linear.

Some models read a linear's ``.weight`` instead of calling the layer: timm's BEiT and EVA build
``qkv`` with a separate q/v bias and run ``F.linear(x, self.qkv.weight, qkv_bias)``, and
``nn.MultiheadAttention`` does the same with ``out_proj``. GLoRA injected there would train and
merge but never change an output; :func:`check_targets_called` finds such layers.

Every failure is a :class:`~glora.errors.ConfigError` whose one line names the flag, the value and
the valid range.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from glora.errors import ConfigError, TargetError
from glora.inject import DEFAULT_TARGETS, target_names

# A range is (kind, low) or (kind, low, high): the least (and greatest) valid value.
_INT = "an integer >= {low}"
_NUMBER = "a finite number >= {low}"
_UNIT = "a number in [0, 1]"
_FRACTION = "a number in [0, 1)"

_BOUNDED = "an integer in [{low}, {high}]"
# Seeds: the per-epoch torch seed (seed * 1_000_003 + epoch) * 1_009 + rank must stay in torch's
# seeding range (below 2**64), so --seed is bounded like numpy's seeds. Input size: bounded before
# the probe forward allocates a batch of it (99999 would ask for ~120 GB).
MAX_SEED, MAX_INPUT_SIZE = 2**32 - 1, 4096
COMMON_RANGES = {"rank": (_INT, 1), "input_size": (_BOUNDED, 1, MAX_INPUT_SIZE), "batch_size": (_INT, 1),
                 "eval_batch_size": (_INT, 1), "drop_path": (_FRACTION, 0), "seed": (_BOUNDED, 0, MAX_SEED)}
SUPERNET_RANGES = {"epochs": (_INT, 1), "warmup_epochs": (_INT, 0), "eval_every": (_INT, 1),
                   "save_every": (_INT, 1), "eval_subnets": (_INT, 1), "lr": (_NUMBER, 0),
                   "weight_decay": (_NUMBER, 0), "warmup_lr": (_NUMBER, 0), "min_lr": (_NUMBER, 0)}
SEARCH_RANGES = {"param_limits": (_NUMBER, 0), "min_param_limits": (_NUMBER, 0),
                 "population_num": (_INT, 1), "select_num": (_INT, 1), "mutation_num": (_INT, 0),
                 "crossover_num": (_INT, 0), "max_epochs": (_INT, 0), "m_prob": (_UNIT, 0),
                 "plain_tries": (_INT, 0)}


def _valid(kind: str, low: float, value: object, high: float = math.inf) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind in (_INT, _BOUNDED):
        return isinstance(value, int) and low <= value <= high
    if not math.isfinite(value):
        return False
    if kind == _UNIT:
        return 0 <= value <= 1
    if kind == _FRACTION:
        return 0 <= value < 1
    return value >= low


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> the flag as the user types it (``weight_decay`` -> ``--wd``)."""
    return {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}


def check_ranges(args: argparse.Namespace, parser: argparse.ArgumentParser,
                 ranges: Mapping[str, tuple[str, float]]) -> None:
    """Refuse the first setting outside its range, naming the flag, the value and the range."""
    flags = flag_names(parser)
    for dest, (kind, low, *high) in ranges.items():
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if not _valid(kind, low, value, *high):
            valid = kind.format(low=low, high=high[0] if high else None)
            raise ConfigError(f"{flags.get(dest, dest)} {value!r}: must be {valid}")


def check_model_kwargs(value: object) -> None:
    """``--model-kwargs`` / ``model_kwargs`` must be a mapping of ``timm.create_model`` arguments."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"--model-kwargs {value!r}: must be a JSON object (a mapping of "
                          "timm.create_model arguments, e.g. '{\"depth\": 2}')")


def check_common(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The checks both CLIs share (ranges of shared flags, model kwargs)."""
    check_ranges(args, parser, COMMON_RANGES)
    check_model_kwargs(args.model_kwargs)


def check_search(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """evolution.py's flags: search counts, probabilities and a budget that is a real range."""
    check_common(args, parser)
    check_ranges(args, parser, SEARCH_RANGES)
    if args.min_param_limits > args.param_limits:
        raise ConfigError(f"--min-param-limits {args.min_param_limits} is above --param-limits "
                          f"{args.param_limits}: the budget [min, max] (M parameters) is empty")


def check_rank(model: nn.Module, names: Sequence[str], rank: int) -> None:
    """Refuse a rank above min(in, out) of a targeted layer, before any support is allocated: a
    higher rank adds parameters but no expressiveness, and a huge one exhausts memory."""
    shapes = {name: (model.get_submodule(name).in_features, model.get_submodule(name).out_features)
              for name in names}
    smallest = min(shapes, key=lambda name: min(shapes[name]), default=None)
    if smallest is not None and rank > min(shapes[smallest]):
        fan_in, fan_out = shapes[smallest]
        raise ConfigError(f"--rank {rank}: must be at most {min(fan_in, fan_out)}, the smaller side of the "
                          f"targeted layer {smallest} ({fan_in} -> {fan_out}); valid: 1 to {min(fan_in, fan_out)}")


def check_batch_size(batch_size: int, images: int, where: str, world_size: int = 1) -> None:
    """A training batch must fit the split (whole batches only) and split evenly over the ranks."""
    if batch_size > images:
        raise ConfigError(f"--batch-size {batch_size} is larger than the {images} images of {where}: "
                          f"with whole batches only, no step would run; valid: 1 to {images}")
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} does not split evenly over {world_size} ranks")


def forward_once(model: nn.Module, *inputs: Any, **kwargs: Any) -> None:
    """Run ``model(*inputs, **kwargs)`` once, in eval mode and without gradients.

    A model that rejects the input (a ViT built for another image size asserts on it) is a
    ``ConfigError`` naming the input's shape, so a wrong ``--input-size`` fails in seconds.
    """
    training = model.training
    try:  # eval mode: no dropout or drop-path, so no draw from torch's global RNG
        with torch.no_grad():
            model.eval()(*inputs, **kwargs)
    except (AssertionError, RuntimeError, ValueError) as err:
        shape = next((tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)), None)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the model does not accept an input of shape {shape}: {detail}; check "
                          "--input-size (and img_size in model_kwargs)") from None
    finally:
        model.train(training)


def check_targets_called(model: nn.Module, targets: str | None, *inputs: Any, **kwargs: Any) -> list[str]:
    """Run ``model(*inputs, **kwargs)`` once and refuse targets the forward never calls.

    Call it on the model before ``inject_glora``; returns the matched names (as injection will).
    Raises ``TargetError`` (a ``ValueError``) (one line, naming the first such layer) otherwise.
    """
    targets = targets or DEFAULT_TARGETS
    names = target_names(model, targets)
    called: set[str] = set()
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: called.add(name)) for name in names]
    try:
        forward_once(model, *inputs, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    silent = [name for name in names if name not in called]
    if silent:
        more = f" and {len(silent) - 1} more" if len(silent) > 1 else ""
        raise TargetError(f"{silent[0]}{more}: matched by targets {targets!r} but never called in a "
                         "forward pass (the model reads its weight directly, as timm's BEiT and EVA do "
                         "for a qkv with q/v bias), so GLoRA there would change nothing; leave it out "
                         "of the targets (or build such a model with qkv_bias=False)")
    return names
