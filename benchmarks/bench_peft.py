"""GLoRA and LoRA train steps side by side with Hugging Face PEFT's, on the same timm ViT.

    python benchmarks/bench_peft.py                     # width 384, depth 4, batch 64, 1 thread
    python benchmarks/bench_peft.py --embed-dim 768 --heads 12
    python benchmarks/bench_peft.py --quick             # smoke run (tiny sizes)

Needs ``peft`` (an extra); without it the script says so in one line and exits 0. Pairs, each a
fixed subnet of ours against the PEFT model computing the same function:

  glora-lora     ours: A, B, C = LoRA_r, D, E = vector   PEFT GLoRA: config_A_B = config_C = LoRA,
                                                         config_D_E = vector
  glora-vector   ours: every support vector               PEFT GLoRA: every config vector
  lora           ours: B = LoRA_r (the lora preset)       PEFT LoRA: r, lora_alpha = r, no dropout

The PEFT GLoRA models come from ``glora.export.peft.to_peft_model`` (our tensors written into
PEFT's); PEFT LoRA gets lora_A = Bu and lora_B = Bd. Before any timing, each pair's logits on the
batch (eval mode) must agree within 1e-4 of their scale, or the script stops. Timing as
benchmarks/bench_forward.py: forward + cross-entropy + backward + AdamW on what trains (adapters
and the head; ours exactly the entries its subnet reads, as supernet.py trains it), interleaved
repeats, CPU time with one thread; a ratio is the median of the paired per-repeat ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

import glora
from glora.space import lora, preset_subnet
from glora.export.peft import base_copy, to_peft_model
import harness

QUICK = dict(embed_dim=32, depth=2, img_size=32, patch_size=8, heads=2, batch_size=16, steps=2,
             repeats=3)
PAIRS = ("glora-lora", "glora-vector", "lora")


def ours(args: argparse.Namespace, pair: str) -> torch.nn.Module:
    """Our model for a pair: a fixed subnet with non-zero supports."""
    model = harness.glora_supernet(harness.build_vit(args), args.rank)  # injected, randomised supports
    n = len(glora.glora_layers(model))
    if pair == "glora-lora":
        choice = {"A": lora(args.rank), "B": lora(args.rank), "C": lora(args.rank),
                  "D": "vector", "E": "vector"}
        subnet = [choice] * n
    elif pair == "glora-vector":
        subnet = [dict.fromkeys("ABCDE", "vector")] * n
    else:
        subnet = preset_subnet("lora", n, args.rank)
    glora.set_subnet(model, subnet)
    return model


def peft_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """PEFT LoRA over a plain copy of ``model`` (a B = LoRA_r subnet): the same function."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=glora.DEFAULT_TARGETS,
                        modules_to_save=["head"])
    peft_model = get_peft_model(base_copy(model), config)
    with torch.no_grad():
        for name, layer in glora.glora_layers(model):
            target = peft_model.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.glora_Bu)  # (r, in)
            target.lora_B["default"].weight.copy_(layer.glora_Bd)  # (out, r)
    return peft_model


def peft_twin(model: torch.nn.Module, pair: str, rank: int) -> torch.nn.Module:
    """The PEFT model computing ``model``'s function, trainable as PEFT trains it."""
    if pair == "lora":
        twin = peft_lora(model, rank)
    else:
        twin, _ = to_peft_model(model)
    for name, param in twin.named_parameters():  # to_peft_model returns it frozen, in eval mode
        param.requires_grad_("lora_" in name or "glora_" in name or "modules_to_save" in name)
    return twin


@torch.no_grad()
def same_function(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, pair: str) -> float:
    """Max |logit difference| / max |logit| in eval mode; stops the script above 1e-4."""
    a.eval(), b.eval()
    ya, yb = a(x), b(x)
    diff = ((ya - yb).abs().max() / ya.abs().max()).item()
    if not diff <= 1e-4:
        raise SystemExit(f"error: {pair}: ours and PEFT differ by {diff:.1e} of the logits' scale")
    return diff


def train_step(model: torch.nn.Module, params: list, x: torch.Tensor, y: torch.Tensor):
    """One forward + backward + AdamW step over ``params`` (as harness.train_step)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main(args: argparse.Namespace) -> None:
    try:
        import peft
    except ImportError:
        print("peft is not installed (pip install -r requirements-extras.txt); nothing to compare")
        return
    x, y = harness.prepare(args, QUICK)
    steps, trained, lines = {}, {}, []
    for pair in args.pairs.split(","):
        mine = ours(args, pair)
        theirs = peft_twin(mine, pair, args.rank)
        diff = same_function(mine, theirs, x, pair)
        # ours trains as supernet.py --subnet does: exactly the entries the subnet reads, and the head
        theirs_params = [p for p in theirs.parameters() if p.requires_grad]
        for name, model, params in ((f"{pair} ours", mine, glora.train_read_entries(mine)),
                                    (f"{pair} peft", theirs, theirs_params)):
            steps[name], trained[name] = train_step(model, params, x, y), sum(p.numel() for p in params)
        lines.append((pair, diff))
    print(f"peft {peft.__version__}; same function (max |logit diff| / max |logit|): "
          + ", ".join(f"{pair} {diff:.1e}" for pair, diff in lines) + "\n")
    times = harness.interleaved(steps, args.steps, args.repeats)
    print("| pair | ours ms / step | PEFT ms / step | ours / PEFT (paired median) | "
          "trainable: ours / PEFT |\n|---|---|---|---|---|")
    for pair, _ in lines:
        a, b = f"{pair} ours", f"{pair} peft"
        print(f"| {pair} | {statistics.median(times[a]):.1f} | {statistics.median(times[b]):.1f} | "
              f"{harness.paired_ratio(times, a, b):.3f} | {trained[a]:,} / {trained[b]:,} |")


def get_args_parser() -> argparse.ArgumentParser:
    p = harness.get_args_parser()
    p.description = __doc__.split("\n")[0]
    p.set_defaults(embed_dim=384, heads=6, steps=3, repeats=7)
    p.add_argument("--pairs", type=str, default=",".join(PAIRS), help="comma list of: " + ", ".join(PAIRS))
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:]))
