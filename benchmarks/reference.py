"""Reference GLoRA layers the benchmarks time ours against, written straightforwardly here.

``MaterialisedGLoRALinear`` builds every support as a tensor and W', b' in full on each forward;
``NaiveGLoRALinear`` is the original code's way: 'none' as freshly allocated zeros of the support's
full shape, every term of W' = W0 + W0*A + B and b' = b0 + b0*D + E + W0 C computed.
"""
from __future__ import annotations

import copy
import random
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

import glora
from glora.inject import replace_module
from glora.layer import GLoRALinear
from glora.space import parse_option, sample_choice


class MaterialisedGLoRALinear(GLoRALinear):
    """The previous forward: W', b' materialised (``none`` supports skipped), one ``F.linear``.

    Every choice but all-``none`` pays the (out x in) weight-gradient GEMM of W', and under bf16
    autocast the cast of W' rounds the increment to a step of |W0|.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.current_choice()
        self.last_choice = choice
        return F.linear(x, *self.merged_weight_bias(choice))


class NaiveGLoRALinear(MaterialisedGLoRALinear):
    """The original code's way of computing W', b': every support a tensor, every term computed.

    Same storage and sampler as :class:`GLoRALinear`; only ``merged_weight_bias`` differs. The
    option strings are parsed on every call, and 'none' is a fresh zero tensor (on the weight's
    device, so unlike the original it does not need CUDA).
    """

    def merged_weight_bias(self, choice: Mapping[str, str]):
        out, inp, w0 = self.out_features, self.in_features, self.weight
        a = self._dense("A", choice, self.glora_Ad, self.glora_Au, (out, inp))
        b = self._dense("B", choice, self.glora_Bd, self.glora_Bu, (out, inp))
        c = self._dense("C", choice, self.glora_Cd, self.glora_Cu, (inp, 1))
        d = self._dense("D", choice, self.glora_D.unsqueeze(1), None, (out, 1)).squeeze(1)
        e = self._dense("E", choice, self.glora_E.unsqueeze(1), None, (out, 1)).squeeze(1)
        b0 = self.bias if self.bias is not None else torch.zeros(out, dtype=w0.dtype, device=w0.device)
        weight = w0 + w0 * a + b  # (out, in)
        bias = b0 + b0 * d + e + (w0 @ c).squeeze(1)  # (out,)
        return weight, bias

    def _dense(self, support: str, choice, down: torch.Tensor, up: torch.Tensor | None,
               shape: tuple[int, int]) -> torch.Tensor:
        kind, k = parse_option(support, choice[support], self.rank)
        if kind == "lora":
            return down[:, :k] @ up[:k, :]
        if kind == "vector":
            return down[:, 0:1].expand(shape)
        if kind == "constant":
            return down[0, 0].expand(shape)
        return torch.zeros(shape, dtype=down.dtype, device=down.device)  # allocated every forward


def naive_copy(model: nn.Module, layer_class: type = None) -> nn.Module:
    """A deep copy of a GLoRA model whose layers are ``layer_class`` (default NaiveGLoRALinear,
    same tensors' values), in sampling mode with seed 0."""
    naive = copy.deepcopy(model)
    for name, layer in glora.glora_layers(naive):
        replacement = (layer_class or NaiveGLoRALinear)(layer.weight, layer.bias, layer.rank)
        replacement.load_state_dict(layer.state_dict())
        replace_module(naive, name, replacement)
    glora.mark_trainable(naive)
    glora.set_subnet(naive, None, seed=0)
    return naive


def check_naive_equals_ours(ours: nn.Module, naive: nn.Module, x: torch.Tensor, rank: int) -> float:
    """Max |difference| of the two models' outputs for one fixed random subnet."""
    rng = random.Random(3)
    subnet = [sample_choice(rng, rank) for _ in glora.glora_layers(ours)]
    for model in (ours, naive):
        glora.set_subnet(model, subnet)
        model.eval()
    with torch.inference_mode():
        diff = (ours(x) - naive(x)).abs().max().item()
    for model in (ours, naive):
        glora.set_subnet(model, None, seed=0)
    return diff
