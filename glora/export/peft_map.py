"""How a searched GLoRA subnet maps onto Hugging Face PEFT's GLoRA adapters (pure; no ``peft`` import).

PEFT's GLoRA tuner (peft >= 0.20, ``tuners/glora``) computes the same layer,
``W' = W0 + W0⊙A + B`` and ``b' = b0 + b0⊙D + E + W0·C``, but one configuration per adapter: A and
B share one type (``config_A_B``), D and E share one (``config_D_E``), A, B and C share one rank
``r``, and on a layer without bias it builds no C, D or E. Several adapters can be active at once;
each layer adds the increments of the adapters it holds. So a subnet becomes one adapter per
distinct configuration its layers need, each targeting exactly its layers, all active together.

| our choice                     | PEFT adapter                                                          |
|--------------------------------|-----------------------------------------------------------------------|
| A, B of types a, b             | ``config_A_B`` = the wider of a, b in none < constant < vector < lora |
| C                              | ``config_C`` = its type                                              |
| D, E of types d, e             | ``config_D_E`` = the wider of d, e in none < constant < vector        |
| ``LoRA_k`` (A, B, C)           | ``r`` = the largest k in the layer; factors zero-padded to r          |
| C or E on a layer without bias | refused: PEFT keeps the layer bias-free                               |
| D on a layer without bias      | dropped: it changes nothing (PEFT drops it too)                      |

A narrower option is written exactly in the wider form: a constant c as a vector of c's, a vector
v (out, 1) as the rank-1 product ``v 1ᵀ`` (column 0 of Xd is v, row 0 of Xu is ones), ``none`` as
zeros. Every product and sum involved is exact, so the adapters compute our function; PEFT stores
more numbers than the choice counts when a narrower option is widened.

``PeftModel.from_pretrained(base, folder)`` loads one adapter only. :func:`plan_single_adapter`
gives the one adapter that holds the whole subnet: every layer in the widest configuration any
layer needs, at the cost of more stored numbers (:func:`stored_numbers`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from glora.errors import GLoRAError
from glora.space import SUPPORTS, parse_option

# Order of expressiveness: each kind is exactly representable in every later one.
AB_ORDER = ("none", "constant", "vector", "lora")
DE_ORDER = ("none", "constant", "vector")


class PeftExportError(GLoRAError, ValueError):
    """A subnet that PEFT's GLoRA cannot express (one line naming the layer)."""


@dataclass
class AdapterPlan:
    """One PEFT adapter: its name, ``GloraConfig`` fields and the layers it targets (in order)."""
    name: str
    config_A_B: str
    config_C: str
    config_D_E: str
    r: int
    layers: list[str] = field(default_factory=list)

    def key(self) -> tuple:
        return self.config_A_B, self.config_C, self.config_D_E, self.r

    def config_kwargs(self) -> dict:
        """Keyword arguments of ``peft.GloraConfig`` for this adapter."""
        return {"r": self.r, "config_A_B": self.config_A_B, "config_C": self.config_C,
                "config_D_E": self.config_D_E, "target_modules": names_regex(self.layers)}


def layer_config(name: str, choice: Mapping[str, str], rank: int, has_bias: bool) -> tuple:
    """``(config_A_B, config_C, config_D_E, r)`` that expresses one layer's choice exactly."""
    kind = {s: parse_option(s, choice[s], rank) for s in SUPPORTS}
    if not has_bias and (kind["C"][0] != "none" or kind["E"][0] != "none"):
        raise PeftExportError(f"{name}: the layer has no bias and its choice adds one (C={choice['C']}, "
                              f"E={choice['E']}), but PEFT's GLoRA keeps a layer without bias bias-free; "
                              "export a subnet with C and E 'none' on layers without bias")
    ab = max(kind["A"][0], kind["B"][0], key=AB_ORDER.index)
    c = kind["C"][0] if has_bias else "none"
    de = max(kind["D"][0], kind["E"][0], key=DE_ORDER.index) if has_bias else "none"
    ks = [kind[s][1] for s in "AB" if ab == "lora"] + ([kind["C"][1]] if c == "lora" else [])
    return ab, c, de, max([k for k in ks if k] or [1])  # a vector widened to lora needs rank 1


def plan_adapters(layers: Sequence[tuple[str, nn.Module]],
                  subnet: Sequence[Mapping[str, str]]) -> list[AdapterPlan]:
    """Group GLoRA layers by the PEFT configuration their choices need; the largest group is ``default``."""
    if len(subnet) != len(layers):
        raise PeftExportError(f"subnet has {len(subnet)} choices but the model has {len(layers)} GLoRA layers")
    groups: dict[tuple, list[str]] = {}
    for (name, layer), choice in zip(layers, subnet):
        key = layer_config(name, choice, layer.rank, layer.bias is not None)
        groups.setdefault(key, []).append(name)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: ties keep layer order
    return [AdapterPlan("default" if i == 0 else f"subnet{i}", *key, layers=names)
            for i, (key, names) in enumerate(ordered)]


