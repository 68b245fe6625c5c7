"""Image generators of the mini-VTAB confirmation tasks (uint8 arrays in memory; `layout` writes them).

These tasks judge a recipe that was frozen (glora/configs/verdict.yaml) before their first run; they are
never used to choose one. Each is a different kind of problem, spread over VTAB's three groups:

| task          | group       | like            | label                                                  |
|---------------|-------------|-----------------|--------------------------------------------------------|
| mini_texture  | natural     | dtd             | one of 8 texture kinds, any colours, scale, angle      |
| mini_shapes   | natural     | caltech101      | one of 8 object shapes under colour, pose, size, fill  |
| mini_occluded | natural     | svhn (harder)   | the digit under shift, tint, occluders and noise        |
| mini_cells    | specialized | patch_camelyon  | whether a stained tissue patch holds enlarged nuclei   |
| mini_land     | specialized | eurosat         | one of 6 land-cover kinds seen from above              |
| mini_dist     | structured  | clevr_dist      | depth bin (6) of the nearest object on a ground plane  |
| mini_elev     | structured  | smallnorb_ele   | elevation bin (6) of a shaded solid at any azimuth     |

As in `generate`, everything the label does not depend on varies (colours, sizes, positions,
angles, noise), all randomness comes from the generator passed in, and building twice gives the
same bytes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from . import render as R

SIZE = 32
S = R.SUPERSAMPLE
TEXTURES = ("stripes", "checker", "dots", "grid", "waves", "zigzag", "rings", "blobs")
OBJECT_SHAPES = ("circle", "triangle", "square", "pentagon", "star", "plus", "tee", "ell")
LAND = ("water", "forest", "fields", "urban", "river", "bare")
DIST_RANGE = (1.5, 6.0)   # depth of the nearest object, split into 6 equal bins
ELEV_BIN = 12.0           # degrees per elevation class: 0-12, 12-24, ..., 60-72


def _downsample(fine: np.ndarray) -> np.ndarray:
    """(SIZE*S, SIZE*S[, C]) -> (SIZE, SIZE[, C]) box average: anti-aliased patterns."""
    shape = (SIZE, S, SIZE, S) + fine.shape[2:]
    return fine.reshape(shape).mean(axis=(1, 3)).astype(np.float32)


def _coords(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel coordinates rotated by a random angle and shifted by a random phase."""
    yy, xx = (np.mgrid[0:SIZE * S, 0:SIZE * S].astype(np.float32) + 0.5) / S
    a = rng.uniform(0, np.pi)
    u = xx * np.cos(a) + yy * np.sin(a) + rng.uniform(0, 32)
    v = -xx * np.sin(a) + yy * np.cos(a) + rng.uniform(0, 32)
    return u, v


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field (SIZE*S, SIZE*S) in [0, 1]: `cells` x `cells` noise, bicubic upscaled."""
    low = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(low).resize((SIZE * S, SIZE * S), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def texture_pattern(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Coverage (SIZE, SIZE) in [0, 1] of one texture kind at a random scale, angle and phase."""
    u, v = _coords(rng)
    p = rng.uniform(3.0, 6.0)  # period in pixels
    if kind == "stripes":
        fine = (u / p) % 1.0 < 0.5
    elif kind == "checker":
        fine = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    elif kind == "dots":
        fine = ((u % p) - p / 2) ** 2 + ((v % p) - p / 2) ** 2 < (0.3 * p) ** 2
    elif kind == "grid":
        fine = np.minimum(np.abs(u % p - p / 2), np.abs(v % p - p / 2)) < 0.6
    elif kind == "waves":
        fine = ((u + 0.6 * p * np.sin(np.pi * v / p)) / p) % 1.0 < 0.5
    elif kind == "zigzag":
        tri = 2 * np.abs((v / p) % 1.0 - 0.5)  # triangle wave in [0, 1]
        fine = ((u + 0.8 * p * tri) / p) % 1.0 < 0.5
    elif kind == "rings":
        cx, cy = rng.uniform(-8, 40, size=2)
        yy, xx = (np.mgrid[0:SIZE * S, 0:SIZE * S].astype(np.float32) + 0.5) / S
        fine = (np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / p) % 1.0 < 0.5
    elif kind == "blobs":
        field = _smooth_noise(rng, int(rng.integers(5, 9)))
        fine = field > np.median(field)
    else:
        raise ValueError(f"unknown texture {kind!r}; expected one of {', '.join(TEXTURES)}")
    return _downsample(fine.astype(np.float32))


