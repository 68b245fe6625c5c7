"""Checking that targeted linears are really called, before GLoRA goes into them.

Some models read a linear's ``.weight`` instead of calling the layer: timm's BEiT and EVA build
``qkv`` with a separate q/v bias and run ``F.linear(x, self.qkv.weight, qkv_bias)``, and
``nn.MultiheadAttention`` does the same with ``out_proj``. GLoRA injected there would train and
merge but never change an output. One forward pass with hooks finds such layers.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from glora.errors import ConfigError, TargetError
from glora.inject import DEFAULT_TARGETS, _target_names


def forward_once(model: nn.Module, *inputs: Any, **kwargs: Any) -> None:
    """Run ``model(*inputs, **kwargs)`` once, in eval mode and without gradients.

    A model that rejects the input (a ViT built for another image size asserts on it) is a
    ``ConfigError`` naming the input's shape, so a wrong ``--input-size`` fails in seconds.
    """
    training = model.training
    try:  # eval mode: no dropout or drop-path, so no draw from torch's global RNG
        with torch.no_grad():
            model.eval()(*inputs, **kwargs)
    except (AssertionError, RuntimeError, ValueError) as err:
        shape = next((tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)), None)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the model does not accept an input of shape {shape}: {detail}; check "
                          "--input-size (and img_size in model_kwargs)") from None
    finally:
        model.train(training)


def check_targets_called(model: nn.Module, targets: str | None, *inputs: Any, **kwargs: Any) -> list[str]:
    """Run ``model(*inputs, **kwargs)`` once and refuse targets the forward never calls.

    Call it on the model before ``inject_glora``; returns the matched names (as injection will).
    Raises ``TargetError`` (a ``ValueError``) (one line, naming the first such layer) otherwise.
    """
    targets = targets or DEFAULT_TARGETS
    names = _target_names(model, targets)
    called: set[str] = set()
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: called.add(name)) for name in names]
    try:
        forward_once(model, *inputs, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    silent = [name for name in names if name not in called]
    if silent:
        more = f" and {len(silent) - 1} more" if len(silent) > 1 else ""
        raise TargetError(f"{silent[0]}{more}: matched by targets {targets!r} but never called in a "
                         "forward pass (the model reads its weight directly, as timm's BEiT and EVA do "
                         "for a qkv with q/v bias), so GLoRA there would change nothing; leave it out "
                         "of the targets (or build such a model with qkv_bias=False)")
    return names
