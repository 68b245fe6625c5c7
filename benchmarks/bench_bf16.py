"""bf16 against fp32: a small increment at one layer, and supernet + search end to end.

    python benchmarks/bench_bf16.py layer        # increment error per option, seconds
    python benchmarks/bench_bf16.py e2e          # two mini tasks x {new, old forward} x {fp32, bf16}

``layer``: a 256 -> 256 linear (W0, b0 ~ N(0, 0.05²)); for each option its increment is scaled to
0.6 % of the frozen output, then computed under CPU bf16 autocast by our forward and by the
materialised W' (the previous forward). The error is that of the increment's effect averaged over
4,096 tokens (x ~ N(0.5, 1)), relative to float64: per-output bf16 rounding is noise that
averages out over tokens, a weight rounded into W0 is not. Per-element errors are printed too.

``e2e``: supernet.py then evolution.py on each task with the same seeds and settings, once per
forward and precision (``--precision fp32|bf16``, CPU autocast); the old forward is the
materialised one of benchmarks/reference.py, patched in. Reported per run: final train loss, supernet
validation accuracy, search and test accuracy, the chosen subnet, and for each bf16 run its
distance to the fp32 run of the same forward (and fp32 old vs new: the noise floor of two
fp32 runs that differ only in rounding). The test number is the unmerged subnet's;
``evolution.py`` stops if the merged export's accuracy differs from it, which under bf16 it can
(the export rounds W' to bf16, our forward does not): the wrapper here records both instead.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import reference
from glora.layer import GLoRALinear
from glora.run import evolution, supernet

ROOT = Path(__file__).resolve().parents[1]

NONE = {s: "none" for s in "ABCDE"}
OPTIONS = [("A", "LoRA_4"), ("A", "vector"), ("A", "constant"), ("B", "LoRA_4"), ("B", "vector"),
           ("B", "constant"), ("C", "LoRA_4"), ("C", "vector"), ("D", "vector"), ("E", "vector")]


def layer_table() -> str:
    torch.manual_seed(0)
    layer = GLoRALinear.from_linear(nn.Linear(256, 256), 4)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05), layer.bias.normal_(0, 0.05)
    x = torch.randn(4096, 256) + 0.5
    rows = ["| option | ours: mean over tokens | materialised W': mean over tokens | ours: per "
            "element | materialised: per element |", "|---|---|---|---|---|"]
    for support, option in OPTIONS:
        choice = dict(NONE, **{support: option})
        errs = increment_errors(layer, x, choice)
        rows.append(f"| {support} = {option} | {errs[0]:.3f} | {errs[1]:.3f} | {errs[2]:.3f} | "
                    f"{errs[3]:.3f} |")
    return "\n".join(rows)


def increment_errors(layer: GLoRALinear, x: torch.Tensor, choice: dict, size: float = 0.006):
    """(ours mean, materialised mean, ours per element, materialised per element) errors."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("glora_"):
                p.normal_()

        def exact(ch):
            w, b = layer.merged_weight_bias(ch)
            return F.linear(x.double(), w.double(), b.double())
        base = exact(NONE)
        ratio = ((exact(choice) - base).norm() / base.norm()).item()
        for name in ("glora_Ad", "glora_Bd", "glora_Cd", "glora_D", "glora_E"):
            getattr(layer, name).mul_(size / ratio)
        want = exact(choice) - base
        out = {}
        for label, run in (("ours", layer), ("old", lambda t: F.linear(t, *layer.merged_weight_bias(layer.choice)))):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                layer.set_choice(choice)
                y = run(x).double()
                layer.set_choice(NONE)
                y0 = run(x).double()
            got = y - y0
            out[label] = (rel(got.mean(0), want.mean(0)), rel(got, want))
    return out["ours"][0], out["old"][0], out["ours"][1], out["old"][1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---- end to end --------------------------------------------------------------------------------

def patch_old_forward() -> None:
    """Make GLoRALinear compute as before: W', b' materialised, one F.linear."""
    GLoRALinear.forward = reference.MaterialisedGLoRALinear.forward


def run_cli(script: str, forward: str, argv: list[str]) -> None:
    """Worker: run supernet.py or evolution.py in this process with the chosen forward."""
    if forward == "old":
        patch_old_forward()
    module = {"supernet": supernet, "evolution": evolution}[script]
    if script == "evolution":
        module.export_and_test = export_and_test_recording
    module.cli(argv)


def export_and_test_recording(args, task, model, test_loader, device, out):
    """evolution.export_and_test, recording both accuracies instead of stopping on a mismatch."""
    import timm
    import vtab
    import glora
    from glora.run.engine import evaluate
    from glora.export.timm_folder import export_timm_folder
    from glora.run.backbone import autocast_dtype
    amp = autocast_dtype(args.precision, device)
    unmerged = evaluate(model, test_loader, device, amp)
    merged = glora.merge_glora(copy.deepcopy(model).cpu())
    folder = export_timm_folder(merged, out / "merged", args.input_size, vtab.IMAGENET_DEFAULT_MEAN,
                                vtab.IMAGENET_DEFAULT_STD)
    reloaded = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).to(device)
    again = evaluate(reloaded, test_loader, device, amp)
    return {"test_acc1": unmerged["acc1"], "test_acc1_merged": again["acc1"], "test_n": unmerged["n"]}