def render_texture(rng: np.random.Generator, label: int) -> np.ndarray:
    """The whole image is texture `TEXTURES[label]` in two random colours, plus noise."""
    cover = texture_pattern(rng, TEXTURES[label])
    img = R.background(rng, SIZE)
    ref = img.mean((0, 1))
    img = R.paint(img, cover, R.random_colour(rng, ref, rng.uniform(0.15, 0.5)))
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.08)))


def render_shapes(rng: np.random.Generator, label: int) -> np.ndarray:
    """Shape `OBJECT_SHAPES[label]` at a random place, size, angle, colour and fill, among small
    distractor specks of other shapes."""
    img = R.background(rng, SIZE)
    ref = img.mean((0, 1))
    for _ in range(int(rng.integers(0, 4))):  # specks: smaller than any labelled object
        speck = R.SHAPES[OBJECT_SHAPES[rng.integers(len(OBJECT_SHAPES))]]
        where = tuple(rng.uniform(2, SIZE - 2, size=2))
        cover = R.mask(R.place(speck, where, rng.uniform(1.2, 2.2), rng.uniform(0, 2 * np.pi)), SIZE)
        img = R.paint(img, cover, R.random_colour(rng, ref, 0.2))
    r = rng.uniform(5.0, 10.0)
    centre = tuple(rng.uniform(r * 0.7, SIZE - r * 0.7, size=2))
    cover = R.mask(R.place(R.SHAPES[OBJECT_SHAPES[label]], centre, r, rng.uniform(0, 2 * np.pi)), SIZE)
    colour = R.random_colour(rng, ref)
    if rng.random() < 0.4:  # a stripe fill in a second colour
        bars = R.stripes(SIZE, rng.uniform(0, np.pi), rng.uniform(2.5, 4.0), rng.random())
        second = R.random_colour(rng, ref, 0.2, other=colour)
        colour = colour * bars[..., None] + second * (1 - bars[..., None])
    img = R.paint(img, cover, colour)
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.06)))


def corrupt_digit(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    """A grey digit (SIZE, SIZE) uint8 shifted, rotated, tinted on a random background, with 1-2
    occluding rectangles and pixel noise."""
    turned = Image.fromarray(grey).rotate(rng.uniform(-20, 20), Image.Resampling.BILINEAR,
                                          translate=tuple(int(t) for t in rng.integers(-4, 5, 2)))
    cover = np.asarray(turned, dtype=np.float32) / 255.0
    img = R.background(rng, SIZE)
    ref = img.mean((0, 1))
    img = R.paint(img, cover, R.random_colour(rng, ref, 0.3))
    for _ in range(int(rng.integers(1, 3))):
        w, h = rng.integers(5, 13, size=2)
        x0, y0 = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
        box = np.zeros((SIZE, SIZE), np.float32)
        box[y0:y0 + h, x0:x0 + w] = 1.0
        img = R.paint(img, box, rng.random(3).astype(np.float32))
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.03, 0.12)))


def occluded_digits(splits: dict, seed: int) -> dict:
    """Every image of digit splits (grey RGB uint8) corrupted by `corrupt_digit`, one stream per split."""
    out = {}
    for index, (name, (images, labels)) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, index])
        out[name] = (np.stack([corrupt_digit(rng, image[..., 0]) for image in images])
                     if len(images) else images, labels)
    return out


def _ellipse(centre, rx: float, ry: float, angle: float, wobble: np.ndarray) -> np.ndarray:
    t = 2 * np.pi * np.arange(len(wobble)) / len(wobble)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1) * wobble[:, None]
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, -s], [s, c]]).T + np.asarray(centre)


