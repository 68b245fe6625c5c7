"""Hostile files in a data tree: non-regular files, images that are not 8-bit, damaged caches."""
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vtab
from vtab.check import main as check_main
from vtab.images import to_rgb8

TASK = "eurosat"  # 10 classes
SIZE = 12


def write_task(root: Path, images: dict[str, Image.Image], extra_lines=()) -> Path:
    """``root/eurosat`` whose lists (all four the same) name ``images`` then ``extra_lines``."""
    folder = root / TASK
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, image) in enumerate(images.items()):
        image.save(folder / "images" / name)
        lines.append(f"images/{name} {i % 10}")
    for split in vtab.SPLITS:
        (folder / f"{split}.txt").write_text("\n".join([*lines, *extra_lines]) + "\n")
    return folder


def rgb_images(n: int = 6, seed: int = 0) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    return {f"{i:03d}.png": Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
            for i in range(n)}


def load(root: Path, **kwargs) -> vtab.Split:
    return vtab.load_split(root, TASK, "train800", input_size=SIZE, progress=False, **kwargs)


# --- a FIFO, a directory or a device named in a list ---------------------------------------------

@contextmanager
def rescue_fifo_reader(fifo: Path, seconds: float = 20.0):
    """If a reader blocks opening ``fifo`` (the bug), open it for writing after ``seconds`` so
    that the test fails instead of hanging the suite; yields a list that is non-empty if so."""
    fired = []

    def rescue():
        try:  # with O_NONBLOCK this fails at once (ENXIO) unless a reader is waiting
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            fired.append(True)
        except OSError:
            pass

    timer = threading.Timer(seconds, rescue)
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_non_regular_file_in_a_list_is_refused_with_its_line(tmp_path, kind):
    """Fails if a FIFO in a list hangs the run (opened for reading, it waits for a writer) or if a
    directory or device gets opened instead of refused with the list file and line named."""
    folder = write_task(tmp_path, rgb_images(4))
    target = {"fifo": "images/pipe", "directory": "images", "device": "/dev/null"}[kind]
    if kind == "fifo":
        os.mkfifo(folder / target)
    lines = (folder / "train800.txt").read_text().splitlines()
    lines.insert(2, f"{target} 7")  # line 3
    (folder / "train800.txt").write_text("\n".join(lines) + "\n")
    with rescue_fifo_reader(folder / "images" / "pipe") as fired:
        with pytest.raises(vtab.DataError) as err:
            load(tmp_path)
    message = str(err.value)
    assert not fired, "a reader blocked on the FIFO"
    assert "\n" not in message and f"{folder / 'train800.txt'}:3" in message
    expected = {"fifo": "a FIFO (named pipe)", "directory": "a directory",
                "device": "a character device"}[kind]
    assert f"{expected}, not a regular file" in message


@pytest.mark.parametrize("quick", [True, False])
def test_check_reports_a_fifo_without_opening_it(tmp_path, capsys, quick):
    """Fails if `python -m vtab.check` hangs on a FIFO or calls it a missing file."""
    folder = write_task(tmp_path, rgb_images(3), extra_lines=["images/pipe 1"])
    os.mkfifo(folder / "images" / "pipe")
    args = ["--data-path", str(tmp_path), "--no-progress", TASK] + (["--quick"] if quick else [])
    with rescue_fifo_reader(folder / "images" / "pipe") as fired:
        assert check_main(args) == 1
    assert not fired
    assert "images/pipe: a FIFO (named pipe), not a regular file" in capsys.readouterr().out


# --- images that are not 8-bit -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_sixteen_bit_images_are_scaled_not_saturated(dtype):
    """Fails if a 16-bit greyscale image is clipped to 0..255 (almost all white) instead of being
    scaled by 255/65535, in either byte order."""
    values = np.array([[0, 128, 129, 257, 32767, 32896, 65535]], dtype=dtype)
    image = Image.fromarray(values)
    assert image.mode in ("I;16", "I;16B")
    rgb, note = to_rgb8(image, "x.png")
    assert note is None and rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 0, 1, 1, 127, 128, 255]
    assert np.array_equal(np.asarray(rgb)[..., 0], np.asarray(rgb)[..., 2])


