"""The GLoRA linear layer: one frozen linear plus the shared storage of its five supports."""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from glora.space import SUPPORTS, parse_option, sample_choice, validate_choice


class ChoiceSampler:
    """Seeded source of per-layer choices for supernet mode.

    It owns a private ``random.Random``, so neither Python's global ``random`` nor torch's RNG
    is touched, and its state can be checkpointed for an exact resume.
    """

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def draw(self, rank: int) -> dict:
        """A uniform choice from the default space of the given rank."""
        return sample_choice(self.rng, rank)

    def state_dict(self) -> dict:
        """Plain-typed state (lists and ints) for a ``weights_only`` checkpoint."""
        version, internal, gauss = self.rng.getstate()
        return {"version": version, "internal": list(internal), "gauss": gauss}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state written by :meth:`state_dict`."""
        self.rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


class GLoRALinear(nn.Module):
    """A frozen linear layer with GLoRA supports.

    ``W' = W0 + W0 ⊙ A + B`` and ``b' = b0 + b0 ⊙ D + E + W0 · C`` (without bias: ``E + W0 · C``);
    ``y = x W'ᵀ + b'``. Stored tensors (r = supernet rank), all options of a support share them:

    | support | storage              | LoRA_k            | vector        | constant  | cost (in -> out)   |
    |---------|----------------------|-------------------|---------------|-----------|--------------------|
    | A, B    | Xd (out,r), Xu (r,in)| Xd[:,:k]@Xu[:k]   | Xd[:,0:1]     | Xd[0,0]   | k(in+out), out, 1  |
    | C       | Cd (in,r), Cu (r,1)  | Cd[:,:k]@Cu[:k]   | Cd[:,0:1]     | —         | k(in+1), in        |
    | D, E    | D (out,), E (out,)   | —                 | D             | D[0]      | out, 1             |

    Down factors, D and E start at zero, so every choice equals the frozen layer at init.
    ``choice`` is a fixed choice dict, or ``None`` to draw one from ``sampler`` at every forward.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        out_features, in_features = weight.shape
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        # The frozen backbone keeps timm's attribute names, so its state-dict keys are unchanged.
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)  # (out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.glora_Ad = nn.Parameter(torch.empty(out_features, rank, **factory))  # (out, r)
        self.glora_Au = nn.Parameter(torch.empty(rank, in_features, **factory))  # (r, in)
        self.glora_Bd = nn.Parameter(torch.empty(out_features, rank, **factory))  # (out, r)
        self.glora_Bu = nn.Parameter(torch.empty(rank, in_features, **factory))  # (r, in)
        self.glora_Cd = nn.Parameter(torch.empty(in_features, rank, **factory))  # (in, r)
        self.glora_Cu = nn.Parameter(torch.empty(rank, 1, **factory))  # (r, 1)
        self.glora_D = nn.Parameter(torch.empty(out_features, **factory))  # (out,)
        self.glora_E = nn.Parameter(torch.empty(out_features, **factory))  # (out,)
        self.choice: dict | None = None
        self.sampler: ChoiceSampler | None = None
        self.reset_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "GLoRALinear":
        """Wrap an existing ``nn.Linear`` (its tensors are reused, not copied)."""
        return cls(linear.weight, linear.bias, rank)

    def reset_parameters(self) -> None:
        """Zero down factors, D and E; xavier-uniform up factors."""
        for tensor in (self.glora_Ad, self.glora_Bd, self.glora_Cd, self.glora_D, self.glora_E):
            nn.init.zeros_(tensor)
        for tensor in (self.glora_Au, self.glora_Bu, self.glora_Cu):
            nn.init.xavier_uniform_(tensor)

    def set_choice(self, choice: Mapping[str, str] | None) -> None:
        """Fix this layer's choice (validated), or ``None`` for supernet sampling."""
        self.choice = None if choice is None else validate_choice(choice, self.rank)

    def current_choice(self) -> dict:
        """The fixed choice, or a fresh draw from the sampler."""
        if self.choice is not None:
            return self.choice
        if self.sampler is None:
            raise RuntimeError("GLoRALinear has no fixed choice and no sampler; call set_subnet first")
        return self.sampler.draw(self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.merged_weight_bias(self.current_choice())
        return F.linear(x, weight, bias)

    def merged_weight_bias(self, choice: Mapping[str, str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W', b')`` for a choice, computed from W0/b0; ``none`` supports cost nothing."""
        opts = _parsed(tuple((s, choice[s]) for s in SUPPORTS), self.rank)
        w0, b0 = self.weight, self.bias
        weight = w0
        a = _factor(opts["A"], self.glora_Ad, self.glora_Au)
        if a is not None:
            weight = weight + w0 * a  # a: (out,in), (out,1) or scalar
        b = _factor(opts["B"], self.glora_Bd, self.glora_Bu)
        if b is not None:
            weight = weight + b
        bias = b0
        d = _vector(opts["D"], self.glora_D)
        if d is not None and b0 is not None:  # without a bias, D has nothing to scale
            bias = bias + b0 * d
        e = _vector(opts["E"], self.glora_E)
        if e is not None:
            bias = e.expand(self.out_features) if bias is None else bias + e
        c = _factor(opts["C"], self.glora_Cd, self.glora_Cu)
        if c is not None:
            wc = (w0 @ c).squeeze(1)  # (out,in)@(in,1) -> (out,)
            bias = wc if bias is None else bias + wc
        return weight, bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, choice={self.choice}")


def _factor(parsed: tuple[str, int], down: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    """A/B/C read from their (down, up) factors: low-rank product, first column, or [0, 0]."""
    kind, k = parsed
    if kind == "lora":
        return down[:, :k] @ up[:k, :]
    if kind == "vector":
        return down[:, 0:1]  # first column, broadcast over the other axis
    if kind == "constant":
        return down[0, 0]
    return None


def _vector(parsed: tuple[str, int], vec: torch.Tensor) -> torch.Tensor | None:
    """D/E read from their vector: the whole vector, or its first entry."""
    kind, _ = parsed
    if kind == "vector":
        return vec
    if kind == "constant":
        return vec[0]
    return None


_STORAGE = {"A": ("glora_Ad", "glora_Au"), "B": ("glora_Bd", "glora_Bu"),
            "C": ("glora_Cd", "glora_Cu"), "D": ("glora_D",), "E": ("glora_E",)}


def used_tensor_names(choice: Mapping[str, str], rank: int) -> set[str]:
    """The stored tensors a choice reads: both factors for LoRA_k, the down factor otherwise."""
    used = set()
    for support, names in _STORAGE.items():
        kind, _ = parse_option(support, choice[support], rank)
        if kind != "none":
            used.update(names if kind == "lora" else names[:1])
    return used


def is_trainable_name(name: str) -> bool:
    """The one rule for what trains and is saved: ``glora_*`` tensors and the head."""
    return name.rsplit(".", 1)[-1].startswith("glora_") or name.startswith("head.")


def merged_linear(layer: GLoRALinear) -> nn.Linear:
    """A plain ``nn.Linear`` holding the layer's merged weights for its fixed choice."""
    if layer.choice is None:
        raise ValueError("merging needs a fixed choice per layer; call set_subnet(model, subnet)")
    with torch.no_grad():
        weight, bias = layer.merged_weight_bias(layer.choice)
        weight = weight.detach().clone()  # new tensors: never alias W0
        bias = None if bias is None else bias.detach().clone()
    for label, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"merged {label} is not finite for choice {layer.choice}")
    linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    linear.requires_grad_(False)
    return linear


@lru_cache(maxsize=4096)
def _parsed(choice_items: tuple, rank: int) -> dict:
    # Parsing the option strings once per distinct choice keeps string work off the hot path.
    return {s: parse_option(s, option, rank) for s, option in choice_items}
