"""One-way export of a GLoRA model to plain timm, and import of the original code's checkpoints."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from glora.inject import glora_layers
from glora.layer import merged_linear

# The original code named the supports' tensors with bare letters (``blocks.0.attn.qkv.Ad``).
ORIGINAL_TENSOR_NAMES = ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E")


def merge_glora(model: nn.Module) -> nn.Module:
    """Replace every GLoRA layer (fixed choice required) by a plain ``nn.Linear``, in place.

    Weights are computed from W0/b0 into new tensors and checked finite, so the merged model's
    ``state_dict()`` has exactly timm's keys and loads with ``strict=True`` into a fresh model.
    Nothing merges as a side effect of ``.eval()``: this is the only way in.
    """
    layers = glora_layers(model)
    undecided = [name for name, layer in layers if layer.choice is None]
    if undecided:
        raise ValueError(f"{len(undecided)} GLoRA layers have no fixed choice (first: "
                         f"{undecided[0]}); call glora.set_subnet(model, subnet) before merging")
    merged = {}
    for name, layer in layers:  # compute all first, so a failure leaves the model untouched
        try:
            merged[name] = merged_linear(layer)
        except FloatingPointError as err:
            raise FloatingPointError(f"{name}: {err}") from None
    for name, linear in merged.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, linear)
    return model


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original code's keys (``…qkv.Ad``) to ours (``…qkv.glora_Ad``).

    A leading ``module.`` (DataParallel) is dropped; every other key is kept unchanged.
    """
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        prefix, _, last = key.rpartition(".")
        if prefix and last in ORIGINAL_TENSOR_NAMES:
            key = f"{prefix}.glora_{last}"
        converted[key] = value
    return converted
