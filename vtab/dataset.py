"""VTAB-1k splits in the NOAH layout: list files, a decode-once uint8 cache, device-side loaders.

Layout: ``<data_path>/<task>/{train800,val200,train800val200,test}.txt``, one sample per line,
``relative/path label`` with the path relative to the task folder.

The original pipeline (NOAH/FacT/GLoRA) decodes every image every epoch: PIL open, RGB, bicubic
resize to 224x224, ToTensor, ImageNet Normalize, no augmentation. Because nothing is random, the
resized uint8 image is the same every epoch, so we decode it once, cache it on disk, hold it in
memory (on the GPU when training there) and normalise on the device:
``(x.float() / 255 - mean) / std`` is the same float32 arithmetic as ToTensor + Normalize.

Cache: ``<task folder>/.cache/<split>_<size>_<interp>_<key16>.pt`` by default (inside the task
folder, so a data tree stays self-contained and deleting a task deletes its cache); pass
``cache_dir`` for a read-only data tree. The key is the sha256 of the list file's bytes, the input
size and the interpolation: editing a list invalidates it, but replacing image files under an
unchanged list does not, so delete ``.cache`` after doing that. The file's header also holds a
CRC-32 of the images; a cache that does not match its header (other key or version, wrong dtype
or shape, changed bytes) or does not load is rebuilt, with a one-line warning.

Reading a single image (regular files only, 8-bit RGB) is `vtab.images`.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from glora.errors import ConfigError, GLoRAError
from glora.io.files import atomic_write
from glora.io.progress import progress as progress_bar

from .images import (INTERPOLATIONS, decode_image, open_rgb, pil_pipeline,  # noqa: F401
                     resample)
from .tasks import DataError, TaskInfo, resolve_task

# Per protocol: the supernet's training split, the split the search scores on, the test split, and
# the split a fixed subnet or baseline trains on ("fit"). `retrain` is the VPT/NOAH/SSF practice:
# select on val200, then train the chosen model on train800val200 and test once.
PROTOCOLS = {
    "val": {"train": "train800", "search": "val200", "test": "test", "fit": "train800"},
    "paper": {"train": "train800val200", "search": "test", "test": "test", "fit": "train800val200"},
    "retrain": {"train": "train800", "search": "val200", "test": "test", "fit": "train800val200"},
}
SPLITS = ("train800", "val200", "train800val200", "test")
README_HINT = "see data/README.md for how to get VTAB-1k"
_CACHE_VERSION = 2  # 2: the header holds a CRC-32 of the images
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass
class Split:
    """A decoded split: uint8 images (N, 3, H, W) and int64 labels (N,), on the CPU.

    Images read back from the cache are memory-mapped: pages load as batches touch them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    task: str
    split: str
    paths: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Entry:
    """One parsed line of a list file."""

    path: str
    label: int
    line: int


def task_dir(data_path: "str | os.PathLike", task: "str | TaskInfo") -> Path:
    """The folder of a task under ``data_path``; DataError if it does not exist."""
    info = resolve_task(task)
    folder = Path(data_path) / info.name
    if not folder.is_dir():
        raise DataError(f"task folder {folder} not found; {README_HINT}")
    return folder


def list_file(data_path: "str | os.PathLike", task: "str | TaskInfo", split: str) -> Path:
    """The list file of one split; DataError if the split name or the file is wrong."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = task_dir(data_path, task) / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"list file {path} not found; {README_HINT}")
    return path


def count_listed(data_path: "str | os.PathLike", task: "str | TaskInfo", split: str) -> int:
    """How many samples a split's list file names (its non-blank lines), without decoding any."""
    return sum(1 for line in list_file(data_path, task, split).read_bytes().splitlines() if line.strip())


def _decode_text(data: bytes, source: "str | os.PathLike") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{source}: not a UTF-8 text list file ({error.reason} at byte "
                        f"{error.start})") from None


