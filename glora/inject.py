"""Putting GLoRA into a timm ViT and driving it: injection, subnets, trainable set, state."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
from torch import nn

from glora.errors import CheckpointError, TargetError
from glora.layer import ChoiceSampler, GLoRALinear, is_trainable_name, used_tensor_names
from glora.space import choice_params

# Exactly the four block linears of a timm ViT. A bare "proj" would also hit patch_embed.proj
# (a Conv2d), and "every Linear but head" would hit pre-logits or extra heads: both are defects
# of the original targeting.
DEFAULT_TARGETS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"

Subnet = Sequence[Mapping[str, str]] | Mapping[str, Mapping[str, str]]


def inject_glora(model: nn.Module, rank: int, targets: str | None = None) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name fully matches ``targets`` (a regex).

    Returns the replaced names in module order: the spine of subnets and search.
    """
    names = target_names(model, targets or DEFAULT_TARGETS)
    for name in names:
        replace_module(model, name, GLoRALinear.from_linear(model.get_submodule(name), rank))
    return names


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the submodule called ``name`` (a qualified name) is now."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def target_names(model: nn.Module, targets: str) -> list[str]:
    # Refuse rather than skip: a bad regex, no match, or a non-Linear match (a Conv2d, a Linear
    # subclass such as MultiheadAttention's out_proj, a layer already wrapped) is a user error.
    try:
        pattern = re.compile(targets)
    except re.error as err:
        raise TargetError(f"targets {targets!r} is not a valid regular expression: {err}") from None
    matched = [(name, module) for name, module in model.named_modules() if pattern.fullmatch(name)]
    if not matched:
        raise TargetError(f"targets {targets!r} matches no module of {type(model).__name__} "
                         "(it must match whole qualified names, e.g. 'blocks.0.attn.qkv')")
    wrong = [(name, module) for name, module in matched if type(module) is not nn.Linear]
    if wrong:
        name, module = wrong[0]
        if isinstance(module, GLoRALinear):
            raise TargetError(f"{name} already holds GLoRA supports; inject once per model")
        others = f" ({len(wrong) - 1} more such)" if len(wrong) > 1 else ""
        raise TargetError(f"targets {targets!r} matches {name}, a {type(module).__name__} and not an "
                         f"nn.Linear{others}; narrow the regex")
    return [name for name, _ in matched]


def glora_layers(model: nn.Module) -> list[tuple[str, GLoRALinear]]:
    """``(qualified name, layer)`` of every GLoRA layer, in injection order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GLoRALinear)]


def layer_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of every GLoRA layer, in order (for the search)."""
    return [(m.in_features, m.out_features) for _, m in glora_layers(model)]


def set_subnet(model: nn.Module, subnet: Subnet | None,
               sampler: ChoiceSampler | None = None, seed: int = 0) -> ChoiceSampler | None:
    """Fix every layer's choice, or (``subnet=None``) sample a fresh choice per layer per forward.

    ``subnet`` is a list of choice dicts in injection order, or a mapping layer name -> choice.
    In sampling mode all layers share one :class:`ChoiceSampler` (``sampler``, or a new one
    seeded with ``seed``), which is returned so its state can be checkpointed. It draws the
    whole subnet when the first layer runs in a forward, in injection order (the order a timm
    ViT runs its layers), so a seed gives the same choices as one draw per layer per forward.
    """
    layers = glora_layers(model)
    if subnet is None:
        sampler = sampler or ChoiceSampler(seed)
        for _, layer in layers:
            layer.choice, layer.sampler = None, sampler
        sampler.bind([layer for _, layer in layers])
        return sampler
    choices = _ordered_choices(layers, subnet)
    for (_, layer), choice in zip(layers, choices):
        layer.set_choice(choice)
    return None


def _ordered_choices(layers: list, subnet: Subnet) -> list:
    names = [name for name, _ in layers]
    if isinstance(subnet, Mapping):
        missing, extra = set(names) - set(subnet), set(subnet) - set(names)
        if missing or extra:
            raise ValueError(f"subnet does not match the model's GLoRA layers: missing "
                             f"{sorted(missing)[:3]}…, unknown {sorted(extra)[:3]}…")
        return [subnet[name] for name in names]
    if len(subnet) != len(names):
        raise ValueError(f"subnet has {len(subnet)} choices but the model has {len(names)} GLoRA layers")
    return list(subnet)


def current_subnet(model: nn.Module) -> list[dict]:
    """The fixed choices of every layer (error if a layer is in sampling mode)."""
    layers = glora_layers(model)
    if any(layer.choice is None for _, layer in layers):
        raise ValueError("the model is in sampling mode; it has no fixed subnet")
    return [dict(layer.choice) for _, layer in layers]


