"""Command line of mini-VTAB: ``python -m vtab.mini {build,probe}`` (see `vtab.mini`)."""
from __future__ import annotations

import argparse

from glora.errors import one_line_errors

from ..tasks import MINI_TASKS, DataError, select_tasks
from . import probe
from .layout import DEFAULT_BACKBONE_DIR, DEFAULT_DATA_PATH, build, ensure_backbone


def get_args_parser() -> argparse.ArgumentParser:
    """CLI: `build` and `probe` subcommands."""
    parser = argparse.ArgumentParser(
        "python -m vtab.mini",
        description="Mini-VTAB: eleven small offline tasks in the NOAH layout, so the whole "
                    "pipeline runs on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the mini-VTAB tasks (and the backbone if absent)")
    b.add_argument("--data-path", type=str, default=DEFAULT_DATA_PATH)
    b.add_argument("--tasks", type=str, nargs="+", default=["mini"], metavar="TASK",
                   help="mini task names or mini, mini_design, mini_confirm (default: mini, all)")
    b.add_argument("--force", action="store_true", help="rebuild tasks that already exist")
    b.add_argument("--no-backbone", action="store_true", help="do not pretrain the backbone")
    b.add_argument("--backbone", type=str, default=DEFAULT_BACKBONE_DIR,
                   help="folder of backbone.safetensors")
    p = sub.add_parser("probe", help="linear-probe accuracy: pretrained vs random backbone")
    p.add_argument("--data-path", type=str, default=DEFAULT_DATA_PATH)
    p.add_argument("--tasks", type=str, nargs="+", default=["mini"], metavar="TASK",
                   help="mini task names or mini, mini_design, mini_confirm (default: mini, all)")
    p.add_argument("--backbone", type=str, default=DEFAULT_BACKBONE_DIR,
                   help="folder of backbone.safetensors + backbone.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init control")
    return parser


def mini_tasks(names: "list[str]") -> list[str]:
    """Mini task names and selections -> task names; DataError for anything else."""
    tasks = select_tasks(names)
    other = [t for t in tasks if t not in MINI_TASKS]
    if other:
        raise DataError(f"not mini tasks: {', '.join(other)}; mini tasks: {', '.join(MINI_TASKS)}")
    return tasks


def main(args: argparse.Namespace) -> None:
    """Run the selected subcommand."""
    args.tasks = mini_tasks(args.tasks)
    if args.command == "build":
        build(args.data_path, args.tasks, force=args.force)
        if not args.no_backbone:
            ensure_backbone(args.backbone)
    else:
        rows = probe.probe(args.data_path, args.backbone, args.tasks, seed=args.seed)
        print(probe.markdown_table(rows))


def cli(argv: "list[str] | None" = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    args = get_args_parser().parse_args(argv)
    with one_line_errors():
        main(args)


if __name__ == "__main__":
    cli()
