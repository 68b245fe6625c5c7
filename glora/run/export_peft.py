"""The PEFT export command: a checkpoint and its searched subnet -> PEFT GLoRA adapters.

    glora-export-peft --checkpoint SAVE_DIR/<dataset>.pt --subnet SEARCH_DIR/subnet.yaml --out DIR \
        [--single-adapter] [--overwrite]

An existing --out is refused unless --overwrite, and then replaced only if it is a previous PEFT
export that holds none of the inputs; all refusals come before the model is built. The folder's
README.md shows the exact loading calls and the base model (timm name, model_args, the backbone
file's sha256), which the manifest and the adapters' ``base_model_name_or_path`` record too.
The library half is ``glora.export.peft`` (``export_peft``, ``load_peft``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glora.errors import one_line_errors
from glora.export.peft import MANIFEST, check_export_folder, export_peft, size_statement
from glora.export.peft_map import AdapterPlan
from glora.inject import inject_glora, load_trained_state, set_subnet
from glora.run.checkpoint import CheckpointError, load_checkpoint, load_subnet
from glora.run.inputs import file_sha256
from glora.run.searcher import check_frozen, rebuild_model
from glora.space import PRESETS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Export a GLoRA subnet as PEFT GLoRA adapters", add_help=True)
    parser.add_argument("--checkpoint", required=True, help="supernet (or fixed-subnet) checkpoint SAVE_DIR/<dataset>.pt")
    parser.add_argument("--subnet", default=None,
                        help="subnet.yaml written by evolution.py, or a preset (default: a fixed-subnet checkpoint's own)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pretrained", default=None, help="backbone weights (default: the checkpoint's --pretrained)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is a previous PEFT export (anything else is refused)")
    parser.add_argument("--single-adapter", action="store_true",
                        help="one adapter that PeftModel.from_pretrained(base, folder) loads alone: every "
                             "layer widened to the widest configuration any layer needs (stores more numbers)")
    return parser


def main(args: argparse.Namespace) -> list[AdapterPlan]:
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("mode") not in ("supernet", "subnet") or "model" not in ckpt:
        raise CheckpointError(f"{args.checkpoint} is not a GLoRA supernet or subnet checkpoint of this project")
    pretrained = args.pretrained or ckpt["config"].get("pretrained")
    inputs = [args.checkpoint] + ([args.subnet] if args.subnet and args.subnet not in PRESETS else [])
    inputs += [pretrained] if pretrained and Path(pretrained).is_file() else []
    check_export_folder(args.out, args.overwrite, inputs, ("--out", "--overwrite"))  # before the model is built
    model = rebuild_model(ckpt, args.checkpoint, ckpt["model"], ckpt["num_classes"], pretrained, ckpt["model_kwargs"])
    names = inject_glora(model, ckpt["rank"], targets=ckpt.get("targets"))
    check_frozen(model, ckpt, args.checkpoint)
    load_trained_state(model, ckpt["state_dict"])
    if args.subnet is None and ckpt.get("subnet") is None:
        raise CheckpointError(f"{args.checkpoint} is a supernet; name the searched subnet with --subnet")
    subnet = load_subnet(args.subnet, names, ckpt["rank"]) if args.subnet else ckpt["subnet"]
    set_subnet(model, subnet)
    base = base_record(ckpt, pretrained)
    plans = export_peft(model.eval(), args.out, single_adapter=args.single_adapter, base_model=base,
                        overwrite=args.overwrite)
    print(f"wrote {len(plans)} PEFT GLoRA adapter(s) for {len(names)} layers to {args.out}:")
    for plan in plans:
        print(f"  {plan.name}: config_A_B={plan.config_A_B}, config_C={plan.config_C}, "
              f"config_D_E={plan.config_D_E}, r={plan.r}, {len(plan.layers)} layer(s)")
    manifest = json.loads((Path(args.out) / MANIFEST).read_text())
    print(f"  {size_statement(manifest['stored_numbers'], args.single_adapter)}; "
          f"loading: {Path(args.out) / 'README.md'}")
    return plans


def base_record(ckpt: dict, pretrained: str | None) -> dict:
    """The base model the adapters belong to: timm name, model_args, classes and backbone file."""
    is_file = bool(pretrained) and Path(pretrained).is_file()
    return {"timm_model": ckpt["model"], "model_args": dict(ckpt["model_kwargs"]), "num_classes": ckpt["num_classes"],
            "pretrained": None if not pretrained or pretrained == "none" else str(pretrained),
            "pretrained_sha256": file_sha256(pretrained) if is_file else None,
            "backbone": ckpt.get("backbone")}  # the init seed and digest of a random backbone


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
