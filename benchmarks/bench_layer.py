"""GLoRA layer cost: training step vs full fine-tuning, vs a naive layer, and merged inference.

    python benchmarks/bench_layer.py [--quick] [--embed-dim 192 --depth 4 --img-size 32
        --patch-size 4 --heads 3 --batch-size 64 --rank 4 --steps 4 --repeats 6 --threads 1]

One process, one tiny timm ViT configuration (``vit_tiny_patch16_224`` with the sizes above,
random init, drop_path 0.1 as ``supernet.py``), one fixed batch. Cases are timed side by side:
every repeat runs each case for ``--steps`` steps, the order alternating between repeats, and a
ratio is the median over repeats of the paired per-repeat ratios (robust to a shared machine).

(a) train step (forward + backward + AdamW) of GLoRA in supernet sampling mode (inject_glora,
    mark_trainable, set_subnet(model, None, seed=0)) vs the same ViT fully trainable; a linear
    probe (frozen backbone, trainable head) is the floor.
(b) our GLoRALinear vs a naive layer written here that, like the original code, turns every
    support into a tensor on every forward ('none' as freshly allocated zeros of the support's
    full shape) and computes every term of W' = W0 + W0*A + B and b' = b0 + b0*D + E + W0 C;
    both in sampling mode, same storage, same seeded choices.
(c) inference (eval, inference_mode): the merged model vs a plain timm model (merge_glora leaves
    plain nn.Linear layers, so ~1.0), and the unmerged GLoRA model with a fixed subnet vs merged.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

import glora
from glora.inject import replace_module
from glora.layer import GLoRALinear
from glora.model import build_model
from glora.space import parse_option, sample_choice

MODEL = "vit_tiny_patch16_224"
QUICK = dict(embed_dim=32, depth=2, img_size=32, patch_size=8, heads=2, batch_size=16, steps=2,
             repeats=3)


class MaterialisedGLoRALinear(GLoRALinear):
    """The previous forward: W', b' materialised (``none`` supports skipped), one ``F.linear``.

    Every choice but all-``none`` pays the (out x in) weight-gradient GEMM of W', and under bf16
    autocast the cast of W' rounds the increment to a step of |W0|.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.current_choice()
        self.last_choice = choice
        return F.linear(x, *self.merged_weight_bias(choice))


class NaiveGLoRALinear(MaterialisedGLoRALinear):
    """The original code's way of computing W', b': every support a tensor, every term computed.

    Same storage and sampler as :class:`GLoRALinear`; only ``merged_weight_bias`` differs. The
    option strings are parsed on every call, and 'none' is a fresh zero tensor (on the weight's
    device, so unlike the original it does not need CUDA).
    """

    def merged_weight_bias(self, choice: Mapping[str, str]):
        out, inp, w0 = self.out_features, self.in_features, self.weight
        a = self._dense("A", choice, self.glora_Ad, self.glora_Au, (out, inp))
        b = self._dense("B", choice, self.glora_Bd, self.glora_Bu, (out, inp))
        c = self._dense("C", choice, self.glora_Cd, self.glora_Cu, (inp, 1))
        d = self._dense("D", choice, self.glora_D.unsqueeze(1), None, (out, 1)).squeeze(1)
        e = self._dense("E", choice, self.glora_E.unsqueeze(1), None, (out, 1)).squeeze(1)
        b0 = self.bias if self.bias is not None else torch.zeros(out, dtype=w0.dtype, device=w0.device)
        weight = w0 + w0 * a + b  # (out, in)
        bias = b0 + b0 * d + e + (w0 @ c).squeeze(1)  # (out,)
        return weight, bias

    def _dense(self, support: str, choice, down: torch.Tensor, up: torch.Tensor | None,
               shape: tuple[int, int]) -> torch.Tensor:
        kind, k = parse_option(support, choice[support], self.rank)
        if kind == "lora":
            return down[:, :k] @ up[:k, :]
        if kind == "vector":
            return down[:, 0:1].expand(shape)
        if kind == "constant":
            return down[0, 0].expand(shape)
        return torch.zeros(shape, dtype=down.dtype, device=down.device)  # allocated every forward


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


