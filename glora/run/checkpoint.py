"""Checkpoints and subnet files: plain types, atomic writes, clear refusals."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import timm
import torch

from glora.errors import CheckpointError, ConfigError
from glora.io.files import atomic_write
from glora.merge import convert_original_state_dict
from glora.run.yaml_files import AliasBombError, load_yaml
from glora.space import PRESETS, preset_subnet, validate_choice

FORMAT_VERSION = 1
# What must agree between a checkpoint and the flags that try to use it.
COMPAT_KEYS = ("model", "model_kwargs", "rank", "targets", "input_size", "protocol", "dataset", "mode", "init")


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint and result."""
    return {"torch": str(torch.__version__), "timm": str(timm.__version__)}


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``glora.io.files.atomic_write``: the previous file stays whole on any
    failure, and a full disk or read-only folder is an ``OutputError``."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A content hash (sha256) of a state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the bytes, not a copy
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt, malformed or non-finite
    one is a clear error.

    ``mmap=True`` maps the tensors instead of reading them (cheap when only metadata is needed);
    the tensors' values are then not checked.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, pickle error, ...: all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: {load_failure(err)}") from None
    if _is_original_format(ckpt):
        ckpt = _from_original(ckpt, path)
    elif not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a GLoRA checkpoint (no 'state_dict')")
    else:
        _check_structure(ckpt, path)
    if not mmap:
        _check_finite(ckpt["state_dict"], path)
    return ckpt


def load_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line. A refused pickle (a file holding
    Python objects, which could run code when loaded) is named as such; torch's own message
    suggests ``weights_only=False``, advice this project never passes on."""
    text = str(err)
    if "Weights only load failed" in text:
        found = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        return ("refused: it holds Python objects beyond tensors and plain values, which could run code "
                f"when loaded{f' ({found})' if found else ''}; no file written by this project does")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


# What every checkpoint of this project holds, and of which type; GLoRA modes also need the rest.
_FIELDS = {"mode": str, "epoch": int, "config": dict}
_GLORA_FIELDS = {"model": str, "model_kwargs": dict, "rank": int, "num_classes": int}
MODES = ("supernet", "subnet", "full")


def _check_structure(ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint that lacks a field the CLIs read, before anything reads it."""
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no trained tensors (its state_dict is empty or not a "
                              "mapping of tensors)")
    fields = dict(_FIELDS, **(_GLORA_FIELDS if ckpt.get("mode") in ("supernet", "subnet") else {}))
    wrong = [f"{key} ({type(ckpt.get(key)).__name__}, expected {kind.__name__})"
             for key, kind in fields.items() if not isinstance(ckpt.get(key), kind)
             or (kind is int and isinstance(ckpt.get(key), bool))]
    if ckpt.get("mode") not in MODES:
        wrong.insert(0, f"mode {ckpt.get('mode')!r} (expected one of {', '.join(MODES)})")
    if ckpt.get("mode") == "subnet" and not isinstance(ckpt.get("subnet"), list):
        wrong.append(f"subnet ({type(ckpt.get('subnet')).__name__}, expected list)")
    planned = ckpt["config"].get("epochs") if isinstance(ckpt.get("config"), dict) else None
    epoch = ckpt.get("epoch")
    if isinstance(epoch, int) and (epoch < 0 or (isinstance(planned, int) and epoch > planned)):
        wrong.append(f"epoch {epoch} (expected 0 to its --epochs {planned})")
    integral = [k for k, v in state.items() if not v.is_floating_point()]
    if integral:
        wrong.append(f"{integral[0]} holds {state[integral[0]].dtype} values (trained tensors are floating point)")
    if wrong:
        raise CheckpointError(f"{path} is not a complete checkpoint of this project: {'; '.join(wrong[:3])}")


