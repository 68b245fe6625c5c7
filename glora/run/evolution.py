"""Step 2 of GLoRA: evolutionary search of a subnet under a parameter budget, then merge and export.

    glora-evolution --dataset DATASET --save_path SAVE_DIR --load_path SUPERNET_SAVE_DIR \
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
from glora.io.files import read_regular_text
from glora.io.outputs import OutputFolder
from glora.run.backbone import autocast_dtype, resolve_device, set_matmul_numerics
from glora.run.checkpoint import CheckpointError, subnet_document, versions
from glora.run.config import add_common_args, differing_settings, run_command, write_yaml
from glora.run.engine import evaluate
from glora.run.preflight import check_search
from glora.run.results import write_results
from glora.run.inputs import PATH_KEYS, differing_inputs
from glora.run.logs import log, run_log
from glora.run.searcher import (ADOPTED, Job, budget_limit, current_inputs, eval_loaders, export_and_test,
                                make_results, prepare, resume_state, run_search)
from glora.run.settings import SearchSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("GLoRA evolutionary search", add_help=True)
    add_common_args(parser)
    parser.add_argument("--save_path", "--save-path", type=str, default="runs/search", help="output folder of this search")
    parser.add_argument("--load_path", "--load-path", type=str, default="runs/supernet", help="supernet --save_path")
    parser.add_argument("--param-limits", type=float, default=1.0, help="max GLoRA parameters (M)")
    parser.add_argument("--min-param-limits", type=float, default=0.0, help="min GLoRA parameters (M)")
    parser.add_argument("--max-epochs", "--epochs", dest="max_epochs", type=int, default=20,
                        help="generations after the initial population")
    parser.add_argument("--select-num", type=int, default=10)
    parser.add_argument("--population-num", type=int, default=50)
    parser.add_argument("--m_prob", "--m-prob", type=float, default=0.2)
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


def settings_from(argv: list[str] | None) -> SearchSettings:
    """The typed settings of a command line (CLI > --config YAML > defaults), with what was given."""
    return SearchSettings.from_argv(get_args_parser(), argv)


def completed(settings: SearchSettings) -> str | None:
    """'already finished: …' if --save_path holds this run's results.json, else None.

    Results written with other settings are an error, never silently reused. Settings taken from
    the checkpoint (model, rank, …) are compared only where given explicitly, as they are resolved.
    """
    path = Path(settings.save_path) / "results.json"
    try:
        record = json.loads(read_regular_text(path))  # a FIFO or a link there: one line, never a hang
    except (OSError, ValueError):  # absent or half-written: not finished
        return None
    # Inputs are compared by content where the results record them, so a moved folder still counts.
    paths_free = PATH_KEYS if "inputs" in record else frozenset()
    current = {key: value for key, value in settings.record().items()
               if (key in settings.given or key not in ADOPTED + ("pretrained",)) and key not in paths_free}
    diffs = differing_settings(record.get("config", {}), current)
    diffs += differing_inputs(record.get("inputs"), lambda: current_inputs(settings))
    if diffs:
        raise CheckpointError(f"{path} holds results of other settings ({'; '.join(diffs)}); they are kept: "
                              f"to run these settings, move {path.parent} aside or use another --save_path")
    return f"already finished: {path} (test acc1 {record.get('test_acc1')})"


# What marks a folder as holding a search or export; --overwrite deletes these and the extras.
OUTPUTS = ("results.json", "search_state.json", "subnet.yaml")
EXTRAS = ("history.jsonl", "merged", "args.yaml", "run.log")


def output_folder(settings: SearchSettings) -> OutputFolder:
    """--save_path as this search owns it (results, state or subnet mark a run)."""
    return OutputFolder(settings.save_path, OUTPUTS, EXTRAS)


def main(settings: SearchSettings) -> None:
    s = settings
    check_search(s, get_args_parser())  # every flag in its range, before anything is read
    out = Path(s.save_path)
    auto = s.resume == "auto"
    if auto:  # finished: nothing to do; a search state: continue it; none: start
        finished = completed(s)
        if finished:
            print(finished)
            return
        s = s.replace(resume=(out / "search_state.json").is_file())
    folder = output_folder(s)
    folder.check(s.resume or auto, s.overwrite)  # writes nothing: a refused run leaves no trace
    seen = folder.held_outputs()
    device = resolve_device(s.device)
    set_matmul_numerics(s.precision, device)
    torch.manual_seed(s.seed)
    job = prepare(s, device)  # checkpoint, model, budget: all checked before data is read
    s = job.settings  # with the model settings the checkpoint records
    state = resume_state(out / "search_state.json", job.supernet, s, glora.layer_shapes(job.model)) \
        if s.resume and job.searching else None
    loaders = eval_loaders(s, job.task, device)  # the data is read before --overwrite removes anything
    with folder.acquire(s.overwrite, seen), run_log(out / "run.log", "glora-evolution", s.argv, versions()):
        log(f"{'searching' if job.searching else 'exporting'} {job.ckpt_path} ({job.ckpt['mode']}, epoch "
            f"{job.ckpt['epoch']}, sha256 {job.supernet['sha256'][:12]}…)", file_only=True)
        write_yaml(out / "args.yaml", s.record())  # the resolved settings, checkpoint's included
        results = search_and_export(s, job, device, out, state, loaders)
        log(f"{job.task.name}: {job.method} with {results.params_M:.4f}M params: {results.selection_split} "
            f"acc1 {results.search_acc1:.2f}, test acc1 {results.test_acc1:.2f} -> {out}")


def search_and_export(s: SearchSettings, job: Job, device: torch.device, out: Path, state, loaders):
    """Search (or take the fixed subnet), export, test; write results.json."""
    search_loader, test_loader = loaders
    model, subnet, start = job.model, job.subnet, time.time()
    if job.searching:
        subnet, info = run_search(s, model, search_loader, device, out, state, job.supernet)
    params = glora.count_params(model, subnet) if subnet is not None else sum(
        p.numel() for n, p in model.named_parameters() if not glora.is_trainable_name(n, glora.head_names(model)))
    if subnet is not None:
        glora.set_subnet(model, subnet)
        write_yaml(out / "subnet.yaml", subnet_document(
            job.names, subnet, s.rank, params, dataset=job.task.name, method=job.method,
            protocol=s.protocol, param_limit_M=budget_limit(s, job.ckpt, job.searching)))
    if not job.searching:  # a fixed subnet or a fully fine-tuned model: only its search-split score
        info = {"search_acc1": evaluate(model, search_loader, device, autocast_dtype(s.precision, device))["acc1"]}
    timer = {"search": time.time() - start}
    start = time.time()
    tested = export_and_test(s, job.task, model, test_loader, device, out)
    timer["test_and_export"] = time.time() - start
    results = make_results(s, job, params, info, tested, timer)
    write_results(out / "results.json", results)
    return results


def cli(argv: list[str] | None = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    settings = settings_from(argv)
    run_command(settings, main, lambda: interrupted(settings))


def interrupted(settings: SearchSettings) -> str:
    """The line for Ctrl-C: where the search can continue from, if anywhere."""
    state = Path(settings.save_path) / "search_state.json"
    if state.is_file():
        return (f"interrupted; the search state of the last finished generation is in {state}; "
                "continue with --resume")
    return f"interrupted before a search state was written (there is no {state}); run the same command again to start over"


if __name__ == "__main__":
    cli(sys.argv[1:])
