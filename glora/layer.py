"""The GLoRA linear layer: one frozen linear plus the shared storage of its five supports."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glora.ops import dense_linear, frozen_linear
from glora.sampler import ChoiceSampler, Plan, plan_of
from glora.space import parse_option, validate_choice


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

    The forward takes, per choice, the cheapest exact path (``merged_weight_bias`` is the
    reference formula and what merging uses). Only A = LoRA_k needs W' itself, hence the
    (out × in) weight-gradient GEMM; otherwise the frozen GEMM ``h = x W0ᵀ`` is shared:

    | support | forward term                          | why exact                          |
    |---------|---------------------------------------|------------------------------------|
    | A vector/constant | ``h ⊙ (1 + a)``             | ``x (W0 ⊙ a 1ᵀ)ᵀ = a ⊙ (x W0ᵀ)``   |
    | B LoRA_k | ``(x Buᵀ) Bdᵀ``                      | low rank                           |
    | B vector/constant | ``(Σ_j x_j) · b``           | every column of B is ``b``         |
    | C, D, E | bias only (``W0 · c`` a matrix-vector product) |                           |

    (glora/ops.py does this around one frozen GEMM, with its backward written out; in fp32 with
    A = none it folds B into that GEMM's weight.) Under autocast (bf16) the weight increments
    stay on their own path, in their own precision, instead of being rounded into W0 when W' is
    cast; A = LoRA_k then costs a second GEMM.
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
        self.last_choice: dict | None = None  # the choice of the latest forward
        self._views: dict[str, nn.Parameter] = {}  # trained views of stored tensors (train_read_entries)
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

    @property
    def choice(self) -> dict | None:
        """The fixed choice, or ``None`` in sampling mode."""
        return self._choice

    @choice.setter
    def choice(self, choice: Mapping[str, str] | None) -> None:
        # Validated and parsed once here, so the forward never touches option strings.
        if getattr(self, "_views", None):
            raise RuntimeError("this layer trains the entries of its fixed choice (train_read_entries); "
                               "its choice cannot change")
        self._choice = None if choice is None else validate_choice(choice, self.rank)
        self._fixed_plan = None if choice is None else plan_of(self._choice, self.rank)

    def train_read_entries(self) -> list[nn.Parameter]:
        """Fixed choice: make exactly the stored entries it reads trainable; return those tensors.

        A stored tensor read whole trains itself. One read in part (``vector`` reads column 0 of
        its (out, r) factor, ``constant`` one entry, ``LoRA_k`` with k < r the leading k) is frozen,
        and a leaf view of the read part (sharing its memory, so the state dict and merging see
        every update) trains in its place: gradients, weight decay and optimizer moments cover
        only what the choice reads, ``choice_params`` entries in all. Call it after the model has
        been moved to its device (a move would detach the views).
        """
        if self.choice is None:
            raise ValueError("train_read_entries needs a fixed choice; call set_choice first")
        read = read_entries(self.choice, self.rank)
        self._views, trained = {}, []
        for name, param in self._parameters.items():
            if not name.startswith("glora_"):
                continue
            index = read.get(name)
            part = None if index is None else param.detach()[index]
            param.requires_grad_(part is not None and part.numel() == param.numel())
            if param.requires_grad:
                trained.append(param)
            elif part is not None:
                self._views[name] = nn.Parameter(part)  # a view: updates land in `param`
                trained.append(self._views[name])
        return trained

    def _stored(self, name: str) -> torch.Tensor:
        # The tensor the forward reads: the stored parameter, or its trained view.
        view = self._views.get(name)
        return self._parameters[name] if view is None else view

    def set_choice(self, choice: Mapping[str, str] | None) -> None:
        """Fix this layer's choice (validated), or ``None`` for supernet sampling."""
        self.choice = choice

    def _next_plan(self) -> Plan:
        if self._fixed_plan is not None:
            return self._fixed_plan
        if self.sampler is None:
            raise RuntimeError("GLoRALinear has no fixed choice and no sampler; call set_subnet first")
        return self.sampler.next_plan(self)

    def current_choice(self) -> dict:
        """The fixed choice, or a fresh draw from the sampler."""
        return dict(self._next_plan().choice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._next_plan()
        self.last_choice = plan.choice
        if self.weight.requires_grad:  # a trainable W0 needs its gradient: the reference formula
            return F.linear(x, *self.merged_weight_bias(plan.choice))
        # b' = b0 + b0 ⊙ D + E + W0 · C (out,), always fused into the frozen GEMM: under autocast
        # it is then rounded once, at the scale of b', with the GEMM's fp32 accumulator.
        bias = _sum(self.bias, self._bias_increment(plan))
        lowp = torch.is_autocast_enabled(x.device.type)
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (T, in)
        if lowp:  # cast once, not once per op that reads it (up to three)
            x2 = x2.to(torch.get_autocast_dtype(x.device.type))
        if plan.A[0] == "lora" and not lowp:  # W0 ⊙ A is full rank: materialise W'
            y = dense_linear(x2, self._weight_increment(plan, self.weight), bias)
        elif plan.A[0] == "lora":
            # Autocast: y = (x W0ᵀ + b') + x ΔWᵀ, a second GEMM on ΔW = W0 ⊙ A + B, because
            # casting W0 + ΔW to bf16 would round ΔW to a step of |W0| (about 0.4 %).
            delta = self._weight_increment(plan, None)  # (out, in)
            y = torch.addmm(F.linear(x2, self.weight, bias), x2, delta.t())
        else:  # (x W0ᵀ) ⊙ (1 + a) + b' + x Bᵀ around one frozen GEMM
            y = frozen_linear(x2, self.weight, bias, self._scale(plan.A[0]), *self._b_terms(x2, plan.B))
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _scale(self, kind: str) -> torch.Tensor | None:
        """``1 + a`` (out,) for A vector/constant: x (W0 ⊙ a 1ᵀ)ᵀ = (x W0ᵀ) ⊙ a; None for none."""
        if kind == "vector":
            return self._stored("glora_Ad")[:, 0] + 1  # the first column
        if kind == "constant":
            return (self._stored("glora_Ad")[0, 0] + 1).expand(self.out_features)
        return None

    def _b_terms(self, x2: torch.Tensor, option: tuple[str, int]) -> tuple:
        """``(d, u)`` with x Bᵀ = (x dᵀ) u (B = uᵀ d): (k, in) and (k, out) factors."""
        kind, k = option
        if kind == "lora":
            return _lead(self._stored("glora_Bu"), k, 0), _lead(self._stored("glora_Bd"), k, 1).t()
        if kind == "none":
            return None, None
        # Every column of B is b: B = b 1ᵀ, rank 1, and x Bᵀ = (Σ_j x_j) bᵀ.
        bd = self._stored("glora_Bd")
        b = bd[:, 0] if kind == "vector" else bd[0, 0].expand(self.out_features)
        return x2.new_ones(1, self.in_features), b.unsqueeze(0)

    def _weight_increment(self, plan: Plan, base: torch.Tensor | None) -> torch.Tensor:
        """``base + W0 ⊙ A + B`` (out, in) for A = LoRA_k; ``base`` None gives the increment."""
        kind, k = plan.A
        a = _lead(self._stored("glora_Ad"), k, 1) @ _lead(self._stored("glora_Au"), k, 0)  # (out, in)
        w0 = self.weight
        w = w0 * a if base is None else torch.addcmul(base, w0, a)
        kind, k = plan.B
        if kind == "lora":
            return torch.addmm(w, _lead(self._stored("glora_Bd"), k, 1), _lead(self._stored("glora_Bu"), k, 0))
        b = _factor(plan.B, self._stored("glora_Bd"), None)
        return w if b is None else w + b

    def _bias_increment(self, plan: Plan) -> torch.Tensor | None:
        """``b0 ⊙ D + E + W0 · C`` (out,), or None when the choice adds nothing to the bias."""
        inc = None
        d = _vector(plan.D, self._stored("glora_D"))
        if d is not None and self.bias is not None:  # without a bias, D has nothing to scale
            inc = self.bias * d
        e = _vector(plan.E, self._stored("glora_E"))
        if e is not None:
            inc = _sum(inc, e.expand(self.out_features))
        c = _factor(plan.C, self._stored("glora_Cd"), self._stored("glora_Cu"))
        if c is not None:
            inc = _sum(inc, (self.weight @ c).squeeze(1))  # (out,in)@(in,1) -> (out,)
        return inc

    def merged_weight_bias(self, choice: Mapping[str, str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W', b')`` for a choice, computed from W0/b0; ``none`` supports cost nothing."""
        opts = plan_of(choice, self.rank)
        if self._views and opts is not self._fixed_plan:  # the views hold only the fixed choice's entries
            raise ValueError(f"this layer trains the entries of {self.choice} only; got {dict(choice)}")
        w0, b0 = self.weight, self.bias
        weight = w0
        a = _factor(opts.A, self._stored("glora_Ad"), self._stored("glora_Au"))
        if a is not None:
            weight = weight + w0 * a  # a: (out,in), (out,1) or scalar
        b = _factor(opts.B, self._stored("glora_Bd"), self._stored("glora_Bu"))
        if b is not None:
            weight = weight + b
        bias = b0
        d = _vector(opts.D, self._stored("glora_D"))
        if d is not None and b0 is not None:  # without a bias, D has nothing to scale
            bias = bias + b0 * d
        e = _vector(opts.E, self._stored("glora_E"))
        if e is not None:
            bias = e.expand(self.out_features) if bias is None else bias + e
        c = _factor(opts.C, self._stored("glora_Cd"), self._stored("glora_Cu"))
        if c is not None:
            wc = (w0 @ c).squeeze(1)  # (out,in)@(in,1) -> (out,)
            bias = wc if bias is None else bias + wc
        return weight, bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, choice={self.choice}")


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a + b`` where None means zero (no tensor op when one side is absent)."""
    if a is None:
        return b
    return a if b is None else a + b


def _lead(factor: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The leading k rows (dim 0) or columns (dim 1) of a factor; itself when k is the rank."""
    return factor if factor.shape[dim] == k else factor.narrow(dim, 0, k)


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


def read_entries(choice: Mapping[str, str], rank: int) -> dict[str, tuple[slice, ...]]:
    """Stored tensor -> the leading block a choice reads (its size is the choice's budget count)."""
    lead, one = slice(None), slice(0, 1)
    read = {}
    for support, names in _STORAGE.items():
        kind, k = parse_option(support, choice[support], rank)
        if kind == "lora":  # down[:, :k] (out or in, k), up[:k] (k, in or 1)
            read[names[0]], read[names[1]] = (lead, slice(0, k)), (slice(0, k),)
        elif kind == "vector":  # down[:, 0] (A, B, C); D, E whole
            read[names[0]] = (lead, one) if len(names) == 2 else (lead,)
        elif kind == "constant":  # down[0, 0]; D[0], E[0]
            read[names[0]] = (one, one) if len(names) == 2 else (one,)
    return read


def used_tensor_names(choice: Mapping[str, str], rank: int) -> set[str]:
    """The stored tensors a choice reads: both factors for LoRA_k, the down factor otherwise."""
    used = set()
    for support, names in _STORAGE.items():
        kind, _ = parse_option(support, choice[support], rank)
        if kind != "none":
            used.update(names if kind == "lora" else names[:1])
    return used


def is_trainable_name(name: str, heads: Sequence[str] = ("head",)) -> bool:
    """The one rule for what trains and is saved: ``glora_*`` tensors and the task heads' tensors
    (``heads``: module names; ``glora.head_names`` finds a timm model's, e.g. ``head`` and
    ``head_dist`` of a distilled DeiT)."""
    return name.rsplit(".", 1)[-1].startswith("glora_") or any(name.startswith(f"{h}.") for h in heads)


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
