"""A searched GLoRA subnet as Hugging Face PEFT GLoRA adapters (needs the ``peft`` extra).

``export_peft(model, folder)`` works on any model with GLoRA layers and a fixed subnet (a timm ViT,
a Hugging Face LLM, ...); ``glora.export.peft_map`` states the exact mapping. The folder is PEFT's
own ``save_pretrained`` layout (adapter ``default`` at the top, the others in sub-folders) plus
``glora_adapters.json`` naming them and the base model, and a ``README.md`` with the exact plain
PEFT calls that load them (``load_peft(base_model, folder)`` makes the same calls). With
``single_adapter=True`` the folder holds one adapter that ``PeftModel.from_pretrained(base, folder)``
alone loads, every layer widened to the widest configuration any layer needs; the README and the
manifest state how many more numbers that stores.

An existing folder is never replaced by accident: it is refused unless ``overwrite=True``, and
then only if it is a previous export (it holds ``glora_adapters.json``) and holds none of the
``inputs`` (the checkpoint being exported, ...).
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from glora.errors import OutputError
from glora.export.peft_map import (AdapterPlan, encode_layer, plan_adapters, plan_single_adapter,
                                   stored_numbers)
from glora.inject import count_params, current_subnet, glora_layers, head_names, set_subnet
from glora.io.files import atomic_folder, file_kind
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
    """The task heads that train with the subnet (``glora.head_names``), as PEFT's modules_to_save."""
    heads = head_names(model)
    return sorted({n.split(".")[0] for n, _ in model.named_parameters()
                   if is_trainable_name(n, heads) and ".glora_" not in n})


def to_peft_model(model: nn.Module, modules_to_save: Sequence[str] | None = None, single_adapter: bool = False,
                  base_model_name: str | None = None):
    """A ``PeftModel`` over a plain copy of ``model`` whose active adapters compute its subnet.

    Returns ``(peft_model, plans)``; ``modules_to_save`` defaults to :func:`trained_modules`;
    ``single_adapter``: one adapter (see :func:`~glora.export.peft_map.plan_single_adapter`);
    ``base_model_name`` becomes the adapters' ``base_model_name_or_path``.
    """
    from peft import GloraConfig, get_peft_model

    layers = glora_layers(model)
    subnet = current_subnet(model)
    plans = (plan_single_adapter if single_adapter else plan_adapters)(layers, subnet)
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
        if base_model_name is not None:  # get_peft_model sets it from a Hugging Face model's name only
            peft_model.peft_config[plan.name].base_model_name_or_path = base_model_name
    peft_model.base_model.set_adapter([plan.name for plan in plans])
    choices = {name: choice for (name, _), choice in zip(layers, subnet)}
    source = dict(layers)
    for plan in plans:
        for name in plan.layers:
            encoded = encode_layer(source[name], choices[name], plan)
            _write(peft_model.base_model.model.get_submodule(name), plan.name, encoded, name)
    return peft_model.eval(), plans


def check_export_folder(folder: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = (),
                        flags: tuple[str, str] = ("folder", "overwrite=True")) -> None:
    """Refuse (``OutputError``, one line naming it) an export folder that exists, unless
    ``overwrite``; with it, one that is not a previous PEFT export or that holds one of ``inputs``.
    ``flags``: how the folder and the overwrite switch are named to the user."""
    where, switch = flags
    folder = Path(folder)
    kind = file_kind(folder)
    if kind is None:
        return
    if not overwrite:
        raise OutputError(f"{where} {folder} exists; give {switch} to replace a previous PEFT export "
                          "there, or choose a new folder")
    real = Path(os.path.realpath(folder))
    for given in inputs:
        path = Path(os.path.realpath(given))
        if path == real or real in path.parents:
            raise OutputError(f"{where} {folder} holds {given}, an input of this export; refusing to "
                              "replace it (choose a new folder)")
    if kind != "a folder" or file_kind(folder / MANIFEST) != "a regular file":
        raise OutputError(f"{where} {folder} is not a previous PEFT export (it is {kind} without "
                          f"{MANIFEST}); refusing to replace it (choose a new folder)")


