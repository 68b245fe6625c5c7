"""Per-epoch data time: the original per-item PIL pipeline vs our decode-once cached loader.

    python benchmarks/bench_data.py [--images 1000] [--size 224] [--workers 2] [--device cpu]

Builds a generated NOAH-layout task (JPEGs of 500x375 by default, about VTAB's natural-image
sizes) in a temporary folder, then times, in one run:
  (a) original: a torch Dataset doing PIL open + RGB + bicubic resize + ToTensor + Normalize per
      item, through a DataLoader (shuffle, drop_last, --workers processes), for one epoch;
  (b) ours: vtab.load_split (decode once + write the cache; then a reload from the cache) and
      vtab.Loader epochs (gather uint8 + normalise on --device).
Prints the times and the per-epoch ratio; also checks both paths give the same tensors.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vtab

TASK = "cifar"  # any registered task; labels are i % 100


def make_task(root: Path, images: int, width: int, height: int, seed: int = 0,
              coarse: int = 25, tint: bool = False) -> Path:
    """Write ``images`` smooth random JPEGs (JPEG-friendly, like photos) and a train800.txt.

    ``coarse`` is the pixel size of the noise grid; ``tint`` colours each image by its label
    (i % 100), so a model can learn the task.
    """
    folder = root / TASK
    (folder / "images").mkdir(parents=True)

    def write(i: int) -> str:
        rng = np.random.default_rng(seed + i)
        label = i % 100
        grid = (max(height // coarse, 2), max(width // coarse, 2), 3)
        coarse_image = Image.fromarray(rng.integers(0, 256, grid, np.uint8))
        image = np.asarray(coarse_image.resize((width, height), Image.BICUBIC), dtype=np.int16)
        if tint:
            image = image + (np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256]) - 128) // 2
        else:
            image = image + rng.integers(-12, 13, image.shape, dtype=np.int16)  # texture
        name = f"images/{i:05d}.jpg"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / name, quality=90)
        return f"{name} {label}"

    with ThreadPoolExecutor() as pool:
        lines = list(pool.map(write, range(images)))
    (folder / "train800.txt").write_text("\n".join(lines) + "\n")
    return folder


class PerItemDataset(torch.utils.data.Dataset):
    """The original approach: decode, resize and normalise every item on every access."""

    def __init__(self, folder: Path, size: int):
        lines = (folder / "train800.txt").read_text().split()
        self.items = [(folder / p, int(y)) for p, y in zip(lines[::2], lines[1::2])]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return vtab.pil_pipeline(path, self.size, "bicubic"), label


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_original(folder: Path, args, device: torch.device) -> float:
    """Seconds for one epoch of the per-item pipeline, batches delivered on the device."""
    loader = torch.utils.data.DataLoader(
        PerItemDataset(folder, args.size), batch_size=args.batch_size, shuffle=True,
        drop_last=True, num_workers=args.workers, pin_memory=device.type == "cuda")
    start = time.perf_counter()
    for x, y in loader:  # worker start-up included: the original pays it every epoch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    return time.perf_counter() - start


def time_cached(root: Path, args, device: torch.device) -> dict:
    """Seconds to build the cache, reload it, and run one Loader epoch (mean of --epochs)."""
    times = {}
    start = time.perf_counter()
    vtab.load_split(root, TASK, "train800", args.size, cache_dir=root / ".cache",
                    progress=False)
    times["build"] = time.perf_counter() - start
    start = time.perf_counter()
    split = vtab.load_split(root, TASK, "train800", args.size, cache_dir=root / ".cache",
                            progress=False)
    loader = vtab.Loader(split, args.batch_size, shuffle=True, drop_last=True, device=device)
    sync(device)
    times["reload"] = time.perf_counter() - start
    start = time.perf_counter()
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            pass
    sync(device)
    times["epoch"] = (time.perf_counter() - start) / args.epochs
    times["max_abs_diff"] = max(  # same tensors as the per-item pipeline
        (loader.normalise(split.images[i:i + 1].to(device))[0].cpu()
         - vtab.pil_pipeline(root / TASK / split.paths[i], args.size)).abs().max().item()
        for i in range(8))
    return times


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line arguments of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=224, help="input size (the original: 224)")
    p.add_argument("--source", type=str, default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a)")
    p.add_argument("--epochs", type=int, default=5, help="Loader epochs averaged in (b)")
    p.add_argument("--device", type=str, default="cpu")
    return p


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    width, height = map(int, args.source.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = make_task(Path(tmp), args.images, width, height)
        print(f"generated {args.images} JPEGs of {width}x{height} in "
              f"{time.perf_counter() - start:.1f} s; input {args.size}, batch {args.batch_size}, "
              f"device {device}, torch threads {torch.get_num_threads()}")
        original = time_original(folder, args, device)
        ours = time_cached(Path(tmp), args, device)
    print(f"(a) original per-item PIL, {args.workers} workers: {original:8.2f} s/epoch")
    print(f"(b) decode once, first build (one-time):   {ours['build']:8.2f} s")
    print(f"    reload from cache (each run):         {ours['reload']:8.2f} s")
    print(f"    Loader epoch:                         {ours['epoch']:8.3f} s/epoch")
    print(f"per-epoch ratio (a)/(b): {original / ours['epoch']:.1f}x; "
          f"500 epochs: {500 * original / 60:.1f} min vs "
          f"{(ours['build'] + 500 * ours['epoch']) / 60:.1f} min; "
          f"max |diff| vs per-item pipeline: {ours['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
