"""The procedurally generated source task the tiny backbone is pretrained on ("letter scenes").

Each image holds one large capital letter near the centre and 0..4 small marks (simple
polygons) on a dark tinted gradient background with pixel noise. Four labels per image, each a
softmax head over the cls token:

| head    | classes | what it is                                                      |
|---------|---------|-----------------------------------------------------------------|
| letter  | 26      | which letter A..Z                                               |
| tilt    | 4       | the letter's rotation, -40..40 degrees in 20-degree bins        |
| cell    | 9       | the 3x3 cell of the letter's centre within +-6 px of the middle |
| marks   | 5       | how many small marks surround it (0..4)                         |

Letters ask for strokes, edges and their arrangement; tilt for orientation; cell for fine
position; marks for counting small objects. These are generic features, and none of the
heads is a downstream task: mini_digits are handwritten digits (never letters), mini_ori turns
arrows and pins over 360 degrees (letters are only tilted, by at most 40), mini_loc bins the
x of a lone sprite over the whole image, mini_count counts 1..8 objects with no letter.
Letter size (16..24 px), colours, background and noise are nuisance factors.
"""
from __future__ import annotations

import string
from typing import Callable

import numpy as np

from . import render as R

SIZE = 32
LETTERS = string.ascii_uppercase
MARK_SHAPES = ("circle", "triangle", "square", "diamond", "star", "plus")
JITTER = 6.0  # the letter's centre is within +-JITTER px of the image centre ...
CELL = 2 * JITTER / 3  # ... and the cell head bins that square 3x3
TILT_RANGE = (-40.0, 40.0)  # degrees, counter-clockwise, binned into 4 tilt classes
TILT_BIN = (TILT_RANGE[1] - TILT_RANGE[0]) / 4
HEADS = {"letter": len(LETTERS), "tilt": 4, "cell": 9, "marks": 5}
DESCRIPTION = ("letter scenes (32x32, generated): one capital letter in Pillow's embedded font "
               "(16..24 px, tilted -40..40 deg, centre within +-6 px of the middle) + 0..4 "
               "small marks on a dark gradient background; heads letter(26), tilt(4 bins), "
               "3x3 cell of the letter centre(9), number of marks(5); summed cross-entropy")


def _marks(rng: np.random.Generator, n: int, keep_out: tuple[float, float, float]
           ) -> list[tuple[float, float, float]]:
    """Centres and radii of `n` small marks that touch neither the letter's disc nor each other."""
    placed = [keep_out]
    while len(placed) < n + 1:
        r = rng.uniform(1.5, 2.5)
        x, y = rng.uniform(r, SIZE - r, size=2)
        if all((x - cx) ** 2 + (y - cy) ** 2 > (r + cr + 1.0) ** 2 for cx, cy, cr in placed):
            placed.append((x, y, r))
        # The letter's disc (radius <= 9) leaves room for 4 marks of radius <= 2.5: terminates.
    return placed[1:]


def render(rng: np.random.Generator, letter: int, tilt: int, cell: int,
           marks: int) -> np.ndarray:
    """One uint8 (32, 32, 3) image with the given head labels."""
    img = R.background(rng, SIZE)
    ref = img.mean((0, 1))
    height = rng.uniform(16.0, 24.0)
    x, y = SIZE / 2 - JITTER + CELL * (np.array([cell % 3, cell // 3]) + rng.random(2))
    degrees = TILT_RANGE[0] + TILT_BIN * (tilt + rng.random())
    for mx, my, mr in _marks(rng, marks, (x, y, 0.38 * height)):
        shape = R.SHAPES[MARK_SHAPES[rng.integers(len(MARK_SHAPES))]]
        cover = R.mask(R.place(shape, (mx, my), mr, rng.uniform(0, 2 * np.pi)), SIZE)
        img = R.paint(img, cover, R.random_colour(rng, ref))
    cover = R.text_mask(LETTERS[letter], (x, y), height, np.deg2rad(degrees), SIZE)
    img = R.paint(img, cover, R.random_colour(rng, ref))
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.04)))


def generate(n: int, seed: "int | list[int]", progress: Callable[[int], object] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """`n` images uint8 (n, 32, 32, 3) and labels int64 (n, heads) in HEADS order."""
    rng = np.random.default_rng(seed)
    # Each head is balanced on its own and shuffled independently, so no head predicts another.
    labels = np.stack([rng.permutation(np.arange(n) % k) for k in HEADS.values()], axis=1)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, row in enumerate(labels):
        images[i] = render(rng, *(int(v) for v in row))
        if progress is not None:
            progress(1)
    return images, labels.astype(np.int64)
