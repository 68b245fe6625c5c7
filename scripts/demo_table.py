"""Print the demo's per-task table from the results.json files under a runs folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("linear_probe", "lora", "glora", "full_finetune")


def rows(runs: Path, task: str) -> list[str]:
    """One markdown row per method that has a results.json for this task."""
    lines = []
    for method in METHODS:
        path = runs / task / method / "results.json"
        if not path.is_file():
            lines.append(f"| {task} | {method} | — | — | — | (missing) |")
            continue
        r = json.loads(path.read_text())
        trainable = r["params"] + r["head_params"]
        lines.append(f"| {task} | {method} | {r['params'] / 1e6:.4f} | {trainable / 1e6:.4f} | "
                     f"{r['test_acc1']:.2f} | `{path.parent / r['merged_model_dir']}` |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--tasks", nargs="+", required=True)
    args = parser.parse_args(argv)
    print("| task | method | params (M, no head) | trainable incl. head (M) | test top-1 (%) | merged model |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks:
        print("\n".join(rows(args.runs, task)))


if __name__ == "__main__":
    main()
