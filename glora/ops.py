"""The frozen GEMM shared by every GLoRA choice but A = LoRA_k, with a backward written out.

``frozen_linear(x, W0, b, s, d, u) = (x W0ᵀ) ⊙ s + b + (x dᵀ) u``: x (T, in), W0 (out, in)
frozen, b (out,), s (out,) the scale 1 + A of A = vector/constant, and a low-rank term with
d (k, in), u (k, out): B = LoRA_k is d = Bu, u = Bdᵀ; B = vector/constant is rank 1, d = 1ᵀ
(row sums of x) and u = bᵀ. b, s, d, u are optional. Autograd's own formulas for the same ops
spend extra (T, out) or (T, in) passes (addcmul's backward forms h·1, mul's forms gy·s before
the GEMM, the low-rank dx is formed apart and then added) and pick slow GEMM layouts for
skinny factors on the CPU; here:

    dx = gy (W0 ⊙ s 1ᵀ + uᵀ d)    the scale and the low-rank part applied to the (out, in)
                                  weight, not as passes over gy (T, out) or dx (T, in); under
                                  autocast dx = gy (W0 ⊙ s 1ᵀ) + dt d, so that B is not rounded
                                  to a step of |W0| by the weight's cast
    ds = Σ_t gy ⊙ h               h = x W0ᵀ, kept from the forward
    db = 1ᵀ gy,  dt = (u gyᵀ)ᵀ,  du = tᵀ gy,  dd = dtᵀ x     with t = x dᵀ (T, k); dt only when
                                  dd or the autocast dx needs it (B vector/constant: never in fp32)

In fp32 without a scale the low-rank term is folded into the GEMM's weight instead: y = x (W0 +
uᵀ d)ᵀ + b and dx = gy (W0 + uᵀ d), (out, in) work in place of two (T, out)/(T, in) passes.

Under autocast the forward's GEMMs run in the autocast dtype (x arrives cast); the backward,
which autocast does not cover, casts the small operands to the gradient's dtype and reduces
ds and db in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, down, up):
        folded = scale is None and down is not None and not torch.is_autocast_enabled(x.device.type)
        if folded:
            # fp32 with no scale: B (out, in) = uᵀ d joins the frozen weight, so one GEMM gives
            # y and the backward's dx GEMM includes B; no (T, out) or (T, in) pass for it. Not
            # under autocast, where the cast of W0 + B would round B to a step of |W0|.
            h = None
            y = F.linear(x, torch.addmm(weight, up.t(), down), bias)
        elif scale is None:
            h = None
            y = F.linear(x, weight, bias)  # (T, out), bias fused
        else:
            h = F.linear(x, weight)  # (T, out)
            # In fp32, one pass; under autocast h (1 + a) + b is formed in fp32 (scale and bias
            # are fp32), so a small a is not rounded away, and rounded once by the cast.
            y = h * scale if bias is None else torch.addcmul(bias, h, scale)
            y = y.to(h.dtype)
        t = None
        if down is not None:
            t = F.linear(x, _as(down, x.dtype))  # (T, k), kept for du = tᵀ gy
            if not folded:
                y.addmm_(t, _as(up, y.dtype))  # (T, k) @ (k, out), in place
        keep_x = down is not None and ctx.needs_input_grad[4]  # only dd = dtᵀ x reads x
        ctx.save_for_backward(x if keep_x else None, weight, scale, h, down, t, up)
        ctx.bias_dtype, ctx.folded = None if bias is None else bias.dtype, folded
        ctx.lowp = torch.is_autocast_enabled(x.device.type)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, scale, h, down, t, up = ctx.saved_tensors
        need_x, _, need_b, need_s, need_d, need_u = ctx.needs_input_grad
        dx = db = ds = dd = du = None
        fold_dx = down is not None and not ctx.lowp  # B joins the dx weight (fp32 only)
        dt = None
        if down is not None and (need_d or (need_x and not fold_dx)):
            dt = (_as(up, gy.dtype) @ gy.t()).t()  # (T, k): the fast layout
        if need_x:
            if ctx.folded:
                dx = gy @ torch.addmm(weight, up.t(), down)  # (W0 + B), re-formed: (out, in)
            else:
                w = weight if scale is None else weight * scale.unsqueeze(1)  # (out, in)
                if fold_dx:  # W0 ⊙ s 1ᵀ + uᵀ d: (out, in) work instead of a (T, in) pass
                    w = torch.addmm(w, up.t(), down) if scale is None else w.addmm_(up.t(), down)
                dx = gy @ _as(w, gy.dtype)
                if dt is not None and not fold_dx:
                    dx.addmm_(dt, _as(down, dx.dtype))
        if need_s:  # with db in the same pass over gy when both are needed
            ds, db = _column_dots(gy, h, need_b)
            ds = _as(ds, scale.dtype)
        if need_b:
            db = _as(_column_sums(gy) if db is None else db, ctx.bias_dtype)
        if need_d:
            dd = _as(dt.t() @ x, down.dtype)  # (k, in)
        if need_u:
            du = _as(t.t() @ gy, up.dtype)  # (k, out)
        return dx, None, db, ds, dd, du


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # .to() of a tensor already in dtype costs a dispatcher call; these run per layer per step
    return t if t.dtype == dtype else t.to(dtype)


def _column_dots(gy: torch.Tensor, h: torch.Tensor, sums: bool = False,
                 rows: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Σ_t gy[t] ⊙ h[t], Σ_t gy[t] if ``sums`` else None), each (out,), summed in fp32.

    On the CPU in blocks of rows: a whole (T, out) product would be a fresh allocation, which
    the CPU allocator page-faults and zeroes anew each step (about twice the time of the
    product); a block stays in cache, so the column sums read it from there, not from memory.
    Elsewhere one product and one reduction each.
    """
    if gy.device.type != "cpu":
        return (gy * h).sum(0, dtype=torch.float32), _column_sums(gy) if sums else None
    total = torch.zeros(gy.shape[1], dtype=torch.float32, device=gy.device)
    column = torch.zeros_like(total) if sums else None
    for g, v in zip(gy.split(rows), h.split(rows)):
        total += (g * v).sum(0, dtype=torch.float32)
        if sums:
            column += g.sum(0, dtype=torch.float32)
    return total, column