def parse_list(text: str, source: "str | os.PathLike", num_classes: int) -> list[Entry]:
    """Parse ``path label`` lines; DataError naming ``source`` and the line on any bad line."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (typically trailing) carry no sample
        # Split on the last whitespace so that a path containing spaces still parses.
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2 or not _INTEGER.fullmatch(parts[1]):
            raise DataError(f"{source}:{number}: expected 'relative/path label', "
                            f"got {line.strip()!r}")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{source}:{number}: label {label} outside [0, {num_classes})")
        entries.append(Entry(parts[0], label, number))
    if not entries:
        raise DataError(f"{source}: no samples listed")
    return entries


def read_list(data_path: "str | os.PathLike", task: "str | TaskInfo", split: str) -> list[Entry]:
    """The checked entries of one split's list file."""
    path = list_file(data_path, task, split)
    text = _decode_text(path.read_bytes(), path)
    return parse_list(text, path, resolve_task(task).num_classes)


def _decode_all(folder: Path, entries: Sequence[Entry], source: Path, input_size: int,
                interpolation: str, progress: bool, workers: int) -> torch.Tensor:
    images = torch.empty((len(entries), 3, input_size, input_size), dtype=torch.uint8)
    notes: list[tuple[int, str]] = []  # (line, note) of images converted with clipping

    def work(i: int) -> None:
        found: list[str] = []
        try:
            images[i] = decode_image(folder / entries[i].path, input_size, interpolation, found)
        except DataError as error:
            raise DataError(f"{error} (listed at {source}:{entries[i].line})") from None
        notes.extend((entries[i].line, note) for note in found)  # list.extend: thread-safe

    # Pillow releases the GIL while decoding and resizing, so threads scale across cores.
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        done = pool.map(work, range(len(entries)))
        for _ in progress_bar(done, f"decode {folder.name}/{source.stem}", len(entries),
                              enabled=progress, unit="img"):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, skip the queued images
    if notes:  # one warning per split, not one per image
        line, note = min(notes)
        warnings.warn(f"{source}: {len(notes)} image(s) without a defined 8-bit scaling; "
                      f"the first, at line {line}: {note}")
    return images


def _cache_key(list_bytes: bytes, input_size: int, interpolation: str) -> str:
    header = f"vtab-cache-v{_CACHE_VERSION}|{input_size}|{interpolation}|".encode()
    return hashlib.sha256(header + list_bytes).hexdigest()


def _checksum(images: torch.Tensor) -> int:
    """CRC-32 of the image bytes (about 4 GB/s: a second for the largest VTAB test split)."""
    return zlib.crc32(images.contiguous().numpy())


def _cache_problem(blob: object, key: str, shape: tuple[int, ...]) -> "str | None":
    """Why a loaded cache does not match its header or this split, or None if it is sound."""
    if not isinstance(blob, dict) or blob.get("version") != _CACHE_VERSION:
        return "not a decode cache of this version"
    if blob.get("key") != key:
        return "its key is not that of this list file, size and interpolation"
    images = blob.get("images")
    if not isinstance(images, torch.Tensor):
        return "it holds no image tensor"
    if images.dtype != torch.uint8 or tuple(images.shape) != shape:
        return (f"it holds {images.dtype} {tuple(images.shape)} where the list needs "
                f"torch.uint8 {shape}")
    if blob.get("crc32") != _checksum(images):
        return "the image bytes do not match the checksum in its header"
    return None


def _read_cache(path: Path, key: str, shape: tuple[int, ...]) -> "torch.Tensor | None":
    """The cached images (N, 3, H, W) if the file is sound; None (with a notice) otherwise."""
    if not path.is_file():
        return None
    try:
        # mmap: pages come in as batches touch them, so a test split of several GB does not
        # have to fit in RAM when the loader is not resident.
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a half-copied or foreign file: rebuild rather than fail
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"ignoring unreadable cache {path} ({reason}); rebuilding it")
        return None
    problem = _cache_problem(blob, key, shape)
    if problem is not None:  # tampered, truncated inside, or written by other code: rebuild
        warnings.warn(f"ignoring cache {path}: {problem}; rebuilding it")
        return None
    return blob["images"]