def glora_supernet(model: nn.Module, rank: int) -> nn.Module:
    """Inject GLoRA, train only glora_* and the head, sample a choice per layer per forward."""
    glora.inject_glora(model, rank)
    randomize_glora(model)  # non-zero supports: the timing does not depend on it, the checks do
    glora.mark_trainable(model)
    glora.set_subnet(model, None, seed=0)
    return model


def randomize_glora(model: nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".glora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def naive_copy(model: nn.Module, layer_class: type = None) -> nn.Module:
    """A deep copy of a GLoRA model whose layers are ``layer_class`` (default NaiveGLoRALinear,
    same tensors' values), in sampling mode with seed 0."""
    naive = copy.deepcopy(model)
    for name, layer in glora.glora_layers(naive):
        replacement = (layer_class or NaiveGLoRALinear)(layer.weight, layer.bias, layer.rank)
        replacement.load_state_dict(layer.state_dict())
        replace_module(naive, name, replacement)
    glora.mark_trainable(naive)
    glora.set_subnet(naive, None, seed=0)
    return naive


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


def check_naive_equals_ours(ours: nn.Module, naive: nn.Module, x: torch.Tensor, rank: int) -> float:
    """Max |difference| of the two models' outputs for one fixed random subnet."""
    rng = random.Random(3)
    subnet = [sample_choice(rng, rank) for _ in glora.glora_layers(ours)]
    for model in (ours, naive):
        glora.set_subnet(model, subnet)
        model.eval()
    with torch.inference_mode():
        diff = (ours(x) - naive(x)).abs().max().item()
    for model in (ours, naive):
        glora.set_subnet(model, None, seed=0)
    return diff


def bench_training(args, x, y) -> tuple[str, str, float]:
    """(a) and (b): tables for GLoRA vs full vs probe, and ours vs the naive layer."""
    full, probe = build_vit(args), linear_probe(build_vit(args))
    ours = glora_supernet(build_vit(args), args.rank)
    naive = naive_copy(ours)
    diff = check_naive_equals_ours(ours, naive, x, args.rank)
    models = {"probe": probe, "glora": ours, "full": full, "naive": naive}
    cases = {name: train_step(m, x, y) for name, m in models.items()}
    times = interleaved(cases, args.steps, args.repeats)
    params = {name: f"{trainable(m):,}" for name, m in models.items()}
    a = table(times, [("linear probe (frozen backbone, head trains)", "probe", "full"),
                      ("GLoRA supernet, sampling mode", "glora", "full"),
                      ("full fine-tuning (no GLoRA)", "full", "full")], params)
    b = table(times, [("GLoRALinear (ours), sampling mode", "glora", "glora"),
                      ("naive materialise-everything layer, sampling mode", "naive", "glora")], params)
    return a, b, diff


def bench_inference(args, x) -> tuple[str, float]:
    """(c): plain timm vs merged GLoRA, and unmerged fixed-subnet GLoRA vs merged."""
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


def main(args: argparse.Namespace) -> None:
    x, y = prepare(args, QUICK)
    start = time.perf_counter()
    a, b, naive_diff = bench_training(args, x, y)
    print("(a) train step (forward + backward + AdamW), ratio vs full fine-tuning:\n")
    print(a)
    print(f"\n(b) supernet train step, our layer vs the naive layer (max |output diff| on a fixed "
          f"subnet: {naive_diff:.1e}):\n")
    print(b)
    c, merge_diff = bench_inference(args, x)
    print(f"\n(c) inference (eval, inference_mode), max |unmerged - merged| {merge_diff:.1e}:\n")
    print(c)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
