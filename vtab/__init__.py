"""VTAB-1k for GLoRA: the task registry, NOAH-layout splits decoded once, device-side loaders.

    import vtab
    info = vtab.resolve_task("cifar100")                     # -> TaskInfo('cifar', 100, 'natural')
    split = vtab.load_split("data/vtab-1k", info, vtab.PROTOCOLS["val"]["train"])
    loader = vtab.Loader(split, 64, shuffle=True, drop_last=True, seed=42, device="cuda")
    loader.set_epoch(epoch)                                  # before each epoch
    for x, y in loader: ...                                  # float32 normalised, on the device

``python -m vtab.check`` verifies a data tree; data/README.md says how to get one.
"""
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .dataset import PROTOCOLS, SPLITS, Loader, Split, load_split, pil_pipeline
from .tasks import (ALIASES, GROUPS, MINI_TASKS, TASKS, VTAB_TASKS, DataError, TaskInfo,
                    resolve_task)

__all__ = [
    "TASKS", "VTAB_TASKS", "GROUPS", "MINI_TASKS", "ALIASES", "TaskInfo", "resolve_task",
    "PROTOCOLS", "SPLITS", "DataError", "load_split", "Split", "Loader", "pil_pipeline",
    "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD",
]
