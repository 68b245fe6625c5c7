"""Building the timm ViT and loading backbone weights from local files (never downloads)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from glora.errors import ConfigError, WeightsError
from glora.inject import head_names
from glora.run.checkpoint import load_failure, state_digest

WEIGHTS_HELP = ("download the original ImageNet-21k ViT-B/16 weights "
                "(https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz) into the "
                "repository root (see data/README.md), or pass --pretrained none")


def build_model(name: str, num_classes: int, pretrained: str | None = None,
                model_kwargs: dict[str, Any] | None = None, drop_path_rate: float = 0.1,
                init_seed: int | None = None) -> nn.Module:
    """A timm model with local backbone weights and a freshly initialised head.

    ``pretrained`` is a ``.npz`` (Google layout, through timm's loader), ``.pth``/``.pt``/
    ``.safetensors`` (a timm state dict), or ``None``/``"none"`` for random init. ``init_seed``
    seeds torch's generator first, so a random backbone (and any head the task does not train)
    is rebuilt bit for bit by a later step (``frozen_digest`` checks it).
    """
    if init_seed is not None:
        torch.manual_seed(init_seed)
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ConfigError(f"model_kwargs {model_kwargs!r}: must be a mapping of timm.create_model arguments")
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("drop_path_rate", drop_path_rate)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as err:  # timm raises RuntimeError for unknown model names
        raise WeightsError(f"cannot build timm model {name!r}: {err}") from None
    except (TypeError, ValueError, AssertionError) as err:  # an unknown or ill-typed model_kwargs entry
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot build timm model {name!r} with model_kwargs {dict(model_kwargs or {})}: "
                          f"{detail}") from None
    if pretrained and str(pretrained).lower() != "none":
        load_backbone(model, pretrained)
    # As the original: a new head for the task, whatever the checkpoint held.
    model.reset_classifier(num_classes)
    return model


def frozen_digest(model: nn.Module, trained: "set[str] | dict") -> str:
    """The sha256 of every tensor of ``model`` that is not in ``trained`` (what a run keeps frozen
    and does not save: a later step must rebuild exactly these)."""
    return state_digest({k: v for k, v in model.state_dict().items() if k not in trained})


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """Load backbone weights from a local file; the head is never taken from the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pretrained weights not found: {path}; {WEIGHTS_HELP}")
    try:
        if path.suffix == ".npz":
            from timm.models.vision_transformer import _load_weights
            _load_weights(model, str(path))
            return
        state = _read_state_dict(path)
    except WeightsError:
        raise
    except Exception as err:  # corrupt files surface as many different exception types
        raise WeightsError(f"cannot load pretrained weights from {path}: {load_failure(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict of tensors (check the file)")
    heads = head_names(model)  # the task heads are never taken from the file
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{h}.") for h in heads)}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:  # one line, not torch's line per tensor
        first = wrong[0]
        raise WeightsError(f"{path} does not fit the model: {len(wrong)} tensor(s) differ in shape (first: "
                           f"{first} is {tuple(state[first].shape)} in the file, {tuple(own[first].shape)} "
                           "in the model); check --model and model_kwargs")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(k.startswith(f"{h}.") for h in heads)]
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit the model: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]} (check --model and model_kwargs)")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):  # common wrappers
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        return state
    raise WeightsError(f"unsupported weights format {path.suffix!r} for {path} "
                       "(expected .npz, .pth, .pt, .bin or .safetensors)")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast only when asked (``--precision bf16``); ``auto`` and ``fp32`` keep fp32."""
    return torch.bfloat16 if precision == "bf16" else None


def set_matmul_numerics(precision: str, device: torch.device) -> None:
    """For the CLIs (process-wide state): the original's numerics on CUDA under ``auto``.

    The original ran fp32 weights on Ampere GPUs under torch 1.10, whose matmuls and convolutions
    used TF32 by default; torch has since turned TF32 matmuls off, so ``auto`` (and ``bf16``, for
    what autocast leaves in fp32) turns both on again. ``fp32`` turns both off: full fp32 products.
    Nothing to set on the CPU.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