def _write_cache(path: Path, key: str, images: torch.Tensor) -> None:
    blob = {"key": key, "version": _CACHE_VERSION, "crc32": _checksum(images), "images": images}
    try:  # a unique temporary name: two runs may decode the same split at once
        atomic_write(path, lambda handle: torch.save(blob, handle), unique=True)
    except GLoRAError as error:  # e.g. a read-only tree or a full disk: not cached
        warnings.warn(f"could not write cache {path}: {error}; pass cache_dir= to cache elsewhere")
        return
    # The same split at the same size/interpolation under an older list is now stale.
    prefix = path.name.rsplit("_", 1)[0] + "_"
    for old in path.parent.glob(f"{prefix}*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


def load_split(data_path: "str | os.PathLike", task: "str | TaskInfo", split: str,
               input_size: int = 224, interpolation: str = "bicubic",
               cache_dir: "str | os.PathLike | None" = None, progress: bool = True,
               workers: "int | None" = None) -> Split:
    """Load one split decoded once: from the uint8 cache if valid, else decode, cache, return."""
    info = resolve_task(task)
    resample(interpolation)
    source = list_file(data_path, info, split)
    list_bytes = source.read_bytes()
    entries = parse_list(_decode_text(list_bytes, source), source, info.num_classes)
    key = _cache_key(list_bytes, input_size, interpolation)
    folder = source.parent
    cache_root = folder / ".cache" if cache_dir is None else Path(cache_dir) / info.name
    cache_file = cache_root / f"{split}_{input_size}_{interpolation}_{key[:16]}.pt"
    images = _read_cache(cache_file, key, (len(entries), 3, input_size, input_size))
    if images is None:
        workers = workers or min(8, os.cpu_count() or 1)
        images = _decode_all(folder, entries, source, input_size, interpolation, progress, workers)
        _write_cache(cache_file, key, images)
    labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
    return Split(images, labels, info.name, split, tuple(e.path for e in entries))


class Loader:
    """Batches of a Split, normalised in float32 on ``device``; the order is f(seed, epoch).

    Call ``set_epoch(e)`` before each epoch (as with DistributedSampler): the shuffle order is
    ``randperm`` from a generator seeded with ``seed * 100003 + epoch``, so a resumed run replays
    the same batches. ``resident=True`` copies the whole uint8 split to the device once (a VTAB-1k
    train split at 224 is 150 MB); ``resident=False`` keeps it on the CPU and copies each batch,
    for large test splits. With ``world_size`` > 1 (data parallelism) every rank walks the same
    order of global batches of ``batch_size`` and yields only its contiguous share of each
    (``batch_size / world_size`` samples).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int = 0, device: "str | torch.device" = "cpu",
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, resident: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ConfigError(f"batch size {batch_size} does not split evenly over {world_size} ranks")
        self.rank, self.world_size = rank, world_size
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0
        self.device, self.resident = torch.device(device), resident
        self._cuda = self.device.type == "cuda"  # pinned memory / async copies only help there
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        if resident:
            self._images = split.images.to(self.device)
            self._labels = split.labels.to(self.device)
        else:
            self._images, self._labels = split.images, split.labels

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = len(self.split), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def batch_indices(self) -> list[torch.Tensor]:
        """The sample indices of each batch of the current epoch (CPU int64 tensors)."""
        n = len(self.split)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        batches = list(order[: len(self) * self.batch_size].split(self.batch_size))
        if self.world_size > 1:  # this rank's share of each global batch
            batches = [b.tensor_split(self.world_size)[self.rank] for b in batches]
        return batches

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) on the device -> float32 (x / 255 - mean) / std."""
        return images.float().div_(255).sub_(self._mean).div_(self._std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_indices()
        if self.resident:
            # One host->device copy of the epoch's order; the per-step gathers stay on the device.
            if not batches:
                return
            for idx in torch.cat(batches).to(self.device).split([len(b) for b in batches]):
                yield self.normalise(self._images[idx]), self._labels[idx]
            return
        for idx in batches:
            x, y = self._images[idx], self._labels[idx]
            if self._cuda:
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(self.device, non_blocking=self._cuda)
            yield self.normalise(x), y.to(self.device, non_blocking=self._cuda)
