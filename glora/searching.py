"""One search of ``evolution.py``: the supernet checkpoint loaded with the settings it records,
the resumable evolutionary search, the export and test, and the results.json record."""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

import glora
import vtab
from glora.checkpoint import (CheckpointError, check_compatible, load_checkpoint, load_subnet,
                              state_digest, subnet_origin, versions)
from glora.compile import compile_fixed, resolve_compile
from glora.config import config_dict
from glora.engine import evaluate
from glora.errors import TargetError
from glora.merge import CandidateModel, export_timm_folder
from glora.model import autocast_dtype, build_model
from glora.files import atomic_write
from glora.probe import forward_once
from glora.progress import progress as progress_bar
from glora.search import EvolutionSearch, check_budget
from glora.timm_bias import unexportable_bias_free


@dataclass
class Job:
    """What one evolution.py call works on, checked before any data is read."""
    task: vtab.TaskInfo
    ckpt: dict
    ckpt_path: Path
    model: nn.Module
    names: list[str]
    subnet: list | None   # the fixed subnet to export, or None (a search, or full fine-tuning)
    method: str
    searching: bool
    supernet: dict        # what was loaded: path, epoch, content hash of its trained tensors


def prepare(args: argparse.Namespace, device: torch.device, given: set[str]) -> Job:
    """Load the checkpoint and model, decide between search and export, and check everything that
    can fail (settings, partial training, input size, budget, exportability) before data is read."""
    task, ckpt, ckpt_path, model = load_model(args, device, given)
    names = [n for n, _ in glora.glora_layers(model)]
    subnet, method = choose_fixed(args, ckpt, names)
    searching = subnet is None and ckpt["mode"] == "supernet"
    if searching:  # fail in seconds on an impossible budget or an unexportable layer
        check_budget(args.rank, glora.layer_shapes(model), round(args.min_param_limits * 1e6),
                     round(args.param_limits * 1e6))
        refuse_unexportable(model)
    record = {"checkpoint": str(ckpt_path), "epoch": ckpt["epoch"], "sha256": state_digest(ckpt["state_dict"])}
    return Job(task, ckpt, ckpt_path, model, names, subnet, method, searching, record)


def load_model(args: argparse.Namespace, device: torch.device, given: set[str]):
    """The backbone with the supernet's trained tensors; settings come from the checkpoint."""
    task = vtab.resolve_task(args.dataset)
    ckpt_path = Path(args.load_path) / f"{task.name}.pt"
    ckpt = load_checkpoint(ckpt_path)  # refuses a malformed or non-finite checkpoint
    adopt_recorded(args, ckpt, ckpt_path, given)
    check_compatible(ckpt, {"dataset": task.name}, ckpt_path)
    check_finished(ckpt, ckpt_path, args.allow_partial)
    model = build_model(args.model, task.num_classes, args.pretrained, args.model_kwargs, drop_path_rate=0.0)
    forward_once(model, torch.zeros(1, args.model_kwargs.get("in_chans", 3), args.input_size, args.input_size))
    if ckpt["mode"] != "full":
        names = glora.inject_glora(model, args.rank, targets=args.targets)
        recorded = ckpt.get("layer_names")
        if recorded is not None and names != recorded:
            raise CheckpointError(f"{ckpt_path} holds {len(recorded)} GLoRA layers ({recorded[0]} …), but "
                                  f"targets {args.targets!r} give {len(names)} here ({names[0]} …)")
    glora.load_trained_state(model, ckpt["state_dict"], full=ckpt["mode"] == "full")
    print(f"loaded {ckpt_path} ({ckpt['mode']}, epoch {ckpt['epoch']})")
    return task, ckpt, ckpt_path, model.to(device).eval()


def check_finished(ckpt: dict, path: Path, allow_partial: bool) -> None:
    """Refuse a checkpoint whose training stopped before its configured epochs (a search on it
    would report a supernet that was never finished), unless ``--allow-partial``, which warns."""
    epoch, planned = ckpt.get("epoch"), ckpt.get("config", {}).get("epochs")
    if not isinstance(epoch, int) or not isinstance(planned, int) or epoch >= planned:
        return  # finished, or an original-code checkpoint that records neither
    if not allow_partial:
        raise CheckpointError(f"{path} is unfinished (epoch {epoch} of {planned}); finish it with "
                              "supernet.py --resume, or pass --allow-partial to use it as it is")
    print(f"warning: {path} is unfinished (epoch {epoch} of {planned}); using it anyway (--allow-partial)")


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


