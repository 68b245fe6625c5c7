"""One search of step 2 (``glora.run.evolution``): the supernet checkpoint loaded with the settings it records,
the resumable evolutionary search, the export and test, and the results.json record."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

import glora
import vtab
from glora.run.checkpoint import (MODEL_KEYS, CheckpointError, check_compatible, load_checkpoint, load_subnet,
                                  state_digest, subnet_origin, versions)
from glora.run.compile import compile_fixed, resolve_compile
from glora.run.inputs import run_inputs, subnet_digest
from glora.run.logs import Scalars, log
from glora.run.engine import evaluate
from glora.errors import TargetError
from glora.export.timm_folder import export_timm_folder
from glora.merge import CandidateModel
from glora.run.backbone import autocast_dtype, build_model, frozen_digest
from glora.io.files import atomic_write
from glora.run.results import Results
from glora.run.settings import SearchSettings
from glora.run.preflight import forward_once
from glora.io.progress import progress as progress_bar
from glora.search import EvolutionSearch, check_budget
from glora.export.timm_bias import unexportable_bias_free


@dataclass
class Job:
    """What one search or export works on, checked before any data is read."""
    settings: SearchSettings  # the step's settings with those adopted from the checkpoint
    task: vtab.TaskInfo
    ckpt: dict
    ckpt_path: Path
    model: nn.Module
    names: list[str]
    subnet: list | None   # the fixed subnet to export, or None (a search, or full fine-tuning)
    method: str
    searching: bool
    supernet: dict        # what was loaded: path, epoch, content hash of its trained tensors
    inputs: dict          # the content digests of what this step reads (glora.run.inputs)


def prepare(s: SearchSettings, device: torch.device) -> Job:
    """Load the checkpoint and model, decide between search and export, and check everything that
    can fail (settings, partial training, input size, budget, exportability) before data is read."""
    s, task, ckpt, ckpt_path, model = load_model(s, device)
    names = [n for n, _ in glora.glora_layers(model)]
    subnet, method = choose_fixed(s, ckpt, names)
    searching = subnet is None and ckpt["mode"] == "supernet"
    if searching:  # fail in seconds on an impossible budget or an unexportable layer
        check_budget(s.rank, glora.layer_shapes(model), s.min_params, s.max_params)
        refuse_unexportable(model)
    record = {"checkpoint": str(ckpt_path), "epoch": ckpt["epoch"], "sha256": state_digest(ckpt["state_dict"])}
    inputs = step_inputs(s, task, record["sha256"])
    return Job(s, task, ckpt, ckpt_path, model, names, subnet, method, searching, record, inputs)


def step_inputs(s: SearchSettings, task: vtab.TaskInfo, supernet_sha256: str | None) -> dict:
    """The content digests of what this step reads: the search and test lists, the weights, the
    checkpoint's trained tensors and a subnet file."""
    splits = vtab.PROTOCOLS[s.protocol]
    return run_inputs(s.data_path, task, (splits["search"], splits["test"]), s.pretrained,
                      supernet=supernet_sha256, subnet=subnet_digest(s.subnet))


def current_inputs(s: SearchSettings) -> dict:
    """The inputs a run of these settings would record now (for a finished-run check); the
    checkpoint's parts are left out when it cannot be read."""
    task = vtab.resolve_task(s.dataset)
    try:
        ckpt = load_checkpoint(Path(s.load_path) / f"{task.name}.pt")
    except CheckpointError:
        inputs = step_inputs(s, task, None)
        return {k: v for k, v in inputs.items() if k not in ("supernet", "pretrained")}
    return step_inputs(adopt_recorded(s, ckpt, Path(s.load_path), quiet=True), task, state_digest(ckpt["state_dict"]))


