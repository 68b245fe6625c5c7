"""Merging a GLoRA model into plain linears (one way), the search's merge-once candidate copy, and
import of the original code's checkpoints. Writing the merged model out is ``glora.export``."""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from glora.inject import glora_layers, replace_module
from glora.layer import merged_linear
from glora.space import SUPPORTS, validate_choice

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
        replace_module(model, name, linear)
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


class CandidateModel:
    """A plain copy of a GLoRA model into which each search candidate is merged once.

    The copy has ordinary ``nn.Linear`` layers, so evaluating a candidate costs exactly what the
    exported model will; only the per-layer merge (``W0 + W0⊙A + B``, …) runs per candidate. A layer
    without bias gets a zero bias in the copy, because a candidate using E or C gives it one.
    """

    def __init__(self, model: nn.Module):
        self.source = model
        self.names = [name for name, _ in glora_layers(model)]
        plain = copy.deepcopy(model)
        for _, layer in glora_layers(plain):
            layer.set_choice({s: "none" for s in SUPPORTS})
        self.plain = merge_glora(plain)
        for name in self.names:
            target = self.plain.get_submodule(name)
            if target.bias is None:  # (out,) zeros: adds nothing until a candidate writes a bias
                target.bias = nn.Parameter(target.weight.new_zeros(target.out_features), requires_grad=False)

    @torch.no_grad()
    def load(self, subnet: Sequence[Mapping[str, str]]) -> nn.Module:
        """Write the merged weights of ``subnet`` into the plain copy and return it."""
        layers = glora_layers(self.source)
        if len(subnet) != len(layers):
            raise ValueError(f"subnet has {len(subnet)} choices but the model has {len(layers)} GLoRA layers")
        for (name, layer), choice in zip(layers, subnet):
            weight, bias = layer.merged_weight_bias(validate_choice(choice, layer.rank))
            target = self.plain.get_submodule(name)
            target.weight.copy_(weight)
            if bias is None:  # a bias-free layer whose choice adds no bias
                target.bias.zero_()
            else:
                target.bias.copy_(bias)
        return self.plain
