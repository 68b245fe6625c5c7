"""Drawing primitives shared by the mini-VTAB generators and the pretraining source task.

Images are float32 arrays (H, W, 3) in [0, 1] until `to_uint8`. Sprites are anti-aliased by
drawing their mask at `SUPERSAMPLE` times the resolution and box-filtering it down, so a
3-pixel object still has a well-defined position and orientation at 32x32.
All randomness comes from the `numpy.random.Generator` passed in: nothing here touches a
global RNG, which is what makes every generated file reproducible from a seed.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SUPERSAMPLE = 4


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(n: int, inner: float) -> np.ndarray:
    outer = _regular(n, -np.pi / 2)
    inner_pts = inner * _regular(n, -np.pi / 2 + np.pi / n)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _scaled(points: list[tuple[float, float]]) -> np.ndarray:
    """Centre a hand-written polygon and scale it so its farthest vertex is at radius 1."""
    p = np.asarray(points, dtype=np.float64)
    p -= (p.max(0) + p.min(0)) / 2
    return p / np.sqrt((p ** 2).sum(1)).max()


# Unit polygons (V, 2), centred, max radius 1, in image coordinates (y points down).
SHAPES: dict[str, np.ndarray] = {
    "circle": _regular(32),
    "triangle": _regular(3, -np.pi / 2),
    "square": _regular(4, np.pi / 4),
    "diamond": _scaled([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]),
    "pentagon": _regular(5, -np.pi / 2),
    "hexagon": _regular(6),
    "star": _star(5, 0.45),
    "plus": _scaled([(-1, -.33), (-.33, -.33), (-.33, -1), (.33, -1), (.33, -.33), (1, -.33),
                     (1, .33), (.33, .33), (.33, 1), (-.33, 1), (-.33, .33), (-1, .33)]),
    "ell": _scaled([(0, 0), (.4, 0), (.4, .7), (1, .7), (1, 1), (0, 1)]),
    "tee": _scaled([(0, 0), (1, 0), (1, .3), (.65, .3), (.65, 1), (.35, 1), (.35, .3), (0, .3)]),
    "ellipse": _regular(32) * np.array([1.0, 0.5]),
    # Asymmetric, elongated, tip along +x: an angle over the full 0..360 degrees is recoverable.
    "arrow": _scaled([(0, .4), (.6, .4), (.6, .1), (1, .5), (.6, .9), (.6, .6), (0, .6)]),
    "pin": _scaled([(1, .5), (.45, .12), (.25, .05), (.05, .2), (0, .5), (.05, .8), (.25, .95),
                    (.45, .88)]),
}


def place(shape: np.ndarray, centre: tuple[float, float], radius: float,
          angle: float) -> np.ndarray:
    """Vertices of `shape` rotated by `angle` (radians, counter-clockwise on screen), scaled to
    `radius` pixels and moved to `centre` (x, y)."""
    c, s = np.cos(angle), np.sin(angle)
    # y points down on screen, so a counter-clockwise turn uses -angle in image coordinates.
    rot = np.array([[c, s], [-s, c]])
    return shape @ rot.T * radius + np.asarray(centre)


def mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of a filled polygon in pixel coordinates."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in vertices * s], fill=255)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0


@lru_cache(maxsize=None)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    # Pillow's embedded font (Aileron): no system font needed, the same on every machine.
    return ImageFont.load_default(size=pixels)


def text_mask(char: str, centre: tuple[float, float], height: float, angle: float,
              size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) of one character of font size `height` pixels,
    centred at `centre` (x, y) and turned by `angle` (radians, counter-clockwise)."""
    s = SUPERSAMPLE
    cx, cy = centre[0] * s, centre[1] * s
    canvas = Image.new("L", (size * s, size * s), 0)
    ImageDraw.Draw(canvas).text((cx, cy), char, fill=255, font=_font(round(height * s)),
                                anchor="mm")
    canvas = canvas.rotate(float(np.degrees(angle)), Image.Resampling.BILINEAR, center=(cx, cy))
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0


def luminance(colour: np.ndarray) -> float:
    """Rec. 601 luma of an RGB colour in [0, 1]."""
    return float(colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def random_colour(rng: np.random.Generator, background: np.ndarray, min_contrast: float = 0.35,
                  other: np.ndarray | None = None, min_diff: float = 0.2) -> np.ndarray:
    """A random RGB colour whose luma exceeds `background`'s by at least `min_contrast` (and,
    if given, differs from `other`'s by at least `min_diff`).

    Objects are always brighter than the background (as in dSprites or MNIST): with both
    polarities a ViT trained from scratch on a CPU budget spends most of it on the polarity.
    The hue stays free, so colour is still a nuisance factor.
    """
    floor = min(luminance(background) + min_contrast, 1.0)
    for _ in range(100):
        c = rng.random(3).astype(np.float32)
        if luminance(c) < floor:  # too dark: blend towards white up to a random luma >= floor
            target = rng.uniform(floor, 1.0)
            c = c + (1.0 - c) * (target - luminance(c)) / (1.0 - luminance(c))
        if other is None or abs(luminance(c) - luminance(other)) >= min_diff:
            return c.astype(np.float32)
    return np.ones(3, dtype=np.float32)  # unreachable in practice


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, weakly tinted background (luma <= ~0.35) with a linear gradient of random
    direction."""
    base = rng.uniform(0.0, 0.25)
    colour = np.clip(base + rng.uniform(-0.1, 0.1, size=3), 0, 1).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    g = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None]  # (size, size)
    tint = rng.uniform(-0.15, 0.15, size=3).astype(np.float32)
    return np.clip(colour + g[..., None] * tint, 0.0, 1.0)


def stripes(size: int, angle: float, period: float, phase: float) -> np.ndarray:
    """Binary (size, size) stripe pattern whose bars run along `angle` (radians)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Bars run along (cos a, -sin a) on screen (y points down); d is the distance across them.
    d = xx * np.sin(angle) + yy * np.cos(angle)
    return (((d / period + phase) % 1.0) < 0.5).astype(np.float32)


def checker(size: int, cell: int, offset: tuple[int, int]) -> np.ndarray:
    """Binary (size, size) checkerboard with square cells of `cell` pixels."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (((xx + offset[0]) // cell + (yy + offset[1]) // cell) % 2).astype(np.float32)


def paint(img: np.ndarray, cover: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Alpha-composite `fill` (3,) or (H, W, 3) over `img` with coverage `cover` (H, W)."""
    a = cover[..., None]
    return img * (1.0 - a) + fill * a


def add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Additive Gaussian pixel noise, clipped back to [0, 1]."""
    if sigma <= 0:
        return img
    noise = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return np.clip(img + noise, 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 (H, W, 3), rounding to nearest."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
