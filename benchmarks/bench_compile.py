"""torch.compile where the graph is fixed: search scoring / evaluation and fixed-subnet training.

    python benchmarks/bench_compile.py                 # width 384, depth 4, one thread, CPU
    python benchmarks/bench_compile.py --quick

Two uses whose graph does not change from step to step (supernet sampling changes the path of
every layer at every step, so it would recompile and is not a candidate):

  scoring   the merged plain model that evolution.py evaluates every candidate with
            (CandidateModel: the weights of each candidate are copied into the same tensors),
            eval + inference_mode, a batch of --eval-images
  lora      a fixed LoRA subnet train step (forward + backward + AdamW), --batch-size

Each is timed eager vs ``torch.compile(model)`` side by side (the harness's interleaved repeats,
paired ratios); the compile time (first call) and the number of graphs compiled while candidates
change are reported.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import glora
from glora.merge import CandidateModel
from glora.space import preset_subnet, sample_choice
import harness

QUICK = dict(embed_dim=32, depth=2, img_size=32, patch_size=8, heads=2, batch_size=16,
             eval_images=32, steps=2, repeats=3)


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def timed_first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_scoring(args: argparse.Namespace) -> str:
    model = harness.glora_supernet(harness.build_vit(args), args.rank)
    candidate = CandidateModel(model)
    plain = candidate.plain.eval()
    compiled = torch.compile(plain)
    x = torch.randn(args.eval_images, 3, args.img_size, args.img_size)
    rng = random.Random(0)
    layers = len(glora.glora_layers(model))
    subnets = [[sample_choice(rng, args.rank) for _ in range(layers)] for _ in range(4)]

    def run(m):
        def call():
            candidate.load(subnets[run.i % len(subnets)])  # a new candidate every call
            run.i += 1
            with torch.inference_mode():
                m(x)
        return call
    run.i = 0
    before = graphs_compiled()
    first = timed_first_call(run(compiled))
    times = harness.interleaved({"eager": run(plain), "compiled": run(compiled)}, args.steps,
                           args.repeats)
    graphs = graphs_compiled() - before
    with torch.inference_mode():
        diff = (compiled(x) - plain(x)).abs().max().item()
    return (f"| scoring (merged plain model, {args.eval_images} images) | "
            f"{statistics.median(times['eager']):.1f} | {statistics.median(times['compiled']):.1f} | "
            f"{harness.paired_ratio(times, 'compiled', 'eager'):.3f} | {first:.0f} | {graphs} | {diff:.1e} |")


def bench_lora(args: argparse.Namespace) -> str:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=gen)
    models = {}
    for label in ("eager", "compiled"):
        model = harness.glora_supernet(harness.build_vit(args), args.rank)
        glora.set_subnet(model, preset_subnet("lora", len(glora.glora_layers(model)), args.rank))
        glora.freeze_unused(model)
        models[label] = model
    compiled = torch.compile(models["compiled"])
    steps = {"eager": harness.train_step(models["eager"], x, y), "compiled": harness.train_step(compiled, x, y)}
    before = graphs_compiled()
    first = timed_first_call(steps["compiled"])
    times = harness.interleaved(steps, args.steps, args.repeats)
    graphs = graphs_compiled() - before
    return (f"| fixed LoRA subnet train step (batch {args.batch_size}) | "
            f"{statistics.median(times['eager']):.1f} | {statistics.median(times['compiled']):.1f} | "
            f"{harness.paired_ratio(times, 'compiled', 'eager'):.3f} | {first:.0f} | {graphs} | - |")


def get_args_parser() -> argparse.ArgumentParser:
    p = harness.get_args_parser()
    p.description = __doc__.split("\n")[0]
    p.set_defaults(embed_dim=384, heads=6, steps=3, repeats=5)
    p.add_argument("--eval-images", type=int, default=200, help="images per scoring call")
    p.add_argument("--cases", type=str, default="scoring,lora")
    return p


def main(args: argparse.Namespace) -> None:
    harness.prepare(args, QUICK)  # the cases below build their own inputs
    start = time.perf_counter()
    rows = ["| use | eager ms | compiled ms | compiled / eager | compile s (first call) | "
            "graphs compiled | max abs diff |", "|---|---|---|---|---|---|---|"]
    for case in args.cases.split(","):
        rows.append(bench_scoring(args) if case == "scoring" else bench_lora(args))
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
