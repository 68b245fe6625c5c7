"""Exporting merged timm models whose bias-free linears gained a bias.

On a linear without bias, GLoRA's E and W0·C form a new bias (``b' = E + W0·C``), so the merged
layer has a ``.bias`` that a fresh build of the same timm model lacks, and the exported folder would
not load. timm often has a constructor flag for such biases (``qkv_bias=False`` in a ViT): we set it,
and give every other layer the flag creates a zero bias, which changes no output. Where no flag
creates exactly linear biases (Swin's ``downsample.reduction``, BEiT's split q/v bias), we refuse
with one line naming the layer, before anything is written.
"""
from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import torch
from torch import nn

from glora.errors import TargetError
from glora.inject import glora_layers


def fit_gained_biases(model: nn.Module) -> dict[str, Any]:
    """Constructor flags a fresh build of ``model`` needs to hold all its biases (``{}`` if none).

    Layers that a chosen flag gives a bias but the merge did not get a zero bias, in place.
    Raises ``TargetError`` (a ``ValueError``) naming the first gained bias no flag can hold.
    """
    arch, args = _arch_and_args(model)
    if not arch:  # not built by timm.create_model: nothing to rebuild against
        return {}
    have = set(model.state_dict())
    extra = sorted(have - _build_keys(arch, args))
    if not extra:
        return {}
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    flags, covered = {}, set()
    for flag in _false_bias_flags(model, args):
        gained = _build_keys(arch, {**args, **flags, flag: True}) - _build_keys(arch, {**args, **flags})
        # A usable flag adds only linear biases (never e.g. a relative-position table) and one we need.
        if gained & set(extra) and all(k.endswith(".bias") and k[:-5] in linears for k in gained):
            flags[flag] = True
            covered |= gained
    uncovered = [k for k in extra if k not in covered]
    if uncovered:
        layer = uncovered[0].removesuffix(".bias")
        tried = ", ".join(_false_bias_flags(model, args))
        tried = f" (tried {tried})" if tried else ""
        raise TargetError(f"{layer}: the merged layer gains a bias (its choice uses E or C on a layer "
                         f"without bias), but timm's {arch} has no constructor flag that gives it "
                         f"one{tried}; use C and E 'none' there or leave it out of the targets")
    for key in sorted(covered - set(extra)):
        layer = model.get_submodule(key[:-5])  # (out,) zeros: a bias that changes nothing
        layer.bias = nn.Parameter(layer.weight.new_zeros(layer.out_features), requires_grad=False)
    if set(model.state_dict()) != _build_keys(arch, {**args, **flags}):
        raise TargetError(f"the merged {arch} does not match a fresh build with {flags}; cannot export")
    return flags


def unexportable_bias_free(model: nn.Module) -> list[str]:
    """GLoRA layers without bias whose gained bias no timm flag can hold (check before a search).

    Pretends every bias-free GLoRA layer gains a bias and returns those that would be refused.
    """
    arch, args = _arch_and_args(model)
    bias_free = [name for name, layer in glora_layers(model) if layer.bias is None]
    if not bias_free or not arch:
        return []
    have = _build_keys(arch, args)
    reachable = set()
    for flag in _false_bias_flags(model, args):
        gained = _build_keys(arch, {**args, flag: True}) - have
        if all(k.endswith(".bias") for k in gained):
            reachable |= {k[:-5] for k in gained}
    return [name for name in bias_free if name not in reachable]


def _arch_and_args(model: nn.Module) -> tuple[str, dict[str, Any]]:
    from timm.models._input import get_model_args

    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture"), get_model_args(model)


def _build_keys(arch: str, args: dict[str, Any]) -> set[str]:
    """State-dict keys of a fresh build (cached: a search of flags builds the same model often)."""
    return set(_cached_keys(arch, json.dumps(args, sort_keys=True, default=str)))


@functools.lru_cache(maxsize=32)
def _cached_keys(arch: str, args_json: str) -> tuple[str, ...]:
    import timm

    args = json.loads(args_json)
    try:  # the meta device builds the module tree without allocating or initialising any tensor
        model = timm.create_model(arch, pretrained=False, device=torch.device("meta"), **args)
    except (RuntimeError, NotImplementedError):  # a model whose init needs real values
        model = timm.create_model(arch, pretrained=False, **args)
    return tuple(model.state_dict())


def _false_bias_flags(model: nn.Module, args: dict[str, Any]) -> list[str]:
    """Boolean ``*_bias`` constructor arguments of the model's classes that are currently false."""
    flags = {}
    for cls in type(model).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name.endswith("bias") and isinstance(param.default, bool):
                flags.setdefault(name, param.default)
    return [name for name, default in flags.items() if args.get(name, default) is False]
