"""A searched GLoRA subnet as Hugging Face PEFT GLoRA adapters (needs the ``peft`` extra).

``export_peft(model, folder)`` works on any model with GLoRA layers and a fixed subnet (a timm ViT,
a Hugging Face LLM, ...); ``glora.export.peft_map`` states the exact mapping. The folder is PEFT's
own ``save_pretrained`` layout (adapter ``default`` at the top, the others in sub-folders) plus
``glora_adapters.json`` naming them; ``load_peft(base_model, folder)`` is the plain PEFT calls
that load them and make them all active.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from glora.export.peft_map import AdapterPlan, encode_layer, plan_adapters
from glora.inject import current_subnet, glora_layers, set_subnet
from glora.io.files import atomic_folder
from glora.layer import is_trainable_name
from glora.merge import merge_glora
from glora.space import SUPPORTS

MANIFEST = "glora_adapters.json"
FORMAT = "glora-peft/1"


def base_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose GLoRA layers are their frozen ``nn.Linear`` again (W0, b0)."""
    plain = copy.deepcopy(model)
    set_subnet(plain, [{s: "none" for s in SUPPORTS} for _ in glora_layers(plain)])
    return merge_glora(plain)


def trained_modules(model: nn.Module) -> list[str]:
    """Top-level modules, other than GLoRA tensors, that train with the subnet (the head)."""
    return sorted({n.split(".")[0] for n, _ in model.named_parameters()
                   if is_trainable_name(n) and ".glora_" not in n})


def to_peft_model(model: nn.Module, modules_to_save: Sequence[str] | None = None):
    """A ``PeftModel`` over a plain copy of ``model`` whose active adapters compute its subnet.

    Returns ``(peft_model, plans)``; ``modules_to_save`` defaults to :func:`trained_modules`.
    """
    from peft import GloraConfig, get_peft_model

    layers = glora_layers(model)
    subnet = current_subnet(model)
    plans = plan_adapters(layers, subnet)
    base = base_copy(model)
    _check_regexes(base, plans)
    save = list(trained_modules(model) if modules_to_save is None else modules_to_save) or None
    peft_model = None
    for i, plan in enumerate(plans):  # the head travels with the first adapter only
        config = GloraConfig(**plan.config_kwargs(), modules_to_save=save if i == 0 else None)
        if peft_model is None:
            peft_model = get_peft_model(base, config, adapter_name=plan.name)
        else:
            peft_model.add_adapter(plan.name, config)
    peft_model.base_model.set_adapter([plan.name for plan in plans])
    choices = {name: choice for (name, _), choice in zip(layers, subnet)}
    source = dict(layers)
    for plan in plans:
        for name in plan.layers:
            encoded = encode_layer(source[name], choices[name], plan)
            _write(peft_model.base_model.model.get_submodule(name), plan.name, encoded, name)
    return peft_model.eval(), plans


def export_peft(model: nn.Module, folder: str | os.PathLike,
                modules_to_save: Sequence[str] | None = None) -> list[AdapterPlan]:
    """Write the subnet of ``model`` as PEFT GLoRA adapters into ``folder``; return the plans.

    Refuses (``PeftExportError``, one line naming the layer) a subnet PEFT cannot express, before
    anything is written. Written to a temporary folder first, then renamed into place.
    """
    peft_model, plans = to_peft_model(model, modules_to_save)
    subnet = current_subnet(model)
    manifest = {"format": FORMAT, "adapters": [plan.name for plan in plans],
                "plans": [{"name": p.name, **p.config_kwargs(), "layers": p.layers} for p in plans],
                "choices": {name: choice for (name, _), choice in zip(glora_layers(model), subnet)}}
    with atomic_folder(folder) as tmp:
        peft_model.save_pretrained(str(tmp), selected_adapters=[plan.name for plan in plans])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return plans


def load_peft(base_model: nn.Module, folder: str | os.PathLike):
    """Load the adapters of ``folder`` onto ``base_model`` with plain PEFT and activate them all."""
    from peft import PeftModel

    folder = Path(folder)
    names = json.loads((folder / MANIFEST).read_text())["adapters"]
    peft_model = PeftModel.from_pretrained(base_model, str(folder))  # adapter "default"
    for name in names[1:]:
        peft_model.load_adapter(str(folder / name), adapter_name=name)
    peft_model.base_model.set_adapter(names)
    return peft_model.eval()


def _check_regexes(base: nn.Module, plans: list[AdapterPlan]) -> None:
    # Each adapter's regex must fully match exactly its layers among all module names.
    names = [name for name, _ in base.named_modules()]
    for plan in plans:
        pattern = re.compile(plan.config_kwargs()["target_modules"])
        matched = [name for name in names if pattern.fullmatch(name)]
        if matched != plan.layers:
            raise RuntimeError(f"adapter {plan.name}: its target regex matches {matched[:3]}…, "
                               f"not exactly its layers {plan.layers[:3]}…")


def _write(peft_layer: nn.Module, adapter: str, encoded: dict, name: str) -> None:
    """Copy one layer's encoded tensors into its PEFT paths, checking every shape."""
    for support, tensors in encoded.items():
        path = getattr(peft_layer, f"glora_{support}")[adapter]
        params = dict(path.named_parameters())
        if set(params) != set(tensors):
            raise RuntimeError(f"{name}: PEFT built {sorted(params)} for {support}, expected {sorted(tensors)}")
        for pname, tensor in tensors.items():
            if params[pname].shape != tensor.shape:
                raise RuntimeError(f"{name}: {support}.{pname} is {tuple(params[pname].shape)} in PEFT, "
                                   f"{tuple(tensor.shape)} here")
            with torch.no_grad():
                params[pname].copy_(tensor)