def render_cells(rng: np.random.Generator, label: int) -> np.ndarray:
    """A stained tissue patch: pink stroma texture, 12-30 small purple nuclei; label 1 adds 2-5
    enlarged, darker, irregular nuclei. Stain hue and strength vary per image."""
    stain = np.array([0.93, 0.72, 0.82], np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    stroma = _downsample(_smooth_noise(rng, int(rng.integers(6, 12))))
    img = stain[None, None] * (0.82 + 0.18 * stroma[..., None])
    nucleus = np.array([0.38, 0.22, 0.55], np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    big = int(rng.integers(2, 6)) if label == 1 else 0
    for i in range(int(rng.integers(12, 31)) + big):
        enlarged = i < big
        r = rng.uniform(2.0, 3.0) if enlarged else rng.uniform(0.9, 1.9)
        wobble = 1 + rng.uniform(-0.25, 0.25, 12) if enlarged else 1 + rng.uniform(-0.08, 0.08, 12)
        outline = _ellipse(tuple(rng.uniform(1, SIZE - 1, 2)), r, r * rng.uniform(0.6, 1.0),
                           rng.uniform(0, np.pi), wobble)
        shade = nucleus * (rng.uniform(0.6, 0.8) if enlarged else rng.uniform(0.75, 1.1))
        img = R.paint(img, R.mask(outline, SIZE), np.clip(shade, 0, 1))
    return R.to_uint8(R.add_noise(rng, img * rng.uniform(0.85, 1.05), rng.uniform(0.01, 0.06)))


def _jitter(rng: np.random.Generator, colour) -> np.ndarray:
    """A land-cover colour with a random hue/brightness shift (colour alone must not decide)."""
    c = np.asarray(colour, np.float32) + rng.uniform(-0.12, 0.12, 3).astype(np.float32)
    return np.clip(c * rng.uniform(0.75, 1.2), 0, 1).astype(np.float32)


def render_land(rng: np.random.Generator, label: int) -> np.ndarray:
    """A top-down land-cover patch of kind `LAND[label]`."""
    kind = LAND[label]
    n1 = _downsample(_smooth_noise(rng, int(rng.integers(4, 9))))[..., None]
    n2 = _downsample(_smooth_noise(rng, int(rng.integers(10, 16))))[..., None]
    if kind == "water":
        img = _jitter(rng, (0.15, 0.3, 0.45)) * (0.9 + 0.1 * n1) + 0.04 * texture_pattern(rng, "waves")[..., None]
    elif kind == "forest":
        img = _jitter(rng, (0.15, 0.35, 0.15)) * (0.55 + 0.6 * n2)
    elif kind == "fields":
        rows = texture_pattern(rng, "stripes")[..., None]
        a, b = _jitter(rng, (0.35, 0.55, 0.2)), _jitter(rng, (0.6, 0.55, 0.3))
        img = (a * rows + b * (1 - rows)) * (0.85 + 0.2 * n1)
    elif kind == "urban":
        blocks = texture_pattern(rng, "grid")[..., None]
        roof = _jitter(rng, (0.55, 0.5, 0.5)) * (0.7 + 0.5 * n2)
        img = roof * (1 - blocks) + _jitter(rng, (0.3, 0.3, 0.32)) * blocks
    elif kind == "river":
        img = _jitter(rng, (0.3, 0.45, 0.2)) * (0.75 + 0.4 * n2)
        x0, slope, amp = rng.uniform(8, 24), rng.uniform(-0.5, 0.5), rng.uniform(1, 4)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        centre = x0 + slope * (yy - 16) + amp * np.sin(yy / rng.uniform(3, 6))
        band = np.clip(rng.uniform(1.5, 3.5) - np.abs(xx - centre), 0, 1)
        if rng.random() < 0.5:
            band = band.T  # the river runs across instead of down
        img = R.paint(img, band, _jitter(rng, (0.15, 0.3, 0.45)))
    else:  # bare
        dunes = texture_pattern(rng, "waves")[..., None]
        img = _jitter(rng, (0.7, 0.6, 0.42)) * (0.85 + 0.1 * dunes + 0.1 * n1)
    return R.to_uint8(R.add_noise(rng, np.clip(img, 0, 1), rng.uniform(0.01, 0.05)))


def render_dist(rng: np.random.Generator, label: int) -> np.ndarray:
    """2-5 objects on a ground plane in perspective (lower and larger = nearer); the label is the
    depth bin of the nearest one."""
    lo, hi = DIST_RANGE
    width = (hi - lo) / 6
    nearest = lo + width * (label + rng.random())
    depths = [nearest] + list(rng.uniform(nearest, hi + 2.0, size=int(rng.integers(1, 5))))
    horizon = rng.uniform(6, 12)
    img = R.background(rng, SIZE)
    ground = np.zeros((SIZE, SIZE), np.float32)
    ground[int(horizon):] = 1.0
    ref = img.mean((0, 1))
    img = R.paint(img, ground, np.clip(ref + rng.uniform(0.05, 0.15), 0, 1))
    ref = img.mean((0, 1))
    for z in sorted(depths, reverse=True):  # far to near: the nearer object covers the farther
        r = rng.uniform(6.0, 8.0) / z
        base = horizon + (SIZE - horizon) * 1.4 / z
        shape = R.SHAPES[("circle", "square", "triangle", "hexagon")[rng.integers(4)]]
        vertices = R.place(shape, (rng.uniform(3, SIZE - 3), base - r), r, rng.uniform(-0.3, 0.3))
        img = R.paint(img, R.mask(vertices, SIZE), R.random_colour(rng, ref, 0.25))
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.05)))


