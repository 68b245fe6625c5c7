"""GLoRA (Generalized LoRA) for timm Vision Transformers.

Sampling mode: ``set_subnet(model, None, seed=S)`` gives all layers one shared, seeded
:class:`ChoiceSampler` (returned) that draws a fresh choice per layer per forward.
"""
from glora.inject import (DEFAULT_TARGETS, count_params, current_subnet, glora_layers,
                          freeze_unused, glora_state_dict, head_names, inject_glora, layer_shapes, load_trained_state,
                          mark_trainable, set_subnet, train_read_entries)
from glora.layer import ChoiceSampler, GLoRALinear, is_trainable_name
from glora.merge import convert_original_state_dict, merge_glora
from glora.space import (PRESETS, SUPPORTS, all_choices, choice_params, preset_subnet, search_space,
                         subnet_params)

__all__ = [
    "GLoRALinear", "ChoiceSampler", "inject_glora", "glora_layers", "layer_shapes", "set_subnet",
    "current_subnet", "count_params", "head_names", "freeze_unused", "load_trained_state", "mark_trainable", "glora_state_dict", "merge_glora",
    "convert_original_state_dict", "is_trainable_name", "DEFAULT_TARGETS", "SUPPORTS", "PRESETS",
    "search_space", "all_choices", "choice_params", "subnet_params", "preset_subnet",
    "train_read_entries",
]
