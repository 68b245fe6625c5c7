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
import copy
import json
import sys
import time
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import glora
import vtab
from glora.checkpoint import (CheckpointError, check_compatible, load_checkpoint, load_subnet,
                              subnet_document, subnet_origin, versions)
from glora.config import (add_common_args, config_dict, differing_settings, given_keys, parse_args,
                          sigterm_as_interrupt, write_yaml)
from glora.engine import evaluate
from glora.merge import CandidateModel, export_timm_folder
from glora.errors import TargetError, one_line_errors
from glora.model import autocast_dtype, build_model, resolve_device
from glora.search import EvolutionSearch, check_budget
from glora.timm_bias import unexportable_bias_free


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


def load_model(args: argparse.Namespace, device: torch.device, given: set[str]):
    """The backbone with the supernet's trained tensors; settings come from the checkpoint."""
    task = vtab.resolve_task(args.dataset)
    ckpt_path = Path(args.load_path) / f"{task.name}.pt"
    ckpt = load_checkpoint(ckpt_path)
    adopt_recorded(args, ckpt, ckpt_path, given)
    check_compatible(ckpt, {"dataset": task.name}, ckpt_path)
    model = build_model(args.model, task.num_classes, args.pretrained, args.model_kwargs, drop_path_rate=0.0)
    if ckpt["mode"] != "full":
        names = glora.inject_glora(model, args.rank, targets=args.targets)
        recorded = ckpt.get("layer_names")
        if recorded is not None and names != recorded:
            raise CheckpointError(f"{ckpt_path} holds {len(recorded)} GLoRA layers ({recorded[0]} …), but "
                                  f"targets {args.targets!r} give {len(names)} here ({names[0]} …)")
    glora.load_trained_state(model, ckpt["state_dict"], full=ckpt["mode"] == "full")
    print(f"loaded {ckpt_path} ({ckpt['mode']}, epoch {ckpt['epoch']})")
    return task, ckpt, model.to(device).eval()


# Settings a checkpoint records and this step takes from it, unless a flag given explicitly says otherwise.
ADOPTED = ("model", "model_kwargs", "rank", "targets", "input_size", "protocol")


def adopt_recorded(args: argparse.Namespace, ckpt: dict, path: Path, given: set[str]) -> None:
    """Take model, kwargs, rank, targets, input size, protocol and weights path from the checkpoint;
    refuse a flag given on the command line or in the YAML that contradicts one of them.

    An original-code checkpoint records only the rank, so the flags are trusted for the rest. The
    weights path may legitimately differ (a moved file): an explicit ``--pretrained`` wins, with a note.
    """
    recorded = {key: ckpt[key] for key in ADOPTED if key in ckpt}
    if ckpt.get("mode") == "full":
        recorded.pop("targets", None)
    elif "model" in recorded and recorded.get("targets") is None:  # saved before targets were recorded
        recorded["targets"] = glora.DEFAULT_TARGETS
    args.targets = args.targets or glora.DEFAULT_TARGETS
    current = {key: getattr(args, key) for key in recorded}
    if "protocol" in recorded:  # val and retrain share one supernet
        current["protocol"] = supernet_protocol(ckpt, args.protocol)
    check_compatible(recorded, {key: value for key, value in current.items() if key in given}, path)
    for key, value in recorded.items():
        if key not in given:
            setattr(args, key, value)
    weights = ckpt.get("config", {}).get("pretrained")
    if weights is not None and "pretrained" not in given:
        args.pretrained = weights
    elif weights is not None and args.pretrained != weights:
        print(f"note: backbone weights from --pretrained {args.pretrained} (the checkpoint was trained with {weights})")


def refuse_unexportable(model) -> None:
    """A search may give any bias-free layer a bias; refuse at once where timm could not hold it."""
    layers = unexportable_bias_free(model)
    if layers:
        raise TargetError(f"{layers[0]}{f' and {len(layers) - 1} more' if len(layers) > 1 else ''}: no bias, "
                         "and timm has no flag to give one, so a searched subnet using C or E there could "
                         "not be exported; train the supernet with --targets leaving it out, or pass "
                         "--subnet with C and E 'none' there")


def supernet_protocol(ckpt: dict, protocol: str) -> str:
    """The protocol a checkpoint must record: `val` and `retrain` share one supernet and search
    (train800, scored on val200), so a supernet of either serves both."""
    shared = ("val", "retrain")
    if ckpt.get("mode") == "supernet" and protocol in shared and ckpt.get("protocol") in shared:
        return ckpt["protocol"]
    return protocol


def choose_fixed(args, ckpt, layer_names) -> tuple[list | None, str]:
    """The subnet to export without search, if any, and the method label for results.json."""
    if ckpt["mode"] == "full":
        return None, "full_finetune"
    if args.subnet:
        return load_subnet(args.subnet, layer_names, args.rank), subnet_origin(args.subnet)["method"]
    if ckpt["mode"] == "subnet":
        return ckpt["subnet"], ckpt.get("method") or ckpt["config"].get("subnet") or "subnet"
    return None, "glora"