def load_model(s: SearchSettings, device: torch.device):
    """The settings adopted from the checkpoint, and the backbone with its trained tensors."""
    task = vtab.resolve_task(s.dataset)
    ckpt_path = Path(s.load_path) / f"{task.name}.pt"
    ckpt = load_checkpoint(ckpt_path)  # refuses a malformed or non-finite checkpoint
    s = adopt_recorded(s, ckpt, ckpt_path)
    check_compatible(ckpt, {"dataset": task.name}, ckpt_path)
    check_finished(ckpt, ckpt_path, s.allow_partial)
    model = rebuild_model(ckpt, ckpt_path, s.model, task.num_classes, s.pretrained, s.model_kwargs)
    forward_once(model, torch.zeros(1, s.model_kwargs.get("in_chans", 3), s.input_size, s.input_size))
    if ckpt["mode"] != "full":
        names = glora.inject_glora(model, s.rank, targets=s.targets)
        recorded = ckpt.get("layer_names")
        if recorded is not None and names != recorded:
            raise CheckpointError(f"{ckpt_path} holds {len(recorded)} GLoRA layers ({recorded[0]} …), but "
                                  f"targets {s.targets!r} give {len(names)} here ({names[0]} …)")
    check_frozen(model, ckpt, ckpt_path)
    glora.load_trained_state(model, ckpt["state_dict"], full=ckpt["mode"] == "full")
    print(f"loaded {ckpt_path} ({ckpt['mode']}, epoch {ckpt['epoch']})")
    return s, task, ckpt, ckpt_path, model.to(device).eval()


def rebuild_model(ckpt: dict, path: Path, name: str, num_classes: int, pretrained: str | None,
                  model_kwargs: dict) -> nn.Module:
    """The model the checkpoint trained, built again: the same weights file and the same seed, so a
    random backbone (``--pretrained none``) and any untrained head come out bit for bit."""
    seed = (ckpt.get("backbone") or {}).get("init_seed", ckpt.get("config", {}).get("seed"))
    return build_model(name, num_classes, pretrained, model_kwargs, drop_path_rate=0.0, init_seed=seed)


def check_frozen(model: nn.Module, ckpt: dict, path: Path) -> None:
    """Refuse a rebuilt model whose frozen tensors differ from those the checkpoint trained with
    (other weights, another torch build): its scores would be of a model nobody trained."""
    recorded = (ckpt.get("backbone") or {}).get("frozen_sha256")
    if recorded is None or ckpt["mode"] == "full":
        return
    if frozen_digest(model, ckpt["state_dict"]) != recorded:
        raise CheckpointError(f"{path}: the frozen backbone built here differs from the one it was trained with "
                              f"(sha256 {recorded[:12]}… recorded); give the same --pretrained file, or for a random "
                              "backbone the same torch version")


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
ADOPTED = MODEL_KEYS


def adopt_recorded(s: SearchSettings, ckpt: dict, path: Path, quiet: bool = False) -> SearchSettings:
    """Take model, kwargs, rank, targets, input size, protocol and weights path from the checkpoint;
    refuse a flag given on the command line or in the YAML that contradicts one of them. Returns
    the settings with the adopted values.

    An original-code checkpoint records only the rank, so the flags are trusted for the rest. The
    weights path may legitimately differ (a moved file): an explicit ``--pretrained`` wins, with a note.
    """
    recorded = {key: ckpt[key] for key in ADOPTED if key in ckpt}
    if ckpt.get("mode") == "full":
        recorded.pop("targets", None)
    elif "model" in recorded and recorded.get("targets") is None:  # saved before targets were recorded
        recorded["targets"] = glora.DEFAULT_TARGETS
    given = s.given
    s = s.replace(targets=s.targets or glora.DEFAULT_TARGETS)
    current = {key: getattr(s, key) for key in recorded}
    if "protocol" in recorded:  # val and retrain share one supernet
        current["protocol"] = supernet_protocol(ckpt, s.protocol)
    check_compatible(recorded, {key: value for key, value in current.items() if key in given}, path)
    adopted = {key: value for key, value in recorded.items() if key not in given}
    weights = ckpt.get("config", {}).get("pretrained")
    if weights is not None and "pretrained" not in given:
        adopted["pretrained"] = weights
    elif weights is not None and s.pretrained != weights and not quiet:
        print(f"note: backbone weights from --pretrained {s.pretrained} (the checkpoint was trained with {weights})")
    return s.replace(**adopted)


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


