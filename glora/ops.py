"""The frozen GEMM shared by every GLoRA choice but A = LoRA_k, with a backward written out.

``frozen_linear(x, W0, b, s, t, u) = (x W0ᵀ) ⊙ s + b + t u``: x (T, in), W0 (out, in) frozen,
b (out,), s (out,) the scale 1 + A of A = vector/constant, t (T, k) and u (k, out) a low-rank
(B = LoRA_k: t = x Buᵀ, u = Bdᵀ) or rank-1 (B = vector/constant: t = Σ_j x_j, u = bᵀ) term;
b, s, t, u are optional. Autograd's own formulas for the same ops spend extra (T, out) passes
(addcmul's backward forms h·1, mul's forms gy·s before the GEMM) and pick slow GEMM layouts for
skinny factors on the CPU; here every gradient is one GEMM, GEMV or fused reduction:

    dx = gy (W0 ⊙ s 1ᵀ)      the scale applied to the (out, in) weight, not to gy (T, out)
    ds = Σ_t gy ⊙ h          h = x W0ᵀ, kept from the forward
    db = 1ᵀ gy,  dt = (u gyᵀ)ᵀ,  du = tᵀ gy

Under autocast the forward's GEMMs run in the autocast dtype (x arrives cast); the backward,
which autocast does not cover, casts the small operands to the gradient's dtype and reduces
ds and db in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, t, up):
        if scale is None:
            h = None
            y = F.linear(x, weight, bias)  # (T, out), bias fused
        else:
            h = F.linear(x, weight)  # (T, out)
            # In fp32, one pass; under autocast h (1 + a) + b is formed in fp32 (scale and bias
            # are fp32), so a small a is not rounded away, and rounded once by the cast.
            y = h * scale if bias is None else torch.addcmul(bias, h, scale)
            y = y.to(h.dtype)
        if t is not None:
            y.addmm_(t.to(y.dtype), up.to(y.dtype))  # (T, k) @ (k, out), in place
        ctx.save_for_backward(weight, scale, h, t, up)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        weight, scale, h, t, up = ctx.saved_tensors
        need_x, _, need_b, need_s, need_t, need_u = ctx.needs_input_grad
        dx = db = ds = dt = du = None
        if need_x:
            w = weight if scale is None else weight * scale.unsqueeze(1)  # (out, in)
            dx = gy @ w.to(gy.dtype)
        if need_b:
            db = _column_sums(gy).to(ctx.bias_dtype)
        if need_s:  # fp32: one fused multiply-reduce; bf16: products summed in fp32
            ds = torch.linalg.vecdot(gy, h, dim=0) if gy.dtype == torch.float32 else \
                (gy * h).sum(0, dtype=torch.float32)
            ds = ds.to(scale.dtype)
        if need_t:
            dt = (up.to(gy.dtype) @ gy.t()).t()  # (T, k) from (k, out) @ (out, T): the fast layout
        if need_u:
            du = (t.t().to(gy.dtype) @ gy).to(up.dtype)  # (k, out)
        return dx, None, db, ds, dt, du


def _column_sums(gy: torch.Tensor) -> torch.Tensor:
    """Σ_t gy[t] (out,): a GEMV in fp32 (twice as fast as sum(0) on the CPU), else fp32 sums."""
    if gy.dtype == torch.float32:
        return gy.new_ones(gy.shape[0]) @ gy
    return gy.sum(0, dtype=torch.float32)


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  scale: torch.Tensor | None = None, t: torch.Tensor | None = None,
                  up: torch.Tensor | None = None) -> torch.Tensor:
    """``(x W0ᵀ) ⊙ scale + bias + t up`` (T, out) for 2-D x; ``weight`` gets no gradient."""
    return _FrozenLinear.apply(x, weight, bias, scale, t, up)
