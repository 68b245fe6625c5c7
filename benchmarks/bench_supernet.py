"""Supernet training throughput: our data path and GLoRA sampling vs the original-style path.

    python benchmarks/bench_supernet.py    # CPU defaults: tiny ViT, 256 images, about 3 min
    bash benchmarks/gpu_check.sh           # ViT-B/16, 1,000 images at 224, on a GPU (flags there)

Generates a NOAH-layout task (``--images`` JPEGs of ``--source-size`` pixels, ``train800.txt``)
in a temporary folder and trains on it with ``glora.run.engine.train_one_epoch`` (batch 64, shuffle,
drop_last, AdamW lr 1e-4 wd 1e-4, fused on CUDA as in supernet.py, random init, drop_path 0.1,
rank 4). Cases (``--cases``):

  glora       ours: decode once (vtab.load_split) + vtab.Loader resident on --device, GLoRA
              supernet sampling, --precision (auto = bf16 autocast on CUDA, fp32 on the CPU)
  glora-fp32  the same in fp32 (separates the precision from the data path on a GPU)
  pil         original-style: a DataLoader over a Dataset doing vtab.pil_pipeline per item every
              epoch (PIL decode + bicubic resize + ToTensor + Normalize), fp32; once per
              --workers value (worker start-up paid every epoch, as the original)
  full        the same ViT fully fine-tuned (no GLoRA), our data path, --precision

Each case runs in ``--rounds`` chunks of ``--seconds / --rounds`` timed seconds (whole epochs),
the cases alternating, each chunk on a freshly built model after two untimed warm-up steps; a
ratio is the median over rounds of the paired per-round ratios to the first case. Peak memory:
torch.cuda.max_memory_allocated per case on CUDA; the process's peak RSS (and its DataLoader
workers') on the CPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import glora
import vtab
from glora.run.engine import train_one_epoch
from glora.run.backbone import autocast_dtype, build_model, resolve_device
from bench_data import TASK, PerItemDataset, make_task  # same folder (run as a script)

TINY_KWARGS = '{"patch_size": 4, "embed_dim": 192, "depth": 4, "num_heads": 3}'
CASES = ("glora", "glora-fp32", "pil", "full")


@dataclass
class Case:
    """One way of training: what trains, where batches come from, and the autocast dtype."""

    name: str
    glora: bool
    pil_workers: int | None  # None: our decode-once Loader
    amp: torch.dtype | None

    def describe(self) -> str:
        data = "decode once, resident Loader" if self.pil_workers is None else \
            f"per-epoch PIL, DataLoader {self.pil_workers} workers"
        what = "GLoRA supernet (sampling)" if self.glora else "full fine-tuning"
        precision = "fp32" if self.amp is None else f"{self.amp}".replace("torch.", "") + " autocast"
        return f"{what}, {data}, {precision}"


class DeviceBatches:
    """A DataLoader's batches copied to the device (pinned, asynchronous on CUDA)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@dataclass
class Data:
    """The generated task, decoded once, and one fixed batch for the warm-up steps."""

    folder: Path
    split: vtab.Split
    warm_batch: tuple[torch.Tensor, torch.Tensor]
    decode_seconds: float


def prepare_data(args: argparse.Namespace, root: Path, device: torch.device) -> Data:
    folder = make_task(root, args.images, args.source_size, args.source_size, coarse=8, tint=True)
    start = time.perf_counter()
    split = vtab.load_split(root, TASK, "train800", args.input_size, progress=False)
    decode_seconds = time.perf_counter() - start
    first = vtab.Loader(split, args.batch_size, shuffle=False, drop_last=True, device=device,
                        resident=False)
    x, y = next(iter(first))
    # Same tensors on both paths (and the first pil_pipeline call imports torchvision here).
    diff = (x[0].cpu() - vtab.pil_pipeline(folder / split.paths[0], args.input_size)).abs().max()
    if diff > 1e-5:
        raise RuntimeError(f"decode-once and per-item PIL tensors differ by {diff}")
    return Data(folder, split, (x, y), decode_seconds)


def build_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    amp = autocast_dtype(args.precision, device)
    cases = []
    for name in args.cases.split(","):
        if name == "glora":
            cases.append(Case("glora", True, None, amp))
        elif name == "glora-fp32":
            cases.append(Case("glora-fp32", True, None, None))
        elif name == "pil":
            cases += [Case(f"pil-w{w}", True, int(w), None) for w in args.workers.split(",")]
        elif name == "full":
            cases.append(Case("full", False, None, amp))
        else:
            raise SystemExit(f"error: unknown case {name!r}; valid: {', '.join(CASES)}")
    return cases