def choose_fixed(s: SearchSettings, ckpt, layer_names) -> tuple[list | None, str]:
    """The subnet to export without search, if any, and the method label for results.json.

    A trained checkpoint is exported as what it trained: ``--subnet`` may restate its subnet, but
    naming another would record a model that was never trained as a trained baseline.
    """
    if ckpt["mode"] == "full":
        if s.subnet:
            raise CheckpointError(f"--subnet {s.subnet}: the checkpoint is a full fine-tuning run, which has no "
                                  "subnet; export it without --subnet")
        return None, "full_finetune"
    given = load_subnet(s.subnet, layer_names, s.rank) if s.subnet else None
    if ckpt["mode"] == "subnet":
        if given is not None and given != ckpt["subnet"]:
            raise CheckpointError(f"--subnet {s.subnet} differs from the subnet this checkpoint trained "
                                  f"({ckpt.get('method') or ckpt['config'].get('subnet')}); export it without --subnet, "
                                  "or train that subnet first")
        return ckpt["subnet"], ckpt.get("method") or ckpt["config"].get("subnet") or "subnet"
    if given is not None:
        return given, subnet_origin(s.subnet)["method"]
    return None, "glora"


def new_search(s: SearchSettings, shapes, evaluate_fn) -> EvolutionSearch:
    """The evolutionary search these settings describe, scoring candidates with ``evaluate_fn``."""
    return EvolutionSearch(evaluate_fn, shapes, s.rank, population_num=s.population_num,
                           select_num=s.select_num, mutation_num=s.mutation_num, m_prob=s.m_prob,
                           crossover_num=s.crossover_num, max_epochs=s.max_epochs, max_params=s.max_params,
                           min_params=s.min_params, seed=s.seed, plain_tries=s.plain_tries,
                           sampling=s.sampling)


