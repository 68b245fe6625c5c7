"""The procedurally generated source task the tiny backbone is pretrained on ("glyph scenes").

Each image holds one large target glyph and 0..4 smaller distractor glyphs on a random
gradient background with pixel noise. Four labels per image, each a softmax head:

| head     | classes | what it is                                                  |
|----------|---------|-------------------------------------------------------------|
| shape    | 10      | the target's shape (circle, triangle, ..., tee)             |
| texture  | 7       | its fill: solid, outline, checker, stripes at 0/45/90/135° |
| cell     | 9       | the 3x3 grid cell of its centre                             |
| glyphs   | 5       | how many glyphs the image holds (1..5)                      |

Together they ask for edges and oriented patterns (texture), shape, coarse position and
counting: generic features, none of which is a downstream task (mini_count counts 1..8 small
objects; mini_loc bins x into 8; mini_ori turns arrows and pins, which never appear here).
The target's rotation, size, colours and the background are nuisance factors.
"""
from __future__ import annotations

import numpy as np

from . import mini_render as R

SIZE = 32
SHAPES = ("circle", "triangle", "square", "diamond", "pentagon", "hexagon", "star", "plus",
          "ell", "tee")
TEXTURES = ("solid", "outline", "checker", "stripes0", "stripes45", "stripes90", "stripes135")
HEADS = {"shape": len(SHAPES), "texture": len(TEXTURES), "cell": 9, "glyphs": 5}
DESCRIPTION = ("glyph scenes: one large target glyph + 0..4 small distractors, 32x32; heads "
               "shape(10) x texture(7: solid/outline/checker/stripes 0,45,90,135) x "
               "3x3 cell(9) x glyph count 1..5 (5); summed cross-entropy")


def _texture(rng: np.random.Generator, kind: str) -> np.ndarray | None:
    """Binary (SIZE, SIZE) pattern of a texture, or None for solid/outline."""
    if kind.startswith("stripes"):
        angle = np.deg2rad(float(kind[len("stripes"):]))
        return R.stripes(SIZE, angle, rng.uniform(2.5, 4.0), rng.random())
    if kind == "checker":
        return R.checker(SIZE, int(rng.integers(2, 4)), tuple(rng.integers(0, 4, 2)))
    return None


def _distractors(rng: np.random.Generator, n: int, target: tuple[float, float, float]
                 ) -> list[tuple[float, float, float]]:
    """Centres and radii of `n` small glyphs that do not touch the target or each other."""
    placed = [target]
    while len(placed) < n + 1:
        r = rng.uniform(1.5, 2.8)
        x, y = rng.uniform(r, SIZE - r, size=2)
        if all((x - cx) ** 2 + (y - cy) ** 2 > (r + cr + 1.0) ** 2 for cx, cy, cr in placed):
            placed.append((x, y, r))
        # A target of radius <= 7 leaves room for 4 glyphs of radius <= 2.8: this terminates.
    return placed[1:]


def render(rng: np.random.Generator, shape: int, texture: int, cell: int,
           glyphs: int) -> np.ndarray:
    """One uint8 (32, 32, 3) image with the given head labels."""
    img = R.background(rng, SIZE)
    ref = img.mean((0, 1))
    radius = rng.uniform(4.5, 7.0)
    third = SIZE / 3
    x = third * (cell % 3 + rng.random())
    y = third * (cell // 3 + rng.random())
    for dx, dy, dr in _distractors(rng, glyphs, (x, y, radius)):
        small = R.SHAPES[SHAPES[rng.integers(len(SHAPES))]]
        cover = R.mask(R.place(small, (dx, dy), dr, rng.uniform(0, 2 * np.pi)), SIZE)
        img = R.paint(img, cover, R.random_colour(rng, ref))
    vertices = R.place(R.SHAPES[SHAPES[shape]], (x, y), radius, rng.uniform(0, 2 * np.pi))
    kind = TEXTURES[texture]
    colour = R.random_colour(rng, ref)
    cover = R.mask(vertices, SIZE, outline=1.2 if kind == "outline" else 0.0)
    pattern = _texture(rng, kind)
    if pattern is not None:
        second = R.random_colour(rng, colour, min_dist=0.5)  # contrast inside the glyph
        colour = colour * pattern[..., None] + second * (1 - pattern[..., None])
    img = R.paint(img, cover, colour)
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.05)))


def generate(n: int, seed: "int | list[int]") -> tuple[np.ndarray, np.ndarray]:
    """`n` images uint8 (n, 32, 32, 3) and labels int64 (n, 4) in HEADS order, balanced per head."""
    rng = np.random.default_rng(seed)
    # Each head is balanced on its own and the heads are shuffled independently, so no head
    # predicts another.
    labels = np.stack([rng.permutation(np.arange(n) % k) for k in HEADS.values()], axis=1)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, (shape, texture, cell, count) in enumerate(labels):
        images[i] = render(rng, int(shape), int(texture), int(cell), int(count))
    return images, labels.astype(np.int64)
