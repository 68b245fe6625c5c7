"""The GLoRA search space: option strings, validation, parameter counts, presets.

A layer's *choice* is a dict ``{"A": ..., "B": ..., "C": ..., "D": ..., "E": ...}`` whose values
are exact option strings; a *subnet* is a list of choices, one per GLoRA layer in injection order.

| support | options                               | parameters (layer in -> out)           |
|---------|---------------------------------------|----------------------------------------|
| A, B    | ``LoRA_k``, ``vector``, ``constant``, ``none`` | k*(in+out), out, 1, 0          |
| C       | ``LoRA_k``, ``vector``, ``none``      | k*(in+1), in, 0                        |
| D, E    | ``vector``, ``constant``, ``none``    | out, 1, 0                              |

``LoRA_k`` is valid for 1 <= k <= rank; the default space uses k = rank only (4*4*3*3*3 = 432).
The counts follow the original code, which counts D even for a layer without bias.
"""
from __future__ import annotations

import itertools
import random
from typing import Mapping, Sequence

SUPPORTS = ("A", "B", "C", "D", "E")
LORA_PREFIX = "LoRA_"
# Non-LoRA options per support; LoRA_k is added where allowed (A, B, C).
_PLAIN_OPTIONS = {
    "A": ("vector", "constant", "none"),
    "B": ("vector", "constant", "none"),
    "C": ("vector", "none"),
    "D": ("vector", "constant", "none"),
    "E": ("vector", "constant", "none"),
}
_HAS_LORA = {"A": True, "B": True, "C": True, "D": False, "E": False}

Choice = dict  # {"A": str, "B": str, "C": str, "D": str, "E": str}


def lora(k: int) -> str:
    """The option string of a rank-k low-rank support, e.g. ``lora(4) == 'LoRA_4'``."""
    return f"{LORA_PREFIX}{int(k)}"


def support_options(support: str, rank: int) -> tuple[str, ...]:
    """The default options of one support, in the original code's order (LoRA first)."""
    if support not in SUPPORTS:
        raise ValueError(f"unknown support {support!r}; valid: {', '.join(SUPPORTS)}")
    lora_opts = (lora(rank),) if _HAS_LORA[support] else ()
    return lora_opts + _PLAIN_OPTIONS[support]


def search_space(rank: int) -> dict[str, tuple[str, ...]]:
    """Default options per support for a supernet of the given rank."""
    _check_rank(rank)
    return {s: support_options(s, rank) for s in SUPPORTS}


def all_choices(rank: int) -> list[Choice]:
    """Every choice of the default space (432 of them), in a fixed order."""
    space = search_space(rank)
    return [dict(zip(SUPPORTS, combo)) for combo in itertools.product(*space.values())]


def parse_option(support: str, option: str, rank: int) -> tuple[str, int]:
    """Validate one option and return ``(kind, k)``; kind is 'lora'/'vector'/'constant'/'none'."""
    if support not in SUPPORTS:
        raise ValueError(f"unknown support {support!r}; valid: {', '.join(SUPPORTS)}")
    if isinstance(option, str) and option in _PLAIN_OPTIONS[support]:
        return option, 0
    if _HAS_LORA[support] and isinstance(option, str) and option.startswith(LORA_PREFIX):
        digits = option[len(LORA_PREFIX):]
        if digits.isdigit() and 1 <= int(digits) <= rank and option == lora(int(digits)):
            return "lora", int(digits)
    valid = _PLAIN_OPTIONS[support]
    if _HAS_LORA[support]:
        valid = (f"LoRA_k (1 <= k <= {rank})",) + valid
    raise ValueError(f"invalid option {option!r} for support {support}; valid: {', '.join(valid)}")


def validate_choice(choice: Mapping[str, str], rank: int) -> Choice:
    """Check a choice has exactly the five supports with valid options; return a plain copy."""
    if not isinstance(choice, Mapping) or set(choice) != set(SUPPORTS):
        got = sorted(choice) if isinstance(choice, Mapping) else type(choice).__name__
        raise ValueError(f"a choice needs exactly the keys {list(SUPPORTS)}, got {got}")
    for support in SUPPORTS:
        parse_option(support, choice[support], rank)
    return {s: choice[s] for s in SUPPORTS}


def option_params(support: str, option: str, in_features: int, out_features: int,
                  rank: int | None = None) -> int:
    """Parameters one support's option adds to a layer (in -> out), as the original counts."""
    kind, k = parse_option(support, option, rank if rank is not None else _lora_k(option))
    if kind == "none":
        return 0
    if kind == "constant":
        return 1
    if kind == "vector":
        return in_features if support == "C" else out_features
    # LoRA_k: C is an (in x 1) matrix, so its factors are in*k + k*1.
    return k * (in_features + 1) if support == "C" else k * (in_features + out_features)


def choice_params(choice: Mapping[str, str], in_features: int, out_features: int) -> int:
    """Parameters of one layer's choice (the search budget; the head is not counted)."""
    return sum(option_params(s, choice[s], in_features, out_features) for s in SUPPORTS)


def subnet_params(subnet: Sequence[Mapping[str, str]], shapes: Sequence[tuple[int, int]]) -> int:
    """Parameters of a subnet given each layer's ``(in_features, out_features)``."""
    if len(subnet) != len(shapes):
        raise ValueError(f"subnet has {len(subnet)} choices but the model has {len(shapes)} layers")
    return sum(choice_params(c, i, o) for c, (i, o) in zip(subnet, shapes))


def sample_choice(rng: random.Random, rank: int) -> Choice:
    """A uniform draw from the default space: each support independently and uniformly."""
    return {s: rng.choice(support_options(s, rank)) for s in SUPPORTS}


PRESETS = ("linear_probe", "lora", "bitfit", "ssf", "largest")


def preset_choice(name: str, rank: int) -> Choice:
    """One layer's choice for a named baseline subnet (the same for every layer)."""
    none = {s: "none" for s in SUPPORTS}
    if name == "linear_probe":
        return none
    if name == "lora":
        return {**none, "B": lora(rank)}
    if name == "bitfit":  # a learned additive bias on every linear
        return {**none, "E": "vector"}
    if name == "ssf":  # per-channel scale of W and b (A vector) and shift (E vector)
        return {**none, "A": "vector", "E": "vector"}
    if name == "largest":
        return {"A": lora(rank), "B": lora(rank), "C": lora(rank), "D": "vector", "E": "vector"}
    raise ValueError(f"unknown subnet preset {name!r}; valid: {', '.join(PRESETS)}")


def preset_subnet(name: str, num_layers: int, rank: int) -> list[Choice]:
    """A named baseline subnet for a model with ``num_layers`` GLoRA layers."""
    return [preset_choice(name, rank) for _ in range(num_layers)]


def _check_rank(rank: int) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")


def _lora_k(option: str) -> int:
    # Lets option_params count a LoRA_k option without being told the supernet rank.
    if isinstance(option, str) and option.startswith(LORA_PREFIX) and option[5:].isdigit():
        return max(1, int(option[5:]))
    return 1
