"""Reading one image as the original pipeline does: a regular file, decoded by PIL, 8-bit RGB.

The original loader (NOAH/FacT/GLoRA) is ``Image.open(path).convert("RGB")``. That is exact for
every 8-bit mode (1, L, P, LA, RGBA, CMYK, YCbCr, ...), and we keep it for them. Two cases are
handled on purpose, and both are absent from VTAB-1k as NOAH prepares it (all 8-bit JPEG/PNG),
so the benchmark inputs are unchanged:

- 16-bit greyscale (modes ``I;16*``, e.g. a 16-bit PNG): Pillow's ``convert`` clips values to
  0..255, which turns almost every pixel white. We scale instead, ``round(v * 255 / 65535)``,
  the only 16-to-8-bit mapping the format itself defines.
- 32-bit integer ``I`` and float ``F`` images: the format fixes no value range, so no scaling
  is right for all of them. We keep Pillow's conversion (clip to 0..255, as the original does)
  and report a note that the caller turns into one warning per split (or a `vtab.check` line).

A listed path that is not a regular file (a FIFO, a directory, a device) is refused before it
is opened: opening a FIFO blocks until a writer appears, and opening a device can block or have
side effects.
"""
from __future__ import annotations

import os
import stat
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from glora.errors import ConfigError

from .tasks import DataError

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}
# Exceptions Pillow raises on missing, truncated or corrupt files (SyntaxError: some plugins).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit float"}
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def resample(interpolation: str) -> Image.Resampling:
    """The Pillow filter of an interpolation name; ValueError listing the names otherwise."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation {interpolation!r} not in {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[interpolation]


def not_regular(path: "str | os.PathLike") -> "str | None":
    """What `path` is if it exists but is not a regular file ('a FIFO (named pipe)', ...)."""
    try:
        mode = os.stat(path).st_mode  # stat never opens the file, so it cannot block
    except OSError:
        return None  # missing or unreadable: opening it gives the precise error
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def to_rgb8(image: Image.Image, path: "str | os.PathLike") -> tuple[Image.Image, "str | None"]:
    """8-bit RGB of a decoded image, and a note when its mode has no defined 8-bit scaling."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.uint32)  # (H, W) in 0..65535, any byte order
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # rounded, 65535 -> 255
        return Image.fromarray(grey, "L").convert("RGB"), None
    note = None
    if image.mode in UNSCALED_MODES:
        note = (f"{path} is a {UNSCALED_MODES[image.mode]} image (mode {image.mode}): values "
                f"outside 0..255 are clipped, as the original pipeline does")
    return image.convert("RGB"), note


def open_rgb(path: "str | os.PathLike", notes: "list[str] | None" = None) -> Image.Image:
    """Open an image fully decoded in 8-bit RGB; DataError naming a bad file.

    A note about a lossy conversion (see the module docstring) is appended to ``notes``.
    """
    kind = not_regular(path)
    if kind is not None:
        raise DataError(f"cannot read image {path}: {kind}, not a regular file")
    try:
        with Image.open(path) as image:
            rgb, note = to_rgb8(image, path)  # convert() forces the full decode inside the try
    except IMAGE_ERRORS as error:
        reason = str(error).replace("\n", " ")  # the message must stay one line
        raise DataError(f"cannot read image {path}: {reason}") from None
    if note is not None and notes is not None:
        notes.append(note)
    return rgb


def decode_image(path: "str | os.PathLike", input_size: int = 224,
                 interpolation: str = "bicubic", notes: "list[str] | None" = None
                 ) -> torch.Tensor:
    """One image as the cache stores it: RGB, resized to a square, uint8 (3, H, W)."""
    image = open_rgb(path, notes).resize((input_size, input_size), resample(interpolation))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


@lru_cache(maxsize=8)
def _reference_transform(input_size: int, interpolation: str):
    from torchvision import transforms  # the original code's transform stack

    mode = transforms.InterpolationMode(interpolation)
    return transforms.Compose([
        transforms.Resize((input_size, input_size), interpolation=mode),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def pil_pipeline(path: "str | os.PathLike", input_size: int = 224,
                 interpolation: str = "bicubic") -> torch.Tensor:
    """The original per-epoch pipeline for one image: float32 (3, H, W), normalised."""
    resample(interpolation)
    return _reference_transform(input_size, interpolation)(open_rgb(path))
