"""A merged GLoRA model written as a plain timm folder (``config.json`` + ``model.safetensors``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from timm.models import save_for_hf
from torch import nn

from glora.export.timm_bias import fit_gained_biases
from glora.inject import glora_layers
from glora.io.files import atomic_folder

TAG = "glora"  # pretrained_cfg.tag of an exported folder: GLoRA-tuned weights, not timm's default ones


def export_timm_folder(model: nn.Module, folder: str | os.PathLike, input_size: int,
                       mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic") -> Path:
    """Save a merged (plain timm) model as ``config.json`` + ``model.safetensors``.

    The folder loads with ``timm.create_model('local-dir:<folder>', pretrained=True)`` and no
    code from this project; its config records the preprocessing the model was tuned with. A layer
    without bias that gained one in the merge sets timm's flag for it (``glora.export.timm_bias``).
    Written to a temporary folder first, then renamed into place; an existing ``folder`` is
    replaced only if it is a previous export (it holds ``config.json``). Its ``pretrained_cfg.tag``
    is ``glora``: timm's default tag of the architecture names weights that these are not.
    """
    if glora_layers(model):
        raise ValueError("export needs a merged model; call glora.merge_glora(model) first")
    model_args = fit_gained_biases(model)  # refuses before anything is written
    folder = Path(folder)
    data_config = {"input_size": (3, input_size, input_size), "interpolation": interpolation,
                   "mean": tuple(mean), "std": tuple(std), "crop_pct": 1.0}
    with atomic_folder(folder, replaces="config.json") as tmp:
        save_for_hf(model, str(tmp), safe_serialization=True, data_config=data_config,
                    model_args=model_args or None)
        config = json.loads((tmp / "config.json").read_text())
        config["pretrained_cfg"]["tag"] = TAG
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return folder
