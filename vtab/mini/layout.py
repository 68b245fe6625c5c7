"""Mini-VTAB task folders in the NOAH layout: generate the splits, write images and list files.

`build` writes ``<data_path>/<task>/images/*.jpg`` (32x32 RGB, JPEG quality 95) and the list
files train800.txt, val200.txt, train800val200.txt (= train800 then val200) and test.txt with
lines ``images/00000.jpg 3``. Everything is a pure function of the fixed seeds below: building
twice gives byte-identical files. A task whose four list files exist is skipped unless ``force``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from glora.io.files import atomic_write
from glora.io.progress import progress as progress_bar

from ..tasks import MINI_TASKS, DataError
from . import confirm, generate, pretrain

LIST_FILES = ("train800", "val200", "train800val200", "test")
SPLIT_SIZES = (800, 200, 1000)  # train800, val200, test (the digit tasks: test = the 797 left)
# One seed per task of vtab.MINI_TASKS (a test checks that the keys match the registry).
SEEDS = {"mini_digits": 1001, "mini_count": 1002, "mini_loc": 1003, "mini_ori": 1004,
         "mini_texture": 1005, "mini_shapes": 1006, "mini_occluded": 1007, "mini_cells": 1008,
         "mini_land": 1009, "mini_dist": 1010, "mini_elev": 1011}
DIGIT_TASKS = ("mini_digits", "mini_occluded")  # built from scikit-learn's 1,797 digits
JPEG_QUALITY = 95
DEFAULT_DATA_PATH = "data/vtab-1k"
DEFAULT_BACKBONE_DIR = "data/tiny_vit"

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def task_splits(task: str, sizes: Sequence[int] = SPLIT_SIZES, seed: int | None = None,
                progress: bool = False) -> Splits:
    """Images uint8 (N, 32, 32, 3) and labels of a task's train800 / val200 / test splits."""
    if task not in MINI_TASKS:
        raise DataError(f"unknown mini task {task!r}; expected one of {', '.join(MINI_TASKS)}")
    seed = SEEDS[task] if seed is None else seed
    n_train, n_val, n_test = sizes
    if task in DIGIT_TASKS:
        full = tuple(sizes) == SPLIT_SIZES  # the real build keeps every remaining digit as test
        splits = generate.digits(seed, n_train, n_val, None if full else n_test)
        return splits if task == "mini_digits" else confirm.occluded_digits(splits, seed)
    with progress_bar(desc=task, total=n_train + n_val + n_test, enabled=progress,
                      unit="img") as bar:
        # One RNG stream per split ([seed, index]): changing one split size leaves the others.
        return {name: generate.generate(task, n, [seed, index], bar.update)
                for index, (name, n) in enumerate(zip(("train800", "val200", "test"), sizes))}


def write_noah(folder: "str | os.PathLike", splits: Splits, quality: int = JPEG_QUALITY,
               progress: bool = False) -> None:
    """Write images/ and the four list files of one task folder from in-memory splits."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {}
    index = 0
    total = sum(len(labels) for _, labels in splits.values())
    with progress_bar(desc=f"write {folder.name}", total=total, enabled=progress,
                      unit="img") as bar:
        for name in ("train800", "val200", "test"):
            images, labels = splits[name]
            lines[name] = []
            for image, label in zip(images, labels):
                rel = f"images/{index:05d}.jpg"
                # 4:4:4 chroma: default 4:2:0 subsampling would smear colours at 32x32.
                Image.fromarray(image).save(folder / rel, quality=quality, subsampling=0)
                lines[name].append(f"{rel} {int(label)}\n")
                index += 1
                bar.update(1)
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for name in LIST_FILES:
        # Atomic: a list file exists only when complete, so it doubles as the 'built' marker.
        atomic_write(folder / f"{name}.txt", "".join(lines[name]))


def is_built(folder: "str | os.PathLike") -> bool:
    """True when all four list files of a task folder exist (they are written last)."""
    return all((Path(folder) / f"{name}.txt").is_file() for name in LIST_FILES)


def build(data_path: "str | os.PathLike" = DEFAULT_DATA_PATH,
          tasks: Sequence[str] = MINI_TASKS, force: bool = False,
          sizes: Sequence[int] = SPLIT_SIZES, progress: bool = True) -> list[str]:
    """Build the mini tasks under `data_path`; returns the names actually (re)built."""
    built = []
    for task in tasks:
        folder = Path(data_path) / task
        if is_built(folder) and not force:
            if progress:
                print(f"{task}: already built in {folder} (use --force to rebuild)")
            continue
        if folder.exists():
            shutil.rmtree(folder)  # no stale images or decode cache from an older build
        write_noah(folder, task_splits(task, sizes, progress=progress), progress=progress)
        built.append(task)
    return built


def ensure_backbone(out_dir: "str | os.PathLike" = DEFAULT_BACKBONE_DIR,
                    progress: bool = True) -> Path:
    """Pretrain the tiny backbone into `out_dir` unless its safetensors file already exists."""
    path = Path(out_dir) / pretrain.WEIGHTS_FILE
    if path.is_file():
        if progress:
            print(f"backbone: {path} exists")
        return path
    return pretrain.pretrain(out_dir, progress=progress)
