"""GPU throughput of the whole GLoRA recipe, and the wall time of a 19-task VTAB-1k run from it.

    python benchmarks/bench_gpu.py                      # CUDA: ViT-B/16 (random init), 224 px,
                                                        # fp32 weights with TF32 matmuls (the default)
    python benchmarks/bench_gpu.py --precision bf16     # the same under bf16 autocast
    python benchmarks/bench_gpu.py --tiny               # the same code on the CPU at tiny sizes

Everything runs through the project's own loops: ``vtab.Loader`` with the uint8 split resident
on the device (normalised there), ``glora.run.engine.train_one_epoch`` (AdamW, fused on CUDA, as
supernet.py), and for the search ``CandidateModel.load`` + ``glora.run.engine.evaluate`` on 200
images (as evolution.py scores a candidate). The images are random uint8 pixels: the cost does not
depend on their content. Measured:

  supernet     GLoRA sampling mode at --batch-size, then at doubling batches until one does not
               fit (largest that fits: images/s and peak memory)
  lora         the fixed LoRA subnet (B = LoRA_r everywhere, freeze_unused)
  full         full fine-tuning of the same ViT
  search       candidates scored per second (merge + evaluate on 200 images)
  compiled     lora and search again with glora.run.compile.compile_fixed (torch.compile), with the
               compile time (first epoch / first candidate) apart; --no-compile skips them

Peak memory is torch.cuda.max_memory_allocated per case. The extrapolation assumes, per task, the
paper's 500 supernet epochs of 1,000 images (train800val200) plus a default search (50 + 20 x 50 =
1,050 candidates), one task at a time on one GPU.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import glora
import vtab
from glora.run.compile import compile_fixed
from glora.run.engine import evaluate, train_one_epoch
from glora.merge import CandidateModel
from glora.run.backbone import autocast_dtype, build_model, resolve_device, set_matmul_numerics
from glora.space import preset_subnet, sample_choice

TINY = dict(device="cpu", model="vit_tiny_patch16_224", input_size=32, images=96, batch_size=16,
            max_batch=64, seconds=2.0, candidates=4, search_images=40,
            model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})
CANDIDATES_PER_SEARCH = 50 + 20 * (25 + 25)  # population + generations x (mutations + crossovers)


def synthetic_split(n: int, size: int, classes: int, seed: int = 0) -> vtab.Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return vtab.Split(images, labels, "synthetic", "train")


def build(args: argparse.Namespace, mode: str, device: torch.device) -> torch.nn.Module:
    """ViT (random init) for one mode: 'supernet', 'lora' (fixed subnet) or 'full'."""
    torch.manual_seed(0)
    kwargs = {"img_size": args.input_size, **args.model_kwargs}
    model = build_model(args.model, args.classes, None, kwargs, drop_path_rate=0.1)
    if mode != "full":
        names = glora.inject_glora(model, args.rank)
        glora.mark_trainable(model)
        if mode == "lora":
            glora.set_subnet(model, preset_subnet("lora", len(names), args.rank))
            glora.freeze_unused(model)
        else:
            glora.set_subnet(model, None, seed=0)
    return model.to(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def train_rate(args, mode: str, batch: int, device: torch.device, amp, compiled=False) -> dict:
    """Images/s of whole epochs of train_one_epoch for ``args.seconds`` (after one warm-up epoch)."""
    reset_peak(device)
    model = compile_fixed(build(args, mode, device), compiled)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")
    split = synthetic_split(max(args.images, 2 * batch), args.input_size, args.classes)
    loader = vtab.Loader(split, batch, shuffle=True, drop_last=True, seed=0, device=device)
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, device, 0, amp, progress=False)  # warm-up
    warmup = time.perf_counter() - start
    images, epoch, start = 0, 1, time.perf_counter()
    while epoch == 1 or time.perf_counter() - start < args.seconds:
        loader.set_epoch(epoch)
        stats = train_one_epoch(model, loader, optimizer, device, epoch, amp, progress=False)
        images, epoch = images + stats["steps"] * batch, epoch + 1  # ends with .item(): synced
    rate = images / (time.perf_counter() - start)
    return {"mode": mode + (" (compiled)" if compiled else ""), "batch": batch, "ips": rate,
            "peak_gib": peak_gib(device), "trainable": sum(p.numel() for p in params),
            "warmup_s": warmup}


def largest_batch(args, device: torch.device, amp) -> dict | None:
    """Supernet rate at doubling batches above --batch-size until one runs out of memory."""
    best, batch = None, 2 * args.batch_size
    while batch <= args.max_batch:
        try:
            best = train_rate(args, "supernet", batch, device, amp)
        except torch.OutOfMemoryError:
            break
        finally:
            reset_peak(device)
        print(f"  supernet batch {batch}: {best['ips']:.0f} images/s", flush=True)
        batch *= 2
    return best


def search_rate(args, device: torch.device, amp, compiled=False) -> dict:
    """Candidates scored per second on ``--search-images`` images, as evolution.py scores them."""
    reset_peak(device)
    model = build(args, "supernet", device)
    candidate = CandidateModel(model)
    compile_fixed(candidate.plain, compiled)
    split = synthetic_split(args.search_images, args.input_size, args.classes, seed=1)
    loader = vtab.Loader(split, args.eval_batch_size, shuffle=False, drop_last=False, device=device)
    rng = random.Random(0)
    layers = len(glora.glora_layers(model))
    subnets = [[sample_choice(rng, args.rank) for _ in range(layers)]
               for _ in range(args.candidates + 1)]
    start = time.perf_counter()
    evaluate(candidate.load(subnets[0]), loader, device, amp)  # warm-up (and compilation)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for subnet in subnets[1:]:
        evaluate(candidate.load(subnet), loader, device, amp)  # ends with .item(): synced
    rate = args.candidates / (time.perf_counter() - start)
    return {"cps": rate, "peak_gib": peak_gib(device), "warmup_s": warmup}


def report(results: dict, args: argparse.Namespace, where: str) -> str:
    gib = lambda r: "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
    rows = ["| case | batch | images/s | peak memory (GiB) | trainable params | first epoch (s) |",
            "|---|---|---|---|---|---|"]
    for key in ("supernet", "supernet_max", "lora", "full", "lora_compiled"):
        r = results.get(key)
        if r:
            label = "supernet (largest batch that fits)" if key == "supernet_max" else r["mode"]
            rows.append(f"| {label} | {r['batch']} | {r['ips']:.0f} | {gib(r)} | {r['trainable']:,} | "
                        f"{r['warmup_s']:.1f} |")
    s = results["search"]
    rows.append(f"\nSearch: {s['cps']:.2f} candidates scored per second on {args.search_images} "
                f"images (peak {gib(s)} GiB).")
    if results.get("search_compiled"):
        c = results["search_compiled"]
        rows.append(f"Search, compiled scoring model: {c['cps']:.2f} candidates per second "
                    f"({c['cps'] / s['cps']:.2f}x), after {c['warmup_s']:.0f} s for the first.")
    train_ips = max(results["supernet"]["ips"], (results.get("supernet_max") or {}).get("ips", 0))
    per_task = 500 * 1000 / train_ips + CANDIDATES_PER_SEARCH / s["cps"]
    rows.append(f"Extrapolated VTAB-1k GLoRA run (19 tasks x (500 epochs x 1,000 images at "
                f"{train_ips:.0f} images/s + {CANDIDATES_PER_SEARCH} candidates)), one task at a "
                f"time: {per_task / 60:.1f} min per task, {19 * per_task / 3600:.2f} h in all.")
    return f"{where}\n\n" + "\n".join(rows)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (checks the code path)")
    p.add_argument("--device", type=str, default="cuda", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", type=str, default="vit_base_patch16_224_in21k")
    p.add_argument("--model-kwargs", type=json.loads, default={})
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--precision", type=str, default="auto", choices=("auto", "bf16", "fp32"),
                   help="as the CLIs: auto = fp32 weights, TF32 matmuls on CUDA; bf16 = autocast")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--images", type=int, default=1000, help="training images (a VTAB-1k task)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=2048, help="largest supernet batch tried")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per training case")
    p.add_argument("--candidates", type=int, default=30, help="timed search candidates")
    p.add_argument("--search-images", type=int, default=200)
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile cases")
    p.add_argument("--out", type=str, default=None, help="also write the table to this file")
    return p


def main(args: argparse.Namespace) -> None:
    if args.tiny:
        vars(args).update(TINY)
    device = resolve_device(args.device)
    set_matmul_numerics(args.precision, device)  # as supernet.py and evolution.py
    amp = autocast_dtype(args.precision, device)
    numerics = "bf16 autocast" if amp is not None else (
        "fp32, TF32 matmuls" if torch.backends.cuda.matmul.allow_tf32 and device.type == "cuda" else "fp32")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU") + \
        f"; {args.model} {json.dumps(args.model_kwargs)} at {args.input_size} px, " \
        f"--precision {args.precision} ({numerics}); torch {torch.__version__}"
    print(where, flush=True)
    start, results = time.perf_counter(), {}
    for mode in ("supernet", "lora", "full"):
        results[mode] = train_rate(args, mode, args.batch_size, device, amp)
        print(f"  {mode} batch {args.batch_size}: {results[mode]['ips']:.0f} images/s", flush=True)
    results["supernet_max"] = largest_batch(args, device, amp)
    results["search"] = search_rate(args, device, amp)
    if args.compile:
        results["lora_compiled"] = train_rate(args, "lora", args.batch_size, device, amp, compiled=True)
        results["search_compiled"] = search_rate(args, device, amp, compiled=True)
    text = report(results, args, where) + f"\n\n({time.perf_counter() - start:.0f} s in all)"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