def run_search(args, model, search_loader, device, out: Path) -> tuple[list, dict]:
    """Resumable evolutionary search; state and history are rewritten atomically every generation."""
    amp = autocast_dtype(args.precision, device)
    candidate = CandidateModel(model)
    evaluate_fn = lambda subnet: evaluate(candidate.load(subnet), search_loader, device, amp)["acc1"]
    search = EvolutionSearch(evaluate_fn, glora.layer_shapes(model), args.rank,
                             population_num=args.population_num, select_num=args.select_num,
                             mutation_num=args.mutation_num, m_prob=args.m_prob,
                             crossover_num=args.crossover_num, max_epochs=args.max_epochs,
                             max_params=round(args.param_limits * 1e6),
                             min_params=round(args.min_param_limits * 1e6), seed=args.seed,
                             plain_tries=args.plain_tries)
    state_path = out / "search_state.json"
    if args.resume:
        if not state_path.is_file():
            raise CheckpointError(f"--resume but no search state at {state_path}")
        search.load_state_dict(json.loads(state_path.read_text()))
        print(f"resumed the search at generation {search.generation}")
    bar = tqdm(total=args.max_epochs + 1, initial=search.generation, desc="search", disable=not args.progress)

    def on_generation(state: dict, info: dict) -> None:
        write_json(state_path, state)
        write_lines(out / "history.jsonl", state["evaluated"])
        bar.update(1)
        bar.set_postfix(best=f"{info['best_fitness']:.2f}", params=f"{info['best_params'] / 1e6:.3f}M")

    result = search.run(on_generation)
    bar.close()
    return result.subnet, {"search_acc1": result.fitness, "num_evaluated": result.num_evaluated,
                           "generations": result.generations, "stats": result.stats,
                           "top_k": [{k: r[k] for k in ("params", "fitness", "generation")} for r in result.top_k]}


def export_and_test(args, task, model, test_loader, device, out: Path) -> dict:
    """Test the chosen model, merge it, export it, reload it with plain timm and test again."""
    amp = autocast_dtype(args.precision, device)
    unmerged = evaluate(model, test_loader, device, amp)
    merged = glora.merge_glora(copy.deepcopy(model).cpu())  # a no-op for a fully fine-tuned model
    folder = export_timm_folder(merged, out / "merged", args.input_size, vtab.IMAGENET_DEFAULT_MEAN,
                                vtab.IMAGENET_DEFAULT_STD)
    reloaded = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).to(device)
    again = evaluate(reloaded, test_loader, device, amp)
    if again["acc1"] != unmerged["acc1"]:
        raise RuntimeError(f"the exported model's test accuracy {again['acc1']:.4f} differs from the "
                           f"unmerged subnet's {unmerged['acc1']:.4f}")
    return {"test_acc1": unmerged["acc1"], "test_acc1_merged": again["acc1"], "test_n": unmerged["n"]}


def eval_loader(args, task, split: str, device: torch.device):
    """A split decoded once, evaluated in chunks (the uint8 stays on the host)."""
    data = vtab.load_split(args.data_path, task.name, split, input_size=args.input_size, progress=args.progress)
    return vtab.Loader(data, args.eval_batch_size, shuffle=False, drop_last=False, device=device, resident=False)


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


SPLIT_PARTS = {"train800val200": ("train800", "val200")}


def budget_limit(args, ckpt, searching: bool) -> float | None:
    """The parameter limit (M) a GLoRA subnet was searched under: this search's, or the one the
    search's subnet.yaml recorded (given with --subnet, or carried by a training checkpoint)."""
    if searching:
        return args.param_limits
    if args.subnet:
        return subnet_origin(args.subnet)["param_limit_M"]
    return ckpt.get("param_limit_M")


def make_results(args, task, ckpt, method, params, splits, info, tested, timer, model, searching) -> dict:
    """The results.json record (format in notes/INTERFACES.md)."""
    stats = info.pop("stats", {})
    draws = stats.get("plain_draws", 0)
    searched = ckpt["mode"] == "supernet"
    # weights: "supernet" = used as the supernet trained them (the paper's way); "trained" = a fixed
    # subnet or baseline trained on its own, from a fresh init or from a supernet's tensors.
    trained_on = ckpt.get("splits", {}).get("train", splits["train"])
    return {"dataset": task.name, "group": task.group, "method": method, "protocol": args.protocol,
            "weights": "supernet" if searched else "trained",
            "init": "inherited" if searched else ckpt.get("init", "fresh"),
            "splits": {"train": trained_on, "search": splits["search"], "test": splits["test"]},
            "search_split_in_training": splits["search"] in SPLIT_PARTS.get(trained_on, (trained_on,)),
            "selection_split": splits["search"], "search_acc1": info.pop("search_acc1"), **tested,
            "params": params, "params_M": params / 1e6,
            "head_params": sum(p.numel() for n, p in model.named_parameters() if n.startswith("head.")),
            "param_limit_M": budget_limit(args, ckpt, searching),
            "min_param_limit_M": args.min_param_limits if searching else None,
            "rank": args.rank, "seed": args.seed, "supernet_seed": ckpt["config"].get("seed"),
            "supernet_epochs": ckpt["epoch"], "model": args.model, "model_kwargs": dict(args.model_kwargs),
            "search": {**info, "stats": stats,
                       "plain_draw_acceptance": stats.get("plain_accepted", 0) / draws if draws else None},
            "versions": versions(), "wall_time_s": timer, "config": config_dict(args),
            "subnet_file": "subnet.yaml" if method != "full_finetune" else None, "merged_model_dir": "merged"}


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def write_lines(path: Path, records) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


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