def export_peft(model: nn.Module, folder: str | os.PathLike, modules_to_save: Sequence[str] | None = None,
                *, single_adapter: bool = False, base_model: Mapping[str, Any] | None = None,
                overwrite: bool = False) -> list[AdapterPlan]:
    """Write the subnet of ``model`` as PEFT GLoRA adapters into ``folder``; return the plans.

    ``base_model``: how the base model is built (``timm_model``, ``model_args``, ``num_classes``,
    ``pretrained``, ``pretrained_sha256``), recorded in the manifest, the README and the adapters'
    ``base_model_name_or_path``. Refuses (``PeftExportError``, one line naming the layer) a subnet
    PEFT cannot express, and an existing folder (see :func:`check_export_folder`), before anything
    is written. Written to a temporary folder first, then renamed into place.
    """
    check_export_folder(folder, overwrite)
    base_model = dict(base_model or {})
    peft_model, plans = to_peft_model(model, modules_to_save, single_adapter, base_model.get("timm_model"))
    layers, subnet = glora_layers(model), current_subnet(model)
    size = {"stored": stored_numbers(layers, subnet, plans),
            "per_configuration": stored_numbers(layers, subnet, plan_adapters(layers, subnet)),
            "subnet_params": count_params(model, subnet)}
    manifest = {"format": FORMAT, "adapters": [plan.name for plan in plans], "single_adapter": single_adapter,
                "base_model": base_model, "stored_numbers": size,
                "plans": [{"name": p.name, **p.config_kwargs(), "layers": p.layers} for p in plans],
                "choices": {name: choice for (name, _), choice in zip(layers, subnet)}}
    with atomic_folder(folder, replaces=MANIFEST) as tmp:
        # save_embedding_layers=False: no embedding is targeted, and "auto" would look the base
        # model's name up on the Hugging Face Hub.
        peft_model.save_pretrained(str(tmp), selected_adapters=[plan.name for plan in plans],
                                   save_embedding_layers=False)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / "README.md").write_text(readme(Path(folder), manifest))
    return plans


def size_statement(size: Mapping[str, int], single_adapter: bool) -> str:
    """One line on what the adapters store, against the subnet's own parameter count."""
    line = (f"the adapters store {size['stored']:,} numbers for the GLoRA layers; the subnet counts "
            f"{size['subnet_params']:,} parameters")
    if single_adapter:
        extra = size["stored"] / size["per_configuration"] - 1 if size["per_configuration"] else 0.0
        line += (f", and one adapter per configuration would store {size['per_configuration']:,} "
                 f"(the single adapter costs {extra:+.1%})")
    return line


def readme(folder: Path, manifest: Mapping[str, Any]) -> str:
    """The folder's README.md: what it holds, the base model and the exact loading calls."""
    base = manifest["base_model"]
    names = manifest["adapters"]
    lines = ["# GLoRA subnet as PEFT GLoRA adapters", "",
             f"{len(manifest['choices'])} GLoRA layers in {len(names)} adapter(s): "
             f"{size_statement(manifest['stored_numbers'], manifest['single_adapter'])}.", ""]
    if base.get("timm_model"):
        weights = (f"with the backbone weights of `{base['pretrained']}` (sha256 `{base.get('pretrained_sha256')}`) "
                   "loaded into it" if base.get("pretrained") else "(its backbone was not loaded from a file)")
        lines += ["## Base model", "",
                  f"`timm.create_model({base['timm_model']!r}, num_classes={base.get('num_classes')}, "
                  f"**{json.dumps(base.get('model_args', {}))})` {weights}; the classifier head comes "
                  "with the adapter.", ""]
    lines += ["## Load with plain PEFT", "", "```python"]
    if manifest["single_adapter"]:
        lines += ["from peft import PeftModel", "",
                  f"folder = {str(folder.resolve())!r}  # this folder",
                  "model = PeftModel.from_pretrained(base, folder).eval()  # the whole searched subnet"]
    else:
        lines += ["import json", "", "from peft import PeftModel", "",
                  f"folder = {str(folder.resolve())!r}  # this folder",
                  f"names = json.load(open(f\"{{folder}}/{MANIFEST}\"))[\"adapters\"]  # {names}",
                  "model = PeftModel.from_pretrained(base, folder)  # loads the adapter \"default\" only",
                  "for name in names[1:]:  # the others, each in its sub-folder",
                  "    model.load_adapter(f\"{folder}/{name}\", adapter_name=name)",
                  "model.base_model.set_adapter(names)  # all active together: they are the searched subnet",
                  "model = model.eval()"]
    lines += ["```", ""]
    if not manifest["single_adapter"] and len(names) > 1:
        lines += ["`PeftModel.from_pretrained(base, folder)` alone would load one adapter of "
                  f"{len(names)}: a different model. Export with `--single-adapter` for one adapter "
                  "that loads in that one call.", ""]
    return "\n".join(lines)


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