def plan_single_adapter(layers: Sequence[tuple[str, nn.Module]],
                        subnet: Sequence[Mapping[str, str]]) -> list[AdapterPlan]:
    """One adapter ``default`` for every GLoRA layer: each support widened to the widest type (and
    the largest rank) any layer needs, every narrower choice written exactly in that form (``none``
    as zeros), so the one adapter computes the subnet. It stores more numbers than the
    per-configuration adapters of :func:`plan_adapters`; :func:`stored_numbers` counts both."""
    plans = plan_adapters(layers, subnet)  # per-layer checks (bias-free layers) and configurations
    ab = max((p.config_A_B for p in plans), key=AB_ORDER.index)
    c = max((p.config_C for p in plans), key=AB_ORDER.index)
    de = max((p.config_D_E for p in plans), key=DE_ORDER.index)
    return [AdapterPlan("default", ab, c, de, max(p.r for p in plans), layers=[name for name, _ in layers])]


def stored_numbers(layers: Sequence[tuple[str, nn.Module]], subnet: Sequence[Mapping[str, str]],
                   plans: Sequence[AdapterPlan]) -> int:
    """How many numbers the adapters of ``plans`` store for the GLoRA layers (the head aside)."""
    modules, choices = dict(layers), {name: choice for (name, _), choice in zip(layers, subnet)}
    return sum(tensor.numel() for plan in plans for name in plan.layers
               for tensors in encode_layer(modules[name], choices[name], plan).values()
               for tensor in tensors.values())


def names_regex(names: Sequence[str]) -> str:
    """A regex whose full matches are exactly ``names``: one alternation per name pattern, with the
    first number as a set (``blocks\\.(?:0|3)\\.attn\\.qkv``)."""
    templates: dict[tuple[str, str], list[str]] = {}
    for name in names:
        match = re.search(r"\d+", name)
        if match is None:
            templates.setdefault((name, ""), [])
            continue
        head, tail = name[:match.start()], name[match.end():]
        templates.setdefault((head, tail), []).append(match.group())
    parts = []
    for (head, tail), numbers in templates.items():
        middle = f"(?:{'|'.join(numbers)})" if len(numbers) > 1 else "".join(numbers)
        parts.append(re.escape(head) + middle + re.escape(tail))
    return parts[0] if len(parts) == 1 else "|".join(f"(?:{p})" for p in parts)


@torch.no_grad()
def encode_layer(layer: nn.Module, choice: Mapping[str, str],
                 plan: AdapterPlan) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT tensors of one layer, per support: ``{"A": {"Xd": ..., "Xu": ...}, "D": {"X": ...}, ...}``.

    Shapes follow PEFT's paths: lora Xd (out, r) / Xu (r, in) (for C: (in, r) / (r, 1)); vector X
    (out, 1) for A/B, (in, 1) for C, (out,) for D/E; constant X (1,); none: nothing.
    """
    rank = layer.rank
    enc = {s: _matrix(parse_option(s, choice[s], rank), plan.config_A_B, plan.r,
                      getattr(layer, f"glora_{s}d"), getattr(layer, f"glora_{s}u")) for s in "AB"}
    has_bias = layer.bias is not None
    c = parse_option("C", choice["C"], rank)
    enc["C"] = _matrix(c, plan.config_C, plan.r, layer.glora_Cd, layer.glora_Cu) if has_bias else {}
    for s in "DE":
        src = parse_option(s, choice[s], rank)[0]
        enc[s] = _vector(src, plan.config_D_E, getattr(layer, f"glora_{s}")) if has_bias else {}
    return enc


def _matrix(src: tuple[str, int], kind: str, r: int, down: torch.Tensor, up: torch.Tensor) -> dict:
    # down: (rows, R), up: (R, cols); rows/cols are out/in for A and B, in/1 for C.
    src_kind, k = src
    if kind == "none":
        return {}
    value = {"none": None, "constant": down[0, 0], "vector": down[:, 0], "lora": None}[src_kind]
    if kind == "constant":
        return {"X": (down.new_zeros(()) if value is None else value).reshape(1).clone()}
    if kind == "vector":
        column = down.new_zeros(down.shape[0]) if value is None else value.expand(down.shape[0])
        return {"X": column.reshape(-1, 1).clone()}
    xd, xu = down.new_zeros(down.shape[0], r), up.new_zeros(r, up.shape[1])  # (rows, r), (r, cols)
    if src_kind == "lora":
        xd[:, :k], xu[:k] = down[:, :k], up[:k]
    elif value is not None:  # a vector or constant as the rank-1 product value · 1ᵀ
        xd[:, 0], xu[0] = value, 1.0
    return {"Xd": xd, "Xu": xu}


def _vector(src_kind: str, kind: str, vec: torch.Tensor) -> dict:
    # vec: (out,); D and E read it whole (vector) or its first entry (constant).
    if kind == "none":
        return {}
    value = {"none": vec.new_zeros(()), "constant": vec[0], "vector": vec}[src_kind]
    if kind == "constant":
        return {"X": value.reshape(1).clone()}
    return {"X": value.expand(vec.shape[0]).clone()}
