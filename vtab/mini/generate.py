"""Image generators of the four mini-VTAB design tasks (uint8 arrays in memory; `layout` writes
them); the confirmation tasks' generators are in `confirm` and run through the same `generate`.

- mini_digits: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), upscaled.
- mini_count:  1..8 small objects (label = count - 1), like VTAB's clevr_count.
- mini_loc:    one sprite; label = bin of its x position (8 bins), like dsprites_loc.
- mini_ori:    one asymmetric sprite; label = its orientation over 0..360 degrees in 8 bins of
               45 degrees centred on 0, 45, ..., 315 (0 = pointing right), like dsprites_ori.

The procedural tasks vary what the label does not depend on (background tint and gradient,
object hue and brightness, sizes, shapes, rotation, fill patterns, pixel noise) so that a
classifier has to learn the labelled factor; objects are always brighter than the dark
background (see `render.random_colour`). Labels are balanced exactly (n // k per class,
the remainder to the first classes) and shuffled.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from ..tasks import MINI_TASKS, TASKS, DataError
from . import confirm
from . import render as R

SIZE = 32
# The task list and class counts live in the registry (vtab/tasks.py), nowhere else.
NUM_CLASSES = {name: TASKS[name].num_classes for name in MINI_TASKS}
LOC_RANGE = (4.0, 28.0)  # x range of the sprite centre, split into 8 equal bins
LOC_SHAPES = ("circle", "triangle", "square", "diamond", "pentagon", "hexagon", "star", "plus",
              "ell", "tee", "ellipse")
COUNT_SHAPES = ("circle", "square", "triangle", "diamond", "hexagon")
ORI_SHAPES = ("arrow", "pin")  # no rotational symmetry, so 0..360 is well defined


def balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """`n` labels in [0, k), as equal per class as possible, in random order."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _fill(rng: np.random.Generator, img: np.ndarray, cover: np.ndarray, colour: np.ndarray,
          background: np.ndarray, pattern: str) -> np.ndarray:
    """Paint a sprite with a solid colour or a two-colour stripe/checker pattern."""
    if pattern == "solid":
        return R.paint(img, cover, colour)
    if pattern == "stripes":
        bars = R.stripes(SIZE, rng.uniform(0, np.pi), rng.uniform(2.5, 4.0), rng.random())
    else:  # checker
        bars = R.checker(SIZE, int(rng.integers(2, 4)), tuple(rng.integers(0, 4, 2)))
    second = R.random_colour(rng, background, 0.2, other=colour)  # visible pattern
    return R.paint(img, cover, colour * bars[..., None] + second * (1 - bars[..., None]))


def _layout(rng: np.random.Generator, n: int, scale: float) -> list[tuple[float, float, float]]:
    """Centres and radii of `n` objects at least 1.5 px apart, by bounded rejection sampling."""
    while True:
        placed: list[tuple[float, float, float]] = []
        for _ in range(50 * n):
            r = scale * rng.uniform(0.8, 1.2)
            x, y = rng.uniform(r + 0.5, SIZE - r - 0.5, size=2)
            if all((x - cx) ** 2 + (y - cy) ** 2 > (r + cr + 1.5) ** 2 for cx, cy, cr in placed):
                placed.append((x, y, r))
                if len(placed) == n:
                    return placed
        scale *= 0.9  # an unlucky early layout blocked the rest: retry with smaller objects


def render_count(rng: np.random.Generator, label: int) -> np.ndarray:
    """`label + 1` non-overlapping small objects of random shape, size and colour."""
    img = R.background(rng, SIZE)
    ref = img.mean((0, 1))
    # One size per image (jittered per object), so object size does not predict the count.
    for x, y, r in _layout(rng, label + 1, rng.uniform(1.8, 3.0)):
        shape = R.SHAPES[COUNT_SHAPES[rng.integers(len(COUNT_SHAPES))]]
        cover = R.mask(R.place(shape, (x, y), r, rng.uniform(0, 2 * np.pi)), SIZE)
        img = R.paint(img, cover, R.random_colour(rng, ref))
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.05)))


def render_loc(rng: np.random.Generator, label: int) -> np.ndarray:
    """One sprite whose centre x lies in bin `label` of LOC_RANGE; y, shape, look random."""
    lo, hi = LOC_RANGE
    width = (hi - lo) / NUM_CLASSES["mini_loc"]
    x = lo + width * (label + rng.random())
    y = rng.uniform(lo, hi)
    img = R.background(rng, SIZE)
    shape = R.SHAPES[LOC_SHAPES[rng.integers(len(LOC_SHAPES))]]
    cover = R.mask(R.place(shape, (x, y), rng.uniform(3.0, 5.0), rng.uniform(0, 2 * np.pi)),
                   SIZE)
    pattern = ("solid", "stripes", "checker")[rng.integers(3)]
    ref = img.mean((0, 1))
    img = _fill(rng, img, cover, R.random_colour(rng, ref), ref, pattern)
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.05)))


def render_ori(rng: np.random.Generator, label: int) -> np.ndarray:
    """One arrow or pin turned by an angle in bin `label` (45-degree bins centred on 45*label)."""
    degrees = 45.0 * label + rng.uniform(-22.5, 22.5)
    centre = SIZE / 2 + rng.uniform(-4, 4, size=2)
    img = R.background(rng, SIZE)
    shape = R.SHAPES[ORI_SHAPES[rng.integers(len(ORI_SHAPES))]]
    vertices = R.place(shape, tuple(centre), rng.uniform(7.0, 11.0), np.deg2rad(degrees))
    pattern = ("solid", "checker")[rng.integers(2)]  # no stripes: they would add a 2nd angle
    ref = img.mean((0, 1))
    img = _fill(rng, img, R.mask(vertices, SIZE), R.random_colour(rng, ref), ref, pattern)
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.05)))


RENDERERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "mini_count": render_count, "mini_loc": render_loc, "mini_ori": render_ori, **confirm.RENDERERS,
}


def generate(task: str, n: int, seed: "int | list[int]",
             progress: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` images uint8 (n, 32, 32, 3) and balanced labels (n,) of a procedural task."""
    if task not in RENDERERS:
        raise DataError(f"no generator for {task!r}; expected one of {', '.join(RENDERERS)}")
    rng = np.random.default_rng(seed)
    labels = balanced_labels(rng, n, NUM_CLASSES[task])
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = RENDERERS[task](rng, int(label))
        if progress is not None:
            progress(1)
    return images, labels


def digits(seed: int, n_train: int = 800, n_val: int = 200,
           n_test: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn digits shuffled with `seed`, upscaled to 32x32 RGB, split train/val/rest-as-test."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    grey = (data.images[order] / 16.0 * 255.0 + 0.5).astype(np.uint8)  # pixel values 0..16
    up = np.stack([np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
                   for g in grey])
    rgb = np.repeat(up[..., None], 3, axis=3)  # grey -> RGB, as VTAB stores grey datasets
    labels = data.target[order].astype(np.int64)
    end_test = len(labels) if n_test is None else n_train + n_val + n_test
    cuts = {"train800": (0, n_train), "val200": (n_train, n_train + n_val),
            "test": (n_train + n_val, end_test)}
    return {name: (rgb[a:b], labels[a:b]) for name, (a, b) in cuts.items()}
