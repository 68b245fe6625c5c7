"""Mini-VTAB: small offline tasks in the NOAH layout, so the whole pipeline runs on a CPU: four
design tasks (they chose the recipes) and seven confirmation tasks (they only judge a recipe frozen
before their first run; roles in `vtab.tasks`).

    python -m vtab.mini build [--data-path data/vtab-1k] [--force] [--no-backbone]
    python -m vtab.mini probe [--data-path data/vtab-1k] [--backbone data/tiny_vit]
    python -m vtab.mini.pretrain [--out data/tiny_vit] [--force]

`build` writes the tasks (`layout`), then pretrains the tiny backbone (`pretrain`) if it is
missing. The task list, class counts and roles are the registry's (`vtab.MINI_TASKS`).

| module       | what it holds                                                             |
|--------------|---------------------------------------------------------------------------|
| layout.py    | split sizes and seeds, writing images and list files, `build`             |
| generate.py  | the image generators of the four design tasks (uint8 arrays in memory)    |
| confirm.py   | the image generators of the seven confirmation tasks                      |
| render.py    | drawing primitives shared by the generators and the source task           |
| source.py    | the generated "letter scenes" source task the backbone is pretrained on    |
| pretrain.py  | pretraining the tiny ViT backbone on the source task                      |
| probe.py     | linear probes: pretrained vs randomly initialised backbone                |

Nothing here is needed to train on real VTAB-1k data (`vtab.dataset`, `vtab.tasks`).
"""
from ..tasks import MINI_TASKS
from .layout import (DEFAULT_BACKBONE_DIR, DEFAULT_DATA_PATH, DIGIT_TASKS, JPEG_QUALITY, LIST_FILES, SEEDS,
                     SPLIT_SIZES, build, ensure_backbone, is_built, task_splits, write_noah)

__all__ = [
    "MINI_TASKS", "DIGIT_TASKS", "LIST_FILES", "SPLIT_SIZES", "SEEDS", "JPEG_QUALITY", "DEFAULT_DATA_PATH",
    "DEFAULT_BACKBONE_DIR", "task_splits", "write_noah", "is_built", "build", "ensure_backbone",
]