def count_params(model: nn.Module, subnet: Subnet) -> int:
    """Parameters a subnet adds to the model (the search budget; the head is not counted)."""
    layers = glora_layers(model)
    choices = _ordered_choices(layers, subnet)
    return sum(choice_params(c, m.in_features, m.out_features) for (_, m), c in zip(layers, choices))


def head_names(model: nn.Module, modules_to_save: Sequence[str] | None = None) -> tuple[str, ...]:
    """The task heads that train and are saved beside the GLoRA tensors, by module name.

    ``modules_to_save`` (as PEFT's: a Hugging Face ``classifier``, ``score`` or ``lm_head``) wins;
    otherwise a timm model's ``pretrained_cfg['classifier']`` names them (``head`` and ``head_dist``
    for a distilled DeiT), and a module named ``head`` is the fallback.
    """
    if modules_to_save is not None:
        names = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
        missing = [n for n in names if not _is_module(model, n)]
        if missing:
            raise TargetError(f"modules_to_save: {missing[0]!r} is not a module of the model")
        return tuple(names)
    cfg = getattr(model, "pretrained_cfg", None)
    declared = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    declared = [declared] if isinstance(declared, str) else list(declared or [])
    found = tuple(n for n in declared if _is_module(model, n))
    return found or (("head",) if _is_module(model, "head") else ())


def _is_module(model: nn.Module, name: str) -> bool:
    try:
        return isinstance(model.get_submodule(name), nn.Module)
    except AttributeError:
        return False


def mark_trainable(model: nn.Module, modules_to_save: Sequence[str] | None = None) -> list[str]:
    """Set ``requires_grad`` exactly on ``glora_*`` tensors and the task heads' (``head_names``);
    return those names."""
    heads = head_names(model, modules_to_save)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable_name(name, heads))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def glora_state_dict(model: nn.Module, modules_to_save: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Exactly the ``glora_*`` tensors and the task heads' (``head_names``) of the state dict."""
    heads = head_names(model, modules_to_save)
    return {k: v for k, v in model.state_dict().items() if is_trainable_name(k, heads)}


def freeze_unused(model: nn.Module) -> list[str]:
    """For fixed-subnet training: stop gradients to stored tensors no layer's choice reads.

    Returns the names that stay trainable (the used glora_* tensors and the head).
    """
    for _, layer in glora_layers(model):
        if layer.choice is None:
            raise ValueError("freeze_unused needs a fixed subnet; call set_subnet(model, subnet) first")
        used = used_tensor_names(layer.choice, layer.rank)
        for name, param in layer.named_parameters(recurse=False):
            if name.startswith("glora_") and name not in used:
                param.requires_grad_(False)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def train_read_entries(model: nn.Module, modules_to_save: Sequence[str] | None = None) -> list[nn.Parameter]:
    """For fixed-subnet training: the tensors to optimise, exactly the stored entries the subnet
    reads (``count_params`` of them) plus the head; everything else frozen.

    A partly read tensor (a ``vector`` reads column 0 of its (out, r) factor) trains through a view
    of the read part (``GLoRALinear.train_read_entries``), so the optimizer keeps no moments and
    applies no weight decay to entries the subnet never reads; state-dict names are unchanged.
    Call after ``set_subnet`` and after moving the model to its device.
    """
    heads = head_names(model, modules_to_save)
    trained = [p for n, p in model.named_parameters() if any(n.startswith(f"{h}.") for h in heads)]
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in glora_layers(model):
        trained += layer.train_read_entries()
    for p in trained:
        p.requires_grad_(True)
    return trained


def load_trained_state(model: nn.Module, state: Mapping[str, torch.Tensor], full: bool = False,
                       modules_to_save: Sequence[str] | None = None) -> None:
    """Load a ``glora_state_dict`` (or, ``full=True``, a whole state dict) into the model.

    After the non-strict load, the missing keys must be exactly the frozen backbone's.
    """
    try:
        if full:
            model.load_state_dict(state, strict=True)
            return
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: a different model, rank or class count
        detail = " ".join(str(err).split())
        raise CheckpointError(f"checkpoint tensors do not fit the model: {detail[:300]}") from None
    heads = head_names(model, modules_to_save)
    wrong_missing = [k for k in missing if is_trainable_name(k, heads)]
    if unexpected or wrong_missing:
        raise CheckpointError(f"checkpoint tensors do not fit the model: unexpected {unexpected[:4]}, "
                         f"missing {wrong_missing[:4]} (different model, depth or rank?)")