def resume_state(path: Path, supernet: dict) -> dict:
    """The search state to continue; refused if unreadable or saved on another supernet."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"--resume: no search state at {path}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the search state {path} ({type(err).__name__}); start afresh "
                              "with --overwrite") from None
    searched = state.get("supernet") if isinstance(state, dict) else None
    if isinstance(searched, dict) and searched.get("sha256") != supernet["sha256"]:
        raise CheckpointError(
            f"{path} continues a search of another supernet (epoch {searched.get('epoch')}, sha256 "
            f"{str(searched.get('sha256'))[:12]}…, {searched.get('checkpoint')}); {supernet['checkpoint']} now "
            f"holds epoch {supernet['epoch']}, sha256 {supernet['sha256'][:12]}…; search it afresh with "
            "--overwrite, or restore the supernet that was searched")
    if not isinstance(searched, dict):
        print(f"note: {path} does not record which supernet it searched (an older state); trusting it")
    return state


def run_search(args, model, search_loader, device, out: Path, state: dict | None,
               supernet: dict) -> tuple[list, dict]:
    """Resumable evolutionary search; state and history are rewritten atomically every generation.

    ``state``: a search state to continue; ``supernet``: the record of the supernet searched,
    kept in every state written so that a resume against another supernet is refused.
    """
    amp = autocast_dtype(args.precision, device)
    candidate = CandidateModel(model)
    compile_fixed(candidate.plain, resolve_compile(args.compile, device))
    evaluate_fn = lambda subnet: evaluate(candidate.load(subnet), search_loader, device, amp)["acc1"]
    search = EvolutionSearch(evaluate_fn, glora.layer_shapes(model), args.rank,
                             population_num=args.population_num, select_num=args.select_num,
                             mutation_num=args.mutation_num, m_prob=args.m_prob,
                             crossover_num=args.crossover_num, max_epochs=args.max_epochs,
                             max_params=round(args.param_limits * 1e6),
                             min_params=round(args.min_param_limits * 1e6), seed=args.seed,
                             plain_tries=args.plain_tries, sampling=args.sampling)
    state_path = out / "search_state.json"
    if state is not None:
        try:
            search.load_state_dict(state)
        except CheckpointError as err:
            raise CheckpointError(f"{state_path}: {err}") from None
        print(f"resumed the search at generation {search.generation}")
    bar = progress_bar(desc="search", total=args.max_epochs + 1, enabled=args.progress, unit="generation")
    bar.update(search.generation)  # generations a resumed search has done already

    def on_generation(state: dict, info: dict) -> None:
        write_json(state_path, {**state, "supernet": supernet})
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
        if amp is None:
            raise RuntimeError(f"the exported model's test accuracy {again['acc1']:.4f} differs from the "
                               f"unmerged subnet's {unmerged['acc1']:.4f}")
        # Under bf16 the merged W' is rounded as one tensor, where the unmerged layer keeps its
        # increments apart from W0, so an image at a decision boundary may flip. The merge itself
        # must still be exact: checked in fp32.
        check_merge_in_fp32(model, reloaded, test_loader)
        print(f"note: under {args.precision} the exported model scores {again['acc1']:.2f} on test and the "
              f"unmerged subnet {unmerged['acc1']:.2f} (rounding); in fp32 they agree", flush=True)
    return {"test_acc1": unmerged["acc1"], "test_acc1_merged": again["acc1"], "test_n": unmerged["n"]}


def check_merge_in_fp32(model: torch.nn.Module, merged: torch.nn.Module, loader, rtol: float = 1e-4) -> None:
    """Raise RuntimeError unless ``merged`` gives ``model``'s logits in fp32 on the first batch."""
    x, _ = next(iter(loader))
    model.eval(), merged.eval()
    with torch.no_grad():
        want, got = model(x).float(), merged(x).float()
    error = (got - want).abs().max().item() / max(want.abs().max().item(), 1.0)
    if not error <= rtol:
        raise RuntimeError(f"the exported model's logits differ from the unmerged subnet's in fp32 "
                           f"(max relative error {error:.2e} > {rtol:.0e})")


def eval_loader(args, task, split: str, device: torch.device):
    """A split decoded once, evaluated in chunks (the uint8 stays on the host)."""
    data = vtab.load_split(args.data_path, task.name, split, input_size=args.input_size, progress=args.progress)
    return vtab.Loader(data, args.eval_batch_size, shuffle=False, drop_last=False, device=device, resident=False)




SPLIT_PARTS = {"train800val200": ("train800", "val200")}


def budget_limit(args, ckpt, searching: bool) -> float | None:
    """The parameter limit (M) a GLoRA subnet was searched under: this search's, or the one the
    search's subnet.yaml recorded (given with --subnet, or carried by a training checkpoint)."""
    if searching:
        return args.param_limits
    if args.subnet:
        return subnet_origin(args.subnet)["param_limit_M"]
    return ckpt.get("param_limit_M")


def make_results(args, task, ckpt, method, params, splits, info, tested, timer, model, searching,
                 supernet: dict) -> dict:
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
            "supernet_epochs": ckpt["epoch"], "supernet_sha256": supernet["sha256"], "model": args.model, "model_kwargs": dict(args.model_kwargs),
            "search": {**info, "stats": stats,
                       "plain_draw_acceptance": stats.get("plain_accepted", 0) / draws if draws else None},
            "versions": versions(), "wall_time_s": timer, "config": config_dict(args),
            "subnet_file": "subnet.yaml" if method != "full_finetune" else None, "merged_model_dir": "merged"}


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(data, indent=1))


def write_lines(path: Path, records) -> None:
    """One JSON record per line, written atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