def _check_finite(state: dict, path: Path) -> None:
    """Refuse NaN or inf in trained tensors at load, not after a whole search."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), first "
                              f"{bad[0]}; it cannot be used (a run that diverged, or a damaged file)")


def _is_original_format(ckpt: Any) -> bool:
    # The original code saved a flat dict of tensors with keys like blocks.0.attn.qkv.Ad.
    return (isinstance(ckpt, dict) and bool(ckpt) and "state_dict" not in ckpt
            and all(isinstance(v, torch.Tensor) for v in ckpt.values())
            and any(k.endswith(".Ad") for k in ckpt))


def _from_original(ckpt: dict, path: Path) -> dict:
    """Wrap an original-code checkpoint: renamed keys, rank from the tensor shapes."""
    state = convert_original_state_dict(ckpt)
    down = {k: tuple(v.shape) for k, v in state.items() if k.endswith(".glora_Ad")}
    ranks = {shape[1] for shape in down.values() if len(shape) == 2}
    if len(ranks) != 1 or any(len(shape) != 2 for shape in down.values()):
        key = next((k for k, s in down.items() if len(s) != 2), next(iter(down)))
        raise CheckpointError(f"{path} looks like a checkpoint of the original code but is malformed: "
                              f"{key.replace('.glora_', '.')} has shape {down[key]} (expected (out, rank), "
                              f"one rank for all layers; ranks seen: {sorted(ranks)})")
    rank = ranks.pop()
    print(f"{path}: a checkpoint of the original code (rank {rank}); model, protocol and dataset "
          "are not recorded in it, so the flags are trusted")
    return {"format_version": 0, "mode": "supernet", "state_dict": state, "rank": rank,
            "epoch": None, "config": {}, "subnet": None, "original_format": True}


# The model a checkpoint was trained with, kept once at its top level (not in its ``config``).
MODEL_KEYS = ("model", "model_kwargs", "rank", "targets", "input_size", "protocol")


def recorded_settings(ckpt: Mapping) -> dict:
    """Every setting a checkpoint records: its ``config`` with the model keys from the top level."""
    return {**ckpt.get("config", {}), **{key: ckpt[key] for key in MODEL_KEYS if key in ckpt}}


def check_compatible(ckpt: Mapping, expected: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose model, kwargs, rank, protocol or dataset differ from the flags.

    Only recorded fields are compared (the original code's checkpoints record just the rank).
    """
    diffs = [f"{key}: checkpoint has {ckpt.get(key)!r}, flags give {expected[key]!r}"
             for key in COMPAT_KEYS if key in expected and key in ckpt and ckpt[key] != expected[key]]
    if diffs:
        raise CheckpointError(f"{path} does not match this run: " + "; ".join(diffs))


def load_subnet(spec: str, layer_names: list[str], rank: int) -> list[dict]:
    """A fixed subnet from a preset name or a ``subnet.yaml`` (layer name -> choice)."""
    if spec in PRESETS:
        return preset_subnet(spec, len(layer_names), rank)
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"--subnet {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        data = load_yaml(path)
        layers = data["layers"]
        file_rank = int(data.get("rank", rank))
    except AliasBombError as err:
        raise CheckpointError(str(err)) from None
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError):  # not YAML, or not a subnet
        raise CheckpointError(f"{path} is not a subnet file (expected 'rank' and 'layers': name -> choice)") from None
    if file_rank > rank:
        raise CheckpointError(f"{path} was searched at rank {file_rank}, but this run has rank {rank}")
    if not isinstance(layers, dict) or set(layers) != set(layer_names):
        raise CheckpointError(f"{path} names layers that do not match the model's "
                              f"{len(layer_names)} GLoRA layers ({layer_names[0]} …)")
    try:
        return [validate_choice(layers[name], rank) for name in layer_names]
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def subnet_origin(spec: str) -> dict:
    """Where a fixed subnet comes from: ``method`` (the preset's name, the ``method`` a search wrote
    into its ``subnet.yaml``, or the file's stem) and the search's ``param_limit_M`` if recorded."""
    if spec in PRESETS:
        return {"method": spec, "param_limit_M": None}
    try:
        data = load_yaml(spec)
    except ConfigError:
        data = None
    data = data if isinstance(data, dict) else {}
    method = data.get("method")
    limit = data.get("param_limit_M")
    return {"method": method if isinstance(method, str) and method else Path(spec).stem,
            "param_limit_M": float(limit) if isinstance(limit, (int, float)) else None}


def subnet_document(layer_names: list[str], subnet: list[dict], rank: int, params: int,
                    **extra: Any) -> dict:
    """The ``subnet.yaml`` content: rank, params, then layer name -> choice."""
    return {"rank": rank, "params": params, **extra,
            "layers": {name: dict(choice) for name, choice in zip(layer_names, subnet)}}
