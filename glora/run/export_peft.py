"""The PEFT export command: a checkpoint and its searched subnet -> PEFT GLoRA adapters.

    glora-export-peft --checkpoint SAVE_DIR/<dataset>.pt --subnet SEARCH_DIR/subnet.yaml --out DIR

The library half is ``glora.export.peft`` (``export_peft``, ``load_peft``).
"""
from __future__ import annotations

import argparse
import sys

from glora.errors import one_line_errors
from glora.export.peft import export_peft
from glora.export.peft_map import AdapterPlan
from glora.inject import inject_glora, load_trained_state, set_subnet
from glora.run.checkpoint import CheckpointError, load_checkpoint, load_subnet
from glora.run.searcher import check_frozen, rebuild_model


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Export a GLoRA subnet as PEFT GLoRA adapters", add_help=True)
    parser.add_argument("--checkpoint", required=True, help="supernet (or fixed-subnet) checkpoint SAVE_DIR/<dataset>.pt")
    parser.add_argument("--subnet", default=None,
                        help="subnet.yaml written by evolution.py, or a preset (default: a fixed-subnet checkpoint's own)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pretrained", default=None, help="backbone weights (default: the checkpoint's --pretrained)")
    return parser


def main(args: argparse.Namespace) -> list[AdapterPlan]:
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("mode") not in ("supernet", "subnet") or "model" not in ckpt:
        raise CheckpointError(f"{args.checkpoint} is not a GLoRA supernet or subnet checkpoint of this project")
    pretrained = args.pretrained or ckpt["config"].get("pretrained")
    model = rebuild_model(ckpt, args.checkpoint, ckpt["model"], ckpt["num_classes"], pretrained, ckpt["model_kwargs"])
    names = inject_glora(model, ckpt["rank"], targets=ckpt.get("targets"))
    check_frozen(model, ckpt, args.checkpoint)
    load_trained_state(model, ckpt["state_dict"])
    if args.subnet is None and ckpt.get("subnet") is None:
        raise CheckpointError(f"{args.checkpoint} is a supernet; name the searched subnet with --subnet")
    subnet = load_subnet(args.subnet, names, ckpt["rank"]) if args.subnet else ckpt["subnet"]
    set_subnet(model, subnet)
    plans = export_peft(model.eval(), args.out)
    print(f"wrote {len(plans)} PEFT GLoRA adapter(s) for {len(names)} layers to {args.out}:")
    for plan in plans:
        print(f"  {plan.name}: config_A_B={plan.config_A_B}, config_C={plan.config_C}, "
              f"config_D_E={plan.config_D_E}, r={plan.r}, {len(plan.layers)} layer(s)")
    return plans


def cli(argv: list[str] | None = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    args = get_args_parser().parse_args(argv)
    try:
        with one_line_errors():
            main(args)
    except ModuleNotFoundError as err:
        if err.name != "peft":
            raise
        raise SystemExit("error: the PEFT export needs peft: pip install -r requirements-extras.txt") from None


if __name__ == "__main__":
    cli(sys.argv[1:])
