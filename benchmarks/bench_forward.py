"""The structure-aware GLoRA forward: train-step ratios, step memory, inference and host costs.

    python benchmarks/bench_forward.py                 # width 384, depth 4, batch 64, 1 thread
    python benchmarks/bench_forward.py --quick         # smoke run (tiny sizes)
    python benchmarks/bench_forward.py --cases supernet,supernet-naive,lora,full

One process, one ViT (``vit_tiny_patch16_224`` with the sizes given, random init, drop_path
0.1), one fixed batch; every case is a train step (forward + cross-entropy + backward + AdamW)
timed side by side with the harness's ``interleaved`` (case order alternating between repeats;
a ratio is the median of the paired per-repeat ratios). Cases:

  full             full fine-tuning, no GLoRA
  probe            frozen backbone, head trains (the floor)
  supernet         GLoRA sampling mode, the layer's forward (ours)
  supernet-old     the same with the previous forward: W', b' materialised, one F.linear
  supernet-naive   materialise everything: every support a tensor, every term (reference.py)
  <preset>         a fixed subnet (linear_probe, lora, bitfit, ssf, largest) with
                   freeze_unused, as supernet.py --subnet trains it; lora-old: the previous forward

Memory per case (CPU, so counted rather than sampled): the tensors autograd saves for the
backward (unique storages, frozen parameters excluded), plus gradients and AdamW state of the
trainable tensors. Inference: merged model vs plain timm. Host costs: drawing one subnet's
choices per step (per-layer dicts parsed afterwards, as before, vs one draw into parsed plans),
and a layer's Python overhead per forward + backward at negligible tensor sizes.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch
from torch import nn

import glora
from glora.sampler import ChoiceSampler, plan_of
from glora.space import PRESETS, preset_subnet, sample_choice
import harness
import reference

DEFAULT_CASES = ("full,probe,supernet,supernet-old,supernet-naive,linear_probe,lora,lora-old,"
                 "bitfit,ssf,largest")
QUICK = dict(embed_dim=32, depth=2, img_size=32, patch_size=8, heads=2, batch_size=16, steps=2,
             repeats=3)


def build_case(name: str, args: argparse.Namespace) -> nn.Module:
    """A fresh model for one case, its trainable set as that case trains it."""
    model = harness.build_vit(args)
    if name == "full":
        return model
    if name == "probe":
        return harness.linear_probe(model)
    model = harness.glora_supernet(model, args.rank)  # inject, non-zero supports, sampling mode
    if name == "supernet":
        return model
    if name in ("supernet-old", "supernet-naive"):
        layer = reference.MaterialisedGLoRALinear if name == "supernet-old" else reference.NaiveGLoRALinear
        return reference.naive_copy(model, layer)
    preset, old = (name[:-4], True) if name.endswith("-old") else (name, False)
    if preset not in PRESETS:
        raise SystemExit(f"error: unknown case {name!r}")
    if old:
        model = reference.naive_copy(model, reference.MaterialisedGLoRALinear)
    glora.set_subnet(model, preset_subnet(preset, len(glora.glora_layers(model)), args.rank))
    glora.freeze_unused(model)
    return model


def step_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(MiB saved for backward, MiB of grads + AdamW state) of one train step."""
    frozen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in frozen:
            saved[ptr] = t.untyped_storage().nbytes()
        return t
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    state = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return sum(saved.values()) / 2**20, state / 2**20