def build_trainee(args: argparse.Namespace, case: Case, device: torch.device):
    """A fresh model (GLoRA supernet or fully trainable) and its AdamW, on the device."""
    torch.manual_seed(args.seed)
    kwargs = {"img_size": args.input_size, **args.model_kwargs}
    model = build_model(args.model, vtab.resolve_task(TASK).num_classes, args.pretrained, kwargs,
                        drop_path_rate=0.1)
    if case.glora:
        glora.inject_glora(model, args.rank)
        glora.mark_trainable(model)
        glora.set_subnet(model, None, seed=args.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # As supernet.py: the fused AdamW kernel on CUDA (every case, so only data/precision differ).
    return model, torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")


def make_loader(args: argparse.Namespace, case: Case, data: Data, device: torch.device):
    if case.pil_workers is None:
        return vtab.Loader(data.split, args.batch_size, shuffle=True, drop_last=True,
                           seed=args.seed, device=device)
    loader = torch.utils.data.DataLoader(
        PerItemDataset(data.folder, args.input_size), batch_size=args.batch_size,
        shuffle=True, drop_last=True, num_workers=case.pil_workers,
        pin_memory=device.type == "cuda")
    return DeviceBatches(loader, device)


def run_chunk(args: argparse.Namespace, case: Case, data: Data, device: torch.device,
              seconds: float) -> dict:
    """Whole epochs of one case until ``seconds`` have passed; images/s and peak memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, optimizer = build_trainee(args, case, device)
    loader = make_loader(args, case, data, device)
    warm = DeviceBatches([data.warm_batch] * 2, device)  # untimed: kernels, AdamW state, allocator
    train_one_epoch(model, warm, optimizer, device, 0, case.amp, progress=False)
    images, epoch, start = 0, 0, time.perf_counter()
    while epoch == 0 or time.perf_counter() - start < seconds:
        if isinstance(loader, vtab.Loader):
            loader.set_epoch(epoch)
        stats = train_one_epoch(model, loader, optimizer, device, epoch + 1, case.amp,
                                progress=False)  # ends with loss.item(): synchronised
        images += stats["steps"] * args.batch_size
        epoch += 1
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"ips": images / elapsed, "epochs": epoch, "loss": stats["loss"], "peak": peak,
            "trainable": trainable}


def run_all(args: argparse.Namespace, cases: list[Case], data: Data, device: torch.device) -> dict:
    """``--rounds`` rounds over the cases, the order alternating; results per case per round."""
    results = {case.name: [] for case in cases}
    for r in range(args.rounds):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            if any("error" in run for run in results[case.name]):
                continue
            try:
                last = run_chunk(args, case, data, device, args.seconds / args.rounds)
            except RuntimeError as err:  # e.g. DataLoader workers out of shared memory
                last = {"error": str(err).splitlines()[0][:200]}
                print(f"  round {r + 1}/{args.rounds} {case.name}: failed: {last['error']}", flush=True)
            else:
                print(f"  round {r + 1}/{args.rounds} {case.name}: {last['ips']:.1f} images/s "
                      f"({last['epochs']} epochs, loss {last['loss']:.3f})", flush=True)
            results[case.name].append(last)
    return results


def report(cases: list[Case], results: dict) -> str:
    """A markdown table: median images/s per case and paired ratios to the first case."""
    ref = results[cases[0].name]
    lines = [f"| case | what | trainable params | images/s (median) | ratio vs {cases[0].name} | "
             "epochs timed | peak device memory |", "|---|---|---|---|---|---|---|"]
    for case in cases:
        runs = results[case.name]
        if any("error" in r for r in runs):
            error = next(r["error"] for r in runs if "error" in r)
            lines.append(f"| {case.name} | {case.describe()} | - | failed: {error} | - | - | - |")
            continue
        ips = statistics.median(r["ips"] for r in runs)
        ratio = "-" if any("error" in r for r in ref) else \
            f"{statistics.median(a['ips'] / b['ips'] for a, b in zip(runs, ref)):.2f}"
        peaks = [r["peak"] for r in runs if r["peak"] is not None]
        peak = f"{max(peaks) / 2**30:.2f} GiB" if peaks else "-"
        lines.append(f"| {case.name} | {case.describe()} | {runs[0]['trainable']:,} | {ips:.1f} | "
                     f"{ratio} | {sum(r['epochs'] for r in runs)} | {peak} |")
    return "\n".join(lines)


def peak_rss_line() -> str:
    """Peak resident memory of this process and of its (finished) DataLoader workers."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux -> MiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
    return f"peak RSS: process {own:.0f} MiB (all cases together), largest worker {children:.0f} MiB"


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line arguments of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", type=str, default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", type=str, default="vit_tiny_patch16_224")
    p.add_argument("--model-kwargs", type=json.loads, default=json.loads(TINY_KWARGS),
                   help=f"timm.create_model arguments as JSON (default {TINY_KWARGS}; img_size is "
                        "--input-size)")
    p.add_argument("--pretrained", type=str, default="none", help="backbone weights file, or none")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--images", type=int, default=256, help="generated training images")
    p.add_argument("--source-size", type=int, default=64, help="side of the generated JPEGs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--precision", type=str, default="auto", choices=("auto", "bf16", "fp32"),
                   help="of the glora and full cases (pil is always fp32, as the original)")
    p.add_argument("--cases", type=str, default="glora,pil,full", help=f"comma list of {CASES}")
    p.add_argument("--workers", type=str, default="0,2", help="DataLoader workers of pil, comma list")
    p.add_argument("--seconds", type=float, default=20, help="timed seconds per case (all rounds)")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0 = torch's default; 1 suits a shared 2-core CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"{args.model} {json.dumps(args.model_kwargs)}, input {args.input_size}, "
          f"{args.images} generated JPEGs of {args.source_size}x{args.source_size}, batch "
          f"{args.batch_size}, rank {args.rank}; {args.seconds:g} s per case in {args.rounds} "
          f"round(s); {where}; torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    cases = build_cases(args, device)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args, Path(tmp), device)
        print(f"decode once (vtab.load_split, one-time, not in the rates): "
              f"{data.decode_seconds:.2f} s", flush=True)
        results = run_all(args, cases, data, device)
    print()
    print(report(cases, results))
    print(f"\n{peak_rss_line()}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
