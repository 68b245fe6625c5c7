"""Step 2 of GLoRA: evolutionary search of a subnet under a parameter budget, then merge and export.

    python evolution.py --dataset DATASET --save_path SAVE_DIR --load_path SUPERNET_SAVE_DIR \
        --param-limits MAX_PARAM_M --rank LORA_RANK

Reads LOAD_DIR/<dataset>.pt; writes into SAVE_DIR: subnet.yaml, history.jsonl, search_state.json
(resume), results.json, args.yaml and merged/ (a plain timm model: config.json + model.safetensors).
With --subnet PRESET|FILE (or a fixed-subnet / full fine-tuning checkpoint) it skips the search and
evaluates and exports that model through the same path. SAVE_DIR is locked (.lock) while it runs
and refused if it holds a search unless --resume or --overwrite; a search state records the
supernet it searched and refuses another.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import glora
import vtab
from glora.checkpoint import CheckpointError, subnet_document
from glora.config import (add_common_args, config_dict, differing_settings, given_keys, parse_args,
                          sigterm_as_interrupt, write_yaml)
from glora.engine import evaluate
from glora.errors import one_line_errors
from glora.model import autocast_dtype, resolve_device, set_matmul_numerics
from glora.checks import check_search
from glora.outputs import OutputFolder
from glora.searching import (ADOPTED, budget_limit, eval_loader, export_and_test, make_results, prepare,
                             resume_state, run_search, write_json)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("GLoRA evolutionary search", add_help=True)
    add_common_args(parser)
    parser.add_argument("--save_path", type=str, default="runs/search", help="output folder of this search")
    parser.add_argument("--load_path", type=str, default="runs/supernet", help="supernet --save_path")
    parser.add_argument("--param-limits", type=float, default=1.0, help="max GLoRA parameters (M)")
    parser.add_argument("--min-param-limits", type=float, default=0.0, help="min GLoRA parameters (M)")
    parser.add_argument("--max-epochs", "--epochs", dest="max_epochs", type=int, default=20,
                        help="generations after the initial population")
    parser.add_argument("--select-num", type=int, default=10)
    parser.add_argument("--population-num", type=int, default=50)
    parser.add_argument("--m_prob", type=float, default=0.2)
    parser.add_argument("--crossover-num", type=int, default=25)
    parser.add_argument("--mutation-num", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--allow-partial", action="store_true",
                        help="use a checkpoint whose training stopped before its --epochs (warns); "
                             "without it such a checkpoint is refused")
    parser.add_argument("--sampling", type=str, default="exact", choices=("exact", "repair"),
                        help="random candidates: exact = uniform over every subnet within the budget "
                             "(the original's distribution, without its rejection loop); repair = "
                             "--plain-tries uniform draws, then the last one repaired toward the "
                             "budget (biased at tight budgets)")
    parser.add_argument("--plain-tries", type=int, default=10,
                        help="with --sampling repair: uniform draws before a random candidate is "
                             "repaired toward the budget")
    return parser


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """Without the command line at hand: the options whose values differ from the defaults."""
    parser = get_args_parser()
    return {key for key, value in vars(args).items() if value != parser.get_default(key)}


def completed(args: argparse.Namespace, given: set[str] | None = None) -> str | None:
    """'already finished: …' if --save_path holds this run's results.json, else None.

    Results written with other settings are an error, never silently reused. Settings taken from
    the checkpoint (model, rank, …) are compared only where given explicitly, as they are resolved.
    """
    given = explicit_keys(args) if given is None else given
    path = Path(args.save_path) / "results.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or half-written: not finished
        return None
    current = {key: value for key, value in config_dict(args).items()
               if key in given or key not in ADOPTED + ("pretrained",)}
    diffs = differing_settings(record.get("config", {}), current)
    if diffs:
        raise CheckpointError(f"{path} holds results of other settings ({'; '.join(diffs)}); "
                              "use another --save_path or delete it")
    return f"already finished: {path} (test acc1 {record.get('test_acc1')})"


# What marks a folder as holding a search or export; --overwrite deletes these and the extras.
OUTPUTS = ("results.json", "search_state.json", "subnet.yaml")
EXTRAS = ("history.jsonl", "merged", "args.yaml")


def output_folder(args: argparse.Namespace) -> OutputFolder:
    """--save_path as this search owns it (results, state or subnet mark a run)."""
    return OutputFolder(args.save_path, OUTPUTS, EXTRAS)


def main(args: argparse.Namespace, given: set[str] | None = None) -> None:
    """``given``: the options set explicitly (default: those that differ from the parser's defaults)."""
    given = explicit_keys(args) if given is None else given
    check_search(args, get_args_parser())  # every flag in its range, before anything is read
    out = Path(args.save_path)
    auto = args.resume == "auto"
    if auto:  # finished: nothing to do; a search state: continue it; none: start
        finished = completed(args, given)
        if finished:
            print(finished)
            return
        args.resume = (out / "search_state.json").is_file()
    folder = output_folder(args)
    folder.check(args.resume or auto, args.overwrite)  # writes nothing: a refused run leaves no trace
    seen = folder.held_outputs()
    device = resolve_device(args.device)
    set_matmul_numerics(args.precision, device)
    torch.manual_seed(args.seed)
    job = prepare(args, device, given)  # checkpoint, model, budget: all checked before data is read
    state = resume_state(out / "search_state.json", job.supernet) if args.resume and job.searching else None
    with folder.acquire(args.overwrite, seen):
        write_yaml(out / "args.yaml", config_dict(args))  # the resolved settings, checkpoint's included
        results = search_and_export(args, job, device, out, state)
    print(f"{job.task.name}: {job.method} with {results['params'] / 1e6:.4f}M params: {results['selection_split']} "
          f"acc1 {results['search_acc1']:.2f}, test acc1 {results['test_acc1']:.2f} -> {out}")


def search_and_export(args: argparse.Namespace, job, device: torch.device, out: Path, state) -> dict:
    """Read the splits, search (or take the fixed subnet), export, test; write results.json."""
    splits = vtab.PROTOCOLS[args.protocol]
    # Under the paper protocol the search split is the test split: load it once.
    loaders = {split: eval_loader(args, job.task, split, device) for split in {splits["search"], splits["test"]}}
    search_loader, test_loader = loaders[splits["search"]], loaders[splits["test"]]
    model, subnet, start = job.model, job.subnet, time.time()
    if job.searching:
        subnet, info = run_search(args, model, search_loader, device, out, state, job.supernet)
    params = glora.count_params(model, subnet) if subnet is not None else sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    if subnet is not None:
        glora.set_subnet(model, subnet)
        write_yaml(out / "subnet.yaml", subnet_document(
            job.names, subnet, args.rank, params, dataset=job.task.name, method=job.method,
            protocol=args.protocol, param_limit_M=budget_limit(args, job.ckpt, job.searching)))
    if not job.searching:  # a fixed subnet or a fully fine-tuned model: only its search-split score
        info = {"search_acc1": evaluate(model, search_loader, device, autocast_dtype(args.precision, device))["acc1"]}
    timer = {"search": time.time() - start}
    start = time.time()
    tested = export_and_test(args, job.task, model, test_loader, device, out)
    timer["test_and_export"] = time.time() - start
    results = make_results(args, job.task, job.ckpt, job.method, params, splits, info, tested, timer, model,
                           job.searching, job.supernet)
    write_json(out / "results.json", results)
    return results


def cli(argv: list[str] | None = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    parser = get_args_parser()
    args = parse_args(parser, argv)
    try:
        with one_line_errors(), sigterm_as_interrupt():
            main(args, given_keys(parser, argv))
    except KeyboardInterrupt:
        state = Path(args.save_path) / "search_state.json"
        if state.is_file():
            raise SystemExit(f"interrupted; the search state of the last finished generation is in {state}; "
                             "continue with --resume") from None
        raise SystemExit("interrupted before a search state was written (there is no "
                         f"{state}); run the same command again to start over") from None


if __name__ == "__main__":
    cli(sys.argv[1:])
