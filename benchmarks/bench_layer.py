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
import time


from harness import (bench_inference, build_vit, get_args_parser, glora_supernet, interleaved, linear_probe,
                     prepare, table, train_step, trainable)
from reference import check_naive_equals_ours, naive_copy

QUICK = dict(embed_dim=32, depth=2, img_size=32, patch_size=8, heads=2, batch_size=16, steps=2,
             repeats=3)


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