def best_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Ratio of the fastest repeats: other jobs on a shared machine only ever add time."""
    return min(times[num]) / min(times[den])


def bench_train(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> str:
    names = args.cases.split(",")
    models = {name: build_case(name, args) for name in names}
    memory = {name: step_memory(m, x, y) for name, m in models.items()}
    times = harness.interleaved({n: harness.train_step(m, x, y) for n, m in models.items()},
                           args.steps, args.repeats)
    refs = {"supernet": "supernet-naive", "supernet-old": "supernet-naive",
            "supernet-naive": "supernet-naive"}
    lines = ["| case | ms / step (median) | ratio (paired median; of best times) | vs full | "
             "trainable params | saved for backward (MiB) | grads + AdamW (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        ref = refs.get(name, name[:-4] if name.endswith("-old") and name[:-4] in names else "full")
        ratio = "-" if ref not in times or ref == name else \
            f"{harness.paired_ratio(times, name, ref):.3f}; {best_ratio(times, name, ref):.3f} x {ref}"
        vs_full = f"{harness.paired_ratio(times, name, 'full'):.3f}" if "full" in times else "-"
        act, state = memory[name]
        lines.append(f"| {name} | {statistics.median(times[name]):.1f} | {ratio} | {vs_full} | "
                     f"{harness.trainable(models[name]):,} | {act:.1f} | {state:.1f} |")
    if "supernet-old" in times and "supernet" in times:
        lines.append(f"\nsupernet (ours) vs supernet-old: "
                     f"{harness.paired_ratio(times, 'supernet', 'supernet-old'):.3f}x")
    return "\n".join(lines)


def bench_inference(args: argparse.Namespace, x: torch.Tensor) -> str:
    """Merged GLoRA model vs plain timm (and the unmerged fixed subnet vs merged)."""
    table, diff = harness.bench_inference(args, x)
    return f"max |unmerged - merged| {diff:.1e}\n\n{table}"


def bench_host(layers: int, rank: int, draws: int = 2000) -> str:
    """Host-side cost per step of choosing every layer's path, and a layer's Python overhead."""
    rng = random.Random(0)
    start = time.perf_counter()
    for _ in range(draws):  # before: one dict per layer, its strings parsed (cached) afterwards
        for _ in range(layers):
            plan_of(sample_choice(rng, rank), rank)
    before = (time.perf_counter() - start) / draws * 1e6
    sampler = ChoiceSampler(0)
    stubs = [glora.GLoRALinear(torch.zeros(1, 1), None, rank) for _ in range(layers)]
    sampler.bind(stubs)
    start = time.perf_counter()
    for _ in range(draws):
        for stub in stubs:
            sampler.next_plan(stub)
    after = (time.perf_counter() - start) / draws * 1e6
    lines = [f"Choosing {layers} layers' paths per step: {before:.0f} us before, {after:.0f} us "
             f"now ({before / after:.1f}x less).", "",
             "| layer forward + backward, in = out = 8, 1 token | us / call (median) | ratio |",
             "|---|---|---|"]
    x = torch.randn(1, 8, requires_grad=True)
    cases = {}
    for label, cls in (("ours", glora.GLoRALinear), ("previous forward", reference.MaterialisedGLoRALinear)):
        torch.manual_seed(0)
        layer = cls(torch.randn(8, 8), torch.randn(8), rank)
        layer.sampler = ChoiceSampler(1)  # not bound: one draw per call, as a lone layer

        def call(layer=layer):
            layer(x).sum().backward()
        cases[label] = call
    times = harness.interleaved(cases, steps=500, repeats=7)
    for label in cases:
        lines.append(f"| {label} (sampling) | {1e3 * statistics.median(times[label]):.0f} | "
                     f"{harness.paired_ratio(times, label, 'previous forward'):.2f} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = harness.get_args_parser()
    p.description = __doc__.split("\n")[0]
    p.set_defaults(embed_dim=384, heads=6, steps=3, repeats=5)
    p.add_argument("--cases", type=str, default=DEFAULT_CASES, help="comma list of train cases")
    p.add_argument("--skip", type=str, default="", help="comma list of: train,inference,host")
    return p


def main(args: argparse.Namespace) -> None:
    x, y = harness.prepare(args, QUICK)
    start, skip = time.perf_counter(), set(args.skip.split(","))
    if "train" not in skip:
        print("Train step (forward + backward + AdamW):\n")
        print(bench_train(args, x, y), flush=True)
    if "inference" not in skip:
        print("\nInference (eval, inference_mode):", bench_inference(copy.copy(args), x), sep="\n")
    if "host" not in skip:
        print("\nHost costs:\n")
        print(bench_host(4 * args.depth if not args.quick else 8, args.rank))
        print(bench_host(48, args.rank).split("\n")[0], "(ViT-B/16's 48 layers)")
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