def _column_sums(gy: torch.Tensor) -> torch.Tensor:
    """Σ_t gy[t] (out,): a GEMV in fp32 (twice as fast as sum(0) on the CPU), else fp32 sums."""
    if gy.dtype == torch.float32:
        return gy.new_ones(gy.shape[0]) @ gy
    return gy.sum(0, dtype=torch.float32)


class _DenseLinear(torch.autograd.Function):
    # F.linear's own backward forms the weight's gradient as (xᵀ gy)ᵀ, a transposed (out, in)
    # view that every op after it (W0 ⊙ dW' for A, the factors' products) reads strided or copies.
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = gy @ weight if need_x else None  # (T, in)
        dw = gy.t() @ x if need_w else None  # (out, in), contiguous
        db = _column_sums(gy) if need_b else None
        return dx, dw, db


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` (T, out) for 2-D x, fp32, W a computed weight (A = LoRA_k's W'): the same
    values and gradients as ``F.linear``, with W's gradient formed in W's own layout."""
    return _DenseLinear.apply(x, weight, bias)


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  scale: torch.Tensor | None = None, down: torch.Tensor | None = None,
                  up: torch.Tensor | None = None) -> torch.Tensor:
    """``(x W0ᵀ) ⊙ scale + bias + (x downᵀ) up`` (T, out) for 2-D x; ``weight`` gets no gradient."""
    return _FrozenLinear.apply(x, weight, bias, scale, down, up)
