"""``torch.compile`` for models whose graph is the same at every step.

A plain or merged model (search scoring, evaluation), a GLoRA model with a fixed subnet and a
fully fine-tuned model compile once. A GLoRA supernet does not: every layer takes a different
path at every step, so it would recompile each time, and it is refused.

``--compile auto`` resolves per device to what was measured faster end to end
(benchmarks/RESULTS.md, "torch.compile"): on the CPU compiled steps are 10-25 % cheaper, but the
15-25 s of compilation per process is not recovered by CPU-sized runs (a mini-VTAB search scores
~270 candidates, the break-even is ~330), so auto is off there; on CUDA it is not measured yet,
so auto is off too until benchmarks/gpu_check.sh says otherwise. ``on`` and ``off`` force it.
"""
from __future__ import annotations

import torch
from torch import nn

from glora.inject import glora_layers

COMPILE_CHOICES = ("auto", "on", "off")
AUTO = {"cpu": False, "cuda": False}  # device type -> compile under auto (see the docstring)


def resolve_compile(flag: str, device: torch.device | str) -> bool:
    """Whether to compile: ``on``/``off`` as given, ``auto`` by device type (AUTO)."""
    if flag not in COMPILE_CHOICES:
        raise ValueError(f"invalid compile setting {flag!r}; valid: {', '.join(COMPILE_CHOICES)}")
    if flag == "auto":
        return AUTO.get(torch.device(device).type, False)
    return flag == "on"


def compile_fixed(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Compile ``model`` in place (state-dict keys unchanged) if enabled; returns it.

    Raises ValueError for a GLoRA model in sampling mode, which would recompile every step.
    """
    if not enabled:
        return model
    sampling = [name for name, layer in glora_layers(model) if layer.choice is None]
    if sampling:
        raise ValueError(f"cannot compile a GLoRA supernet in sampling mode (layer {sampling[0]} "
                         "draws a new path every step); compile a fixed subnet or a merged model")
    model.compile()
    return model