def test_sixteen_bit_png_loads_scaled_without_warning(tmp_path):
    """Fails if the decode path saturates a 16-bit PNG (Pillow's convert('RGB') does)."""
    ramp = (np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE) * 455).astype(np.uint16)
    write_task(tmp_path, {"deep.png": Image.fromarray(ramp)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = load(tmp_path, interpolation="nearest")  # same size: nearest is the identity
    expected = (ramp.astype(np.uint32) * 255 + 32767) // 65535
    assert split.images[0].shape == (3, SIZE, SIZE)
    assert np.array_equal(split.images[0, 1].numpy(), expected)
    assert 0 < split.images.float().mean() < 200  # saturation would give ~255 almost everywhere


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr"])
def test_eight_bit_modes_keep_the_original_conversion(tmp_path, mode):
    """Fails if an 8-bit mode no longer decodes exactly as the original Image.convert('RGB')."""
    image = next(iter(rgb_images(1).values())).convert(mode)
    rgb, note = to_rgb8(image, "x")
    assert note is None and np.array_equal(np.asarray(rgb), np.asarray(image.convert("RGB")))


def test_float_and_int32_images_warn_once_per_split_naming_the_first(tmp_path):
    """Fails if 32-bit int / float images are clipped silently, or warn once per image."""
    ramp = np.linspace(0, 1, 9 * 11, dtype=np.float32).reshape(9, 11)
    images = {**rgb_images(2), "a.tif": Image.fromarray(ramp),
              "b.tif": Image.fromarray((ramp * 1000).astype(np.int32))}
    folder = write_task(tmp_path, images)
    with pytest.warns(UserWarning) as record:
        split = load(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message and str(folder / "train800.txt") in message
    assert "2 image(s)" in message and "line 3" in message and "a.tif" in message
    assert "mode F" in message and "clipped" in message
    assert split.images[2].max() <= 1  # clipped, as the original pipeline does: kept as is


def test_check_warns_about_clipped_images(tmp_path, capsys):
    """Fails if `vtab.check` does not report images whose conversion clips values."""
    ramp = np.linspace(0, 1, 99, dtype=np.float32).reshape(9, 11)
    write_task(tmp_path, {**rgb_images(1), "f.tif": Image.fromarray(ramp)})
    assert check_main(["--data-path", str(tmp_path), "--no-progress", TASK]) == 0
    out = capsys.readouterr().out
    assert "warning: " in out and "f.tif is a 32-bit float image (mode F)" in out


# --- a decode cache that does not match its header -----------------------------------------------

def resave(path: Path, change) -> None:
    blob = torch.load(path, weights_only=True)
    change(blob)
    torch.save(blob, path)


def flip_one_byte(blob):
    blob["images"][0, 0, 0, 0] ^= 1  # the header (key, crc32) is left as it was


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p: p.write_bytes(b""),
    "bytes changed": lambda p: resave(p, flip_one_byte),
    "fewer images": lambda p: resave(p, lambda b: b.update(images=b["images"][:3].clone())),
    "wrong shape": lambda p: resave(p, lambda b: b.update(images=b["images"][..., :5].clone())),
    "wrong dtype": lambda p: resave(p, lambda b: b.update(images=b["images"].float())),
    "no images": lambda p: resave(p, lambda b: b.pop("images")),
    "images not a tensor": lambda p: resave(p, lambda b: b.update(images=[1, 2, 3])),
    "other key": lambda p: resave(p, lambda b: b.update(key="0" * 64)),
    "no checksum": lambda p: resave(p, lambda b: b.pop("crc32")),
    "not a dict": lambda p: torch.save([1, 2], p),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_rebuilt_with_one_line_notice(tmp_path, damage):
    """Fails if a cache that does not match its header is used (a wrong shape later stops the
    model with an AssertionError), raises, or is rebuilt without a one-line notice."""
    write_task(tmp_path, rgb_images(6))
    fresh = load(tmp_path)
    (cache,) = (tmp_path / TASK / ".cache").glob("train800_*.pt")
    DAMAGE[damage](cache)
    with pytest.warns(UserWarning) as record:
        rebuilt = load(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message and str(cache) in message and "rebuilding it" in message
    assert torch.equal(rebuilt.images, fresh.images) and rebuilt.images.dtype == torch.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is sound: loads silently
        assert torch.equal(load(tmp_path).images, fresh.images)