def run_one(args, task: str, forward: str, precision: str) -> dict:
    folder = Path(args.out) / task / f"{forward}-{precision}"
    common = ["--config", args.config, "--dataset", task, "--rank", "4", "--device", "cpu",
              "--precision", precision, "--no-progress"]
    runs = [("supernet", common + ["--save_path", str(folder / "supernet"), "--epochs", str(args.epochs),
                                   "--warmup-epochs", "2", "--eval-every", str(args.epochs),
                                   "--lr", str(args.lr), "--seed", str(args.seed)]),
            ("evolution", common + ["--load_path", str(folder / "supernet"), "--save_path",
                                    str(folder / "search"), "--param-limits", str(args.budget),
                                    "--seed", str(args.search_seed)] + args.search_args.split())]
    start = time.time()
    for script, argv in runs:
        if script == "evolution" and (folder / "search" / "results.json").is_file():
            continue
        if script == "supernet" and (folder / "supernet" / f"{task}.pt").is_file():
            continue
        subprocess.run([sys.executable, __file__, "worker", script, forward, *argv], check=True,
                       cwd=ROOT)
    log = [json.loads(line) for line in (folder / "supernet" / f"{task}_log.jsonl").read_text().splitlines()]
    results = json.loads((folder / "search" / "results.json").read_text())
    state = torch.load(folder / "supernet" / f"{task}.pt", weights_only=True)["state_dict"]
    subnet = (folder / "search" / "subnet.yaml").read_text()
    return {"loss": log[-1]["train_loss"], "val": log[-1].get("val_acc1"), "search": results["search_acc1"],
            "test": results["test_acc1"], "test_merged": results["test_acc1_merged"],
            "params": results["params"], "state": state, "subnet": subnet, "seconds": time.time() - start}


def distance(a: dict, b: dict) -> str:
    """Relative L2 distance of two runs' trained glora_* tensors, and whether the subnets agree."""
    num = sum(((a["state"][k].double() - b["state"][k].double()) ** 2).sum() for k in a["state"] if ".glora_" in k)
    den = sum((b["state"][k].double() ** 2).sum() for k in b["state"] if ".glora_" in k)
    return f"{(num / den).sqrt().item():.4f} | {'same' if a['subnet'] == b['subnet'] else 'different'}"


def e2e(args) -> str:
    rows = ["| task | forward | precision | train loss | supernet val acc | search acc | test acc "
            "(unmerged / merged) | params | vs fp32 run: test acc diff | vs fp32: adapter distance | "
            "vs fp32: subnet | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        runs = {(f, p): run_one(args, task, f, p) for f in ("new", "old") for p in ("fp32", "bf16")}
        for (f, p), r in runs.items():
            ref = runs[("new", "fp32")] if (f, p) == ("old", "fp32") else runs[(f, "fp32")]
            versus = "- | - | -" if (f, p) == ("new", "fp32") else \
                f"{r['test'] - ref['test']:+.2f} | {distance(r, ref)}"
            rows.append(f"| {task} | {f} | {p} | {r['loss']:.4f} | {r['val']:.2f} | {r['search']:.2f} | "
                        f"{r['test']:.2f} / {r['test_merged']:.2f} | {r['params']:,} | {versus} | "
                        f"{r['seconds']:.0f} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("layer", "e2e"))
    p.add_argument("--tasks", type=str, default="mini_digits,mini_ori")
    p.add_argument("--config", type=str, default="configs/mini_vtab.yaml")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--budget", type=float, default=0.03, help="search limit, M params")
    p.add_argument("--search-args", type=str, default="--population-num 16 --select-num 6 "
                   "--mutation-num 8 --crossover-num 8 --max-epochs 4")
    p.add_argument("--seed", type=int, default=42, help="supernet seed (the original's)")
    p.add_argument("--search-seed", type=int, default=1, help="search seed (the original's)")
    p.add_argument("--out", type=str, default="runs/bench_bf16")
    p.add_argument("--threads", type=int, default=1)
    return p


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        torch.set_num_threads(1)
        run_cli(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        cli_args = get_args_parser().parse_args()
        torch.set_num_threads(cli_args.threads)
        start = time.time()
        print(layer_table() if cli_args.what == "layer" else e2e(cli_args))
        print(f"\n{time.time() - start:.0f} s in all")
