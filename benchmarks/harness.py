"""What the benchmarks share: the tiny timm ViT they time, the train and inference steps, and the
side-by-side timer (cases interleaved, the order alternating between repeats; a ratio is the median
of the paired per-repeat ratios, robust to a shared machine), with the common command line.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import glora
from glora.run.backbone import build_model
from glora.space import sample_choice


MODEL = "vit_tiny_patch16_224"


def build_vit(args: argparse.Namespace, seed: int = 0) -> nn.Module:
    """The benchmark's ViT (random init; the same weights for the same seed)."""
    torch.manual_seed(seed)
    kwargs = dict(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                  depth=args.depth, num_heads=args.heads)
    return build_model(MODEL, args.classes, None, kwargs, drop_path_rate=0.1)


def linear_probe(model: nn.Module) -> nn.Module:
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("head."))
    return model


def randomize_glora(model: nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".glora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def glora_supernet(model: nn.Module, rank: int) -> nn.Module:
    """Inject GLoRA, train only glora_* and the head, sample a choice per layer per forward."""
    glora.inject_glora(model, rank)
    randomize_glora(model)  # non-zero supports: the timing does not depend on it, the checks do
    glora.mark_trainable(model)
    glora.set_subnet(model, None, seed=0)
    return model


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure doing one forward + backward + AdamW step (the supernet's lr and wd)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-4, weight_decay=1e-4)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def infer_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)
    return step


# The timer of ``interleaved``: wall time, or with one torch thread (``--clock cpu``) the
# process's CPU time, which time spent descheduled by other jobs on a shared machine does not
# inflate (memory-bandwidth contention still does).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def set_clock(name: str, threads: int) -> str:
    """Choose the timer (``auto``: CPU time with one thread, else wall time); return its name."""
    global clock
    name = ("cpu" if threads == 1 else "wall") if name == "auto" else name
    clock = CLOCK[name]
    return name


def interleaved(cases: dict[str, Callable[[], None]], steps: int, repeats: int,
                warmup: int = 2) -> dict[str, list[float]]:
    """ms per step of each case, per repeat; the case order alternates between repeats."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for r in range(repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in order:
            start = clock()
            for _ in range(steps):
                cases[name]()
            times[name].append(1e3 * (clock() - start) / steps)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def table(times: dict[str, list[float]], rows: list[tuple[str, str, str]], extra: dict) -> str:
    """Markdown rows ``(label, case, reference case)``: median ms and the paired ratio."""
    head = "| case | ms / step (median) | ratio | trainable params |\n|---|---|---|---|"
    lines = [head]
    for label, case, ref in rows:
        ratio = f"{paired_ratio(times, case, ref):.2f}x {ref}" if ref != case else "1.00 (reference)"
        lines.append(f"| {label} | {statistics.median(times[case]):.2f} | {ratio} | "
                     f"{extra.get(case, '-')} |")
    return "\n".join(lines)


def bench_inference(args, x) -> tuple[str, float]:
    """Inference: plain timm vs merged GLoRA, and unmerged fixed-subnet GLoRA vs merged."""
    plain = build_vit(args)
    fixed = build_vit(args)
    glora.inject_glora(fixed, args.rank)
    randomize_glora(fixed)
    rng = random.Random(2)
    glora.set_subnet(fixed, [sample_choice(rng, args.rank) for _ in glora.glora_layers(fixed)])
    merged = glora.merge_glora(copy.deepcopy(fixed))
    build_vit(args).load_state_dict(merged.state_dict(), strict=True)  # plain timm keys again
    fixed.eval(), merged.eval()
    with torch.inference_mode():
        diff = (fixed(x) - merged(x)).abs().max().item()
    cases = {"plain": infer_step(plain, x), "merged": infer_step(merged, x),
             "unmerged": infer_step(fixed, x)}
    times = interleaved(cases, args.steps, args.repeats)
    c = table(times, [("plain timm ViT", "plain", "plain"),
                      ("GLoRA merged (merge_glora: plain nn.Linear)", "merged", "plain"),
                      ("GLoRA unmerged, fixed subnet (W' recomputed per forward)", "unmerged",
                       "merged")], {})
    return c, diff


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line arguments of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    p.add_argument("--embed-dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="steps per case per repeat")
    p.add_argument("--repeats", type=int, default=6, help="interleaved repeats (medians)")
    p.add_argument("--clock", type=str, default="auto", choices=("auto", "cpu", "wall"),
                   help="timer: process CPU time (auto with --threads 1) or wall time")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: on a shared 2-core machine, 2 threads made every "
                        "op wait for the busy core, 3-4x slower and noisy; 0 = torch's default)")
    return p


def prepare(args: argparse.Namespace, quick: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply --quick, --threads and --clock, print the set-up line, return a seeded batch (x, y)."""
    if args.quick:
        vars(args).update(quick)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = set_clock(args.clock, torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=gen)
    tokens = (args.img_size // args.patch_size) ** 2 + 1
    print(f"{MODEL}: embed_dim {args.embed_dim}, depth {args.depth}, heads {args.heads}, "
          f"input {args.img_size} / patch {args.patch_size} ({tokens} tokens), batch "
          f"{args.batch_size}, rank {args.rank}; {args.steps} steps x {args.repeats} interleaved "
          f"repeats ({args.clock} time); torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), CPU\n", flush=True)
    return x, y