def _solid(kind: str) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices (V, 3) with y up and faces (counter-clockwise seen from outside) of a convex solid."""
    if kind == "cube":
        v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64) * 0.7
        faces = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    elif kind == "pyramid":
        v = np.array([[-1, -0.7, -1], [1, -0.7, -1], [1, -0.7, 1], [-1, -0.7, 1], [0, 0.9, 0]]) * 0.8
        faces = [[0, 1, 2, 3], [0, 4, 1], [1, 4, 2], [2, 4, 3], [3, 4, 0]]
    else:  # prism: a triangle extruded along z
        v = np.array([[-1, -0.6, -1], [1, -0.6, -1], [0, 0.8, -1], [-1, -0.6, 1], [1, -0.6, 1], [0, 0.8, 1]]) * 0.8
        faces = [[0, 2, 1], [3, 4, 5], [0, 1, 4, 3], [1, 2, 5, 4], [2, 0, 3, 5]]
    return v, faces


def render_elev(rng: np.random.Generator, label: int) -> np.ndarray:
    """A flat-shaded cube, pyramid or prism seen from elevation bin `label` (ELEV_BIN degrees each)
    at a random azimuth, size, place and colour (orthographic view)."""
    elev = np.deg2rad(ELEV_BIN * (label + rng.random()))
    azim = rng.uniform(0, 2 * np.pi)
    vertices, faces = _solid(("cube", "pyramid", "prism")[rng.integers(3)])
    ca, sa, ce, se = np.cos(azim), np.sin(azim), np.cos(elev), np.sin(elev)
    turn = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])       # azimuth, about the vertical
    tilt = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])       # camera raised by `elev`
    cam = vertices @ turn.T @ tilt.T                               # +z points at the viewer
    middle = cam.mean(0)
    scale, centre = rng.uniform(7.0, 10.0), SIZE / 2 + rng.uniform(-3, 3, size=2)
    img = R.background(rng, SIZE)
    colour = R.random_colour(rng, img.mean((0, 1)), 0.45)
    light = np.array([-0.4, 0.8, 0.45]) / np.linalg.norm([-0.4, 0.8, 0.45])
    for face in faces:
        p = cam[face]
        normal = np.cross(p[1] - p[0], p[2] - p[0])
        normal /= np.linalg.norm(normal)
        if normal @ (p.mean(0) - middle) < 0:  # orient outwards, whatever the winding
            normal = -normal
        if normal[2] <= 1e-6:  # facing away (convex solid: no other occlusion)
            continue
        shade = 0.45 + 0.55 * max(float(normal @ light), 0.0)
        screen = np.stack([centre[0] + scale * p[:, 0], centre[1] - scale * p[:, 1]], 1)
        img = R.paint(img, R.mask(screen, SIZE), colour * shade)
    return R.to_uint8(R.add_noise(rng, img, rng.uniform(0.0, 0.05)))


RENDERERS = {
    "mini_texture": render_texture, "mini_shapes": render_shapes, "mini_cells": render_cells,
    "mini_land": render_land, "mini_dist": render_dist, "mini_elev": render_elev,
}