def resume_state(path: Path, supernet: dict, s: SearchSettings, shapes) -> dict:
    """The search state to continue, checked whole before anything is written: refused if
    unreadable, saved on another supernet, or saved with other search settings."""
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
        raise CheckpointError(f"{path} does not record which supernet it searched, so it cannot be checked against "
                              f"{supernet['checkpoint']}; search afresh in another --save_path")
    try:
        new_search(s, shapes, lambda subnet: 0.0).load_state_dict(state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return state


def run_search(s: SearchSettings, model, search_loader, device, out: Path, state: dict | None,
               supernet: dict) -> tuple[list, dict]:
    """Resumable evolutionary search; state and history are rewritten atomically every generation.

    ``state``: a search state to continue; ``supernet``: the record of the supernet searched,
    kept in every state written so that a resume against another supernet is refused.
    """
    amp = autocast_dtype(s.precision, device)
    candidate = CandidateModel(model)
    compile_fixed(candidate.plain, resolve_compile(s.compile, device))
    evaluate_fn = lambda subnet: evaluate(candidate.load(subnet), search_loader, device, amp)["acc1"]
    search = new_search(s, glora.layer_shapes(model), evaluate_fn)
    state_path = out / "search_state.json"
    if state is not None:
        search.load_state_dict(state)  # checked by resume_state before anything was written
        log(f"resumed the search at generation {search.generation}")
    bar = progress_bar(desc="search", total=s.max_epochs + 1, enabled=s.progress, unit="generation")
    bar.update(search.generation)  # generations a resumed search has done already
    scalars = Scalars(s.log_tensorboard)

    def on_generation(state: dict, info: dict) -> None:
        write_json(state_path, {**state, "supernet": supernet})
        write_lines(out / "history.jsonl", state["evaluated"])
        bar.update(1)
        bar.set_postfix(best=f"{info['best_fitness']:.2f}", params=f"{info['best_params'] / 1e6:.3f}M")
        new = [r["fitness"] for r in info["records"]]
        mean = sum(new) / len(new) if new else float("nan")
        log(f"generation {info['generation']}: best {info['best_fitness']:.2f} at {info['best_params'] / 1e6:.4f}M, "
            f"mean of {len(new)} new {mean:.2f}, {info['num_evaluated']} evaluated", file_only=True)
        scalars.add(info["generation"], **{"search/best": info["best_fitness"], "search/mean_new": mean,
                                            "search/best_params_M": info["best_params"] / 1e6})

    result = search.run(on_generation)
    bar.close()
    scalars.close()
    fitness = result.fitness
    if state is not None:  # a resumed state's numbers are its file's: the winner is scored again here
        fitness = evaluate_fn(result.subnet)
        if fitness != result.fitness:
            log(f"note: {state_path} records {result.fitness:.2f} for the chosen subnet, which scores {fitness:.2f} "
                "here; the score computed here is reported")
    return result.subnet, {"search_acc1": fitness, "num_evaluated": result.num_evaluated,
                           "generations": result.generations, "stats": result.stats,
                           "top_k": [{k: r[k] for k in ("params", "fitness", "generation")} for r in result.top_k]}


def export_and_test(s: SearchSettings, task, model, test_loader, device, out: Path) -> dict:
    """Test the chosen model, merge it, export it, reload it with plain timm and test again."""
    amp = autocast_dtype(s.precision, device)
    unmerged = evaluate(model, test_loader, device, amp)
    merged = glora.merge_glora(copy.deepcopy(model).cpu())  # a no-op for a fully fine-tuned model
    folder = export_timm_folder(merged, out / "merged", s.input_size, vtab.IMAGENET_DEFAULT_MEAN,
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
        log(f"note: under {s.precision} the exported model scores {again['acc1']:.2f} on test and the "
            f"unmerged subnet {unmerged['acc1']:.2f} (rounding); in fp32 they agree")
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


def eval_loader(s: SearchSettings, task, split: str, device: torch.device):
    """A split decoded once, evaluated in chunks (the uint8 stays on the host)."""
    data = vtab.load_split(s.data_path, task.name, split, input_size=s.input_size, progress=s.progress)
    return vtab.Loader(data, s.eval_batch_size, shuffle=False, drop_last=False, device=device, resident=False)


def eval_loaders(s: SearchSettings, task, device: torch.device) -> tuple:
    """The search split's and the test split's loaders (one, under `paper`, where they are the same)."""
    splits = vtab.PROTOCOLS[s.protocol]
    loaders = {split: eval_loader(s, task, split, device) for split in {splits["search"], splits["test"]}}
    return loaders[splits["search"]], loaders[splits["test"]]


SPLIT_PARTS = {"train800val200": ("train800", "val200")}


def budget_limit(s: SearchSettings, ckpt, searching: bool) -> float | None:
    """The parameter limit (M) a GLoRA subnet was searched under: this search's, or the one the
    search's subnet.yaml recorded (given with --subnet, or carried by a training checkpoint)."""
    if searching:
        return s.param_limits
    if s.subnet:
        return subnet_origin(s.subnet)["param_limit_M"]
    return ckpt.get("param_limit_M")


def make_results(s: SearchSettings, job: Job, params: int, info: dict, tested: dict, timer: dict) -> Results:
    """The results.json record of this step (see ``glora.run.results.Results``)."""
    ckpt, splits = job.ckpt, vtab.PROTOCOLS[s.protocol]
    stats = info.get("stats", {})
    draws = stats.get("plain_draws", 0)
    searched = ckpt["mode"] == "supernet"
    # weights: "supernet" = used as the supernet trained them (the paper's way); "trained" = a fixed
    # subnet or baseline trained on its own, from a fresh init or from a supernet's tensors.
    trained_on = ckpt.get("splits", {}).get("train", splits["train"])
    search = {k: v for k, v in info.items() if k != "search_acc1"}
    return Results(
        dataset=job.task.name, group=job.task.group, method=job.method, protocol=s.protocol,
        weights="supernet" if searched else "trained", init="inherited" if searched else ckpt.get("init", "fresh"),
        splits={"train": trained_on, "search": splits["search"], "test": splits["test"]},
        search_split_in_training=splits["search"] in SPLIT_PARTS.get(trained_on, (trained_on,)),
        selection_split=splits["search"], search_acc1=info["search_acc1"], test_acc1=tested["test_acc1"],
        test_acc1_merged=tested["test_acc1_merged"], test_n=tested["test_n"], params=params, params_M=params / 1e6,
        head_params=sum(p.numel() for h in glora.head_names(job.model) for p in job.model.get_submodule(h).parameters()),
        param_limit_M=budget_limit(s, ckpt, job.searching),
        min_param_limit_M=s.min_param_limits if job.searching else None,
        rank=s.rank, seed=s.seed, supernet_seed=ckpt["config"].get("seed"), supernet_epochs=ckpt["epoch"],
        supernet_sha256=job.supernet["sha256"], model=s.model, model_kwargs=dict(s.model_kwargs),
        search={**search, "stats": stats,
                "plain_draw_acceptance": stats.get("plain_accepted", 0) / draws if draws else None},
        versions=versions(), wall_time_s=timer, config=s.record(), inputs=dict(job.inputs),
        subnet_file="subnet.yaml" if job.method != "full_finetune" else None, merged_model_dir="merged")


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(data, indent=1))


def write_lines(path: Path, records) -> None:
    """One JSON record per line, written atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
