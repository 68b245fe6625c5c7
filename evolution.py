"""Step 2 of GLoRA: evolutionary search of a subnet under a parameter budget, then merge and export.

    python evolution.py --dataset DATASET --save_path SAVE_DIR --load_path SUPERNET_SAVE_DIR \
        --param-limits MAX_PARAM_M --rank LORA_RANK

Reads LOAD_DIR/<dataset>.pt; writes into SAVE_DIR: subnet.yaml, history.jsonl, search_state.json
(resume), results.json, args.yaml and merged/ (a plain timm model: config.json + model.safetensors).
With --subnet PRESET|FILE (or a fixed-subnet / full fine-tuning checkpoint) it skips the search and
evaluates and exports that model through the same path.
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
from glora.model import autocast_dtype, resolve_device
from glora.search import check_budget
from glora.searching import (ADOPTED, budget_limit, choose_fixed, eval_loader, export_and_test, load_model,
                             make_results, refuse_unexportable, run_search, write_json)


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
    parser.add_argument("--plain-tries", type=int, default=10,
                        help="uniform draws before a random candidate is repaired toward the budget "
                             "(a huge value approximates the original's unbounded rejection sampling)")
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


def main(args: argparse.Namespace, given: set[str] | None = None) -> None:
    """``given``: the options set explicitly (default: those that differ from the parser's defaults)."""
    given = explicit_keys(args) if given is None else given
    out = Path(args.save_path)
    if args.resume == "auto":  # finished: nothing to do; a search state: continue it; none: start
        finished = completed(args, given)
        if finished:
            print(finished)
            return
        args.resume = (out / "search_state.json").is_file()
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    task, ckpt, model = load_model(args, device, given)
    write_yaml(out / "args.yaml", config_dict(args))  # the resolved settings, checkpoint's included
    names = [n for n, _ in glora.glora_layers(model)]
    subnet, method = choose_fixed(args, ckpt, names)
    searching = subnet is None and ckpt["mode"] == "supernet"
    if searching:  # fail in seconds on an impossible budget or an unexportable layer, before any data is read
        check_budget(args.rank, glora.layer_shapes(model), round(args.min_param_limits * 1e6),
                     round(args.param_limits * 1e6))
        refuse_unexportable(model)
    splits = vtab.PROTOCOLS[args.protocol]
    # Under the paper protocol the search split is the test split: load it once.
    loaders = {split: eval_loader(args, task, split, device) for split in {splits["search"], splits["test"]}}
    search_loader, test_loader = loaders[splits["search"]], loaders[splits["test"]]
    start = time.time()
    if searching:
        subnet, info = run_search(args, model, search_loader, device, out)
    params = glora.count_params(model, subnet) if subnet is not None else sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    if subnet is not None:
        glora.set_subnet(model, subnet)
        write_yaml(out / "subnet.yaml", subnet_document(names, subnet, args.rank, params, dataset=task.name,
                                                        method=method, protocol=args.protocol,
                                                        param_limit_M=budget_limit(args, ckpt, searching)))
    if not searching:  # a fixed subnet or a fully fine-tuned model: only its search-split score
        info = {"search_acc1": evaluate(model, search_loader, device, autocast_dtype(args.precision, device))["acc1"]}
    timer = {"search": time.time() - start}
    start = time.time()
    tested = export_and_test(args, task, model, test_loader, device, out)
    timer["test_and_export"] = time.time() - start
    results = make_results(args, task, ckpt, method, params, splits, info, tested, timer, model, searching)
    write_json(out / "results.json", results)
    print(f"{task.name}: {method} with {params / 1e6:.4f}M params: {splits['search']} acc1 "
          f"{results['search_acc1']:.2f}, test acc1 {results['test_acc1']:.2f} -> {out}")


def cli(argv: list[str] | None = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    parser = get_args_parser()
    args = parse_args(parser, argv)
    try:
        with one_line_errors(), sigterm_as_interrupt():
            main(args, given_keys(parser, argv))
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted; the search state of the last finished generation is in "
                         f"{Path(args.save_path) / 'search_state.json'}; continue with --resume") from None


if __name__ == "__main__":
    cli(sys.argv[1:])
