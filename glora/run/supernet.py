"""Step 1 of GLoRA: train the supernet (or one fixed subnet) on a VTAB-1k task.

    glora-supernet --dataset DATASET --lr LR --model 'vit_base_patch16_224_in21k' \
        --save_path SAVE_DIR --rank LORA_RANK

Writes SAVE_DIR/<dataset>.pt (glora_* + head tensors and everything needed to resume),
SAVE_DIR/<dataset>_args.yaml (the resolved config) and SAVE_DIR/<dataset>_log.jsonl, holding the
lock SAVE_DIR/.<dataset>.lock while it runs. A SAVE_DIR that holds this run is refused unless
--resume (continue) or --overwrite (start afresh); every flag is checked before data is read.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

import vtab
from glora.io.outputs import OutputFolder
from glora.run.backbone import resolve_device, set_matmul_numerics
from glora.run.checkpoint import CheckpointError, load_checkpoint, recorded_settings, versions
from glora.run.config import (RUN_ONLY_KEYS, add_common_args, differing_settings, run_command, sigterm_as_interrupt,
                              write_yaml)
from glora.run.inputs import PATH_KEYS, differing_inputs
from glora.run.logs import log, run_log
from glora.run.distributed import close, init_world, on_main
from glora.run.engine import NonFiniteLossError
from glora.run.preflight import SUPERNET_RANGES, check_batch_size, check_common, check_ranges
from glora.run.settings import TrainSettings
from glora.run.trainer import (Run, current_inputs, describe, fit, load_data, model_record, stored_config,
                               trim_log)
from glora.io.files import check_regular
from vtab.dataset import count_listed


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("GLoRA supernet training", add_help=True)
    add_common_args(parser)
    parser.add_argument("--save_path", "--save-path", type=str, default="runs/supernet", help="output folder")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--warmup-lr", type=float, default=1e-6)
    parser.add_argument("--min-lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-every", type=int, default=100, help="validate every N epochs (and at the end)")
    parser.add_argument("--save-every", type=int, default=1,
                        help="write the resumable checkpoint every N epochs (and at each validation)")
    parser.add_argument("--eval-subnets", type=int, default=3,
                        help="number of fixed seeded subnets averaged at each supernet validation")
    parser.add_argument("--full-finetune", action="store_true",
                        help="baseline: no GLoRA, every backbone weight trains")
    parser.add_argument("--init-from", type=str, default=None,
                        help="start a fixed subnet's tensors and the head from this supernet checkpoint "
                             "(the .pt file or its --save_path folder) instead of a fresh init")
    parser.add_argument("--unused-supports", type=str, default="update", choices=("update", "freeze"),
                        help="update (the original): gradients are zero-filled, so AdamW keeps moving "
                             "supports the sampled path did not use; freeze: they stand still")
    parser.set_defaults(dataset="caltech101")  # the original supernet.py's default
    return parser


def settings_from(argv: list[str] | None) -> TrainSettings:
    """The typed settings of a command line (CLI > --config YAML > defaults)."""
    return TrainSettings.from_argv(get_args_parser(), argv)


def checkpoint_path(settings: TrainSettings) -> Path:
    """Where this run's checkpoint lives: SAVE_DIR/<dataset>.pt."""
    return Path(settings.save_path) / f"{vtab.resolve_task(settings.dataset).name}.pt"


def completed(settings: TrainSettings) -> str | None:
    """'already finished: …' if --save_path holds this run's checkpoint at epoch --epochs, else None.

    A finished checkpoint trained with other settings is an error, never silently reused.
    """
    path = checkpoint_path(settings)
    if not check_regular(path):  # absent; a link or a FIFO there is refused in one line
        return None
    ckpt = load_checkpoint(path, mmap=True)
    if ckpt.get("epoch") != settings.epochs:
        return None
    # Inputs are compared by content where the checkpoint records them, so a moved folder still counts.
    paths_free = RUN_ONLY_KEYS | PATH_KEYS if "inputs" in ckpt else RUN_ONLY_KEYS
    diffs = differing_settings(recorded_settings(ckpt), {**stored_config(settings), **model_record(settings)},
                               ignore=paths_free)
    diffs += differing_inputs(ckpt.get("inputs"), lambda: current_inputs(settings))
    if diffs:
        raise CheckpointError(f"{path} is a finished run with other settings ({'; '.join(diffs)}); it is kept: "
                              f"to run these settings, move {path.parent} aside or use another --save_path")
    return f"already finished: {path} ({settings.epochs} epochs)"


def output_folder(settings: TrainSettings) -> OutputFolder:
    """--save_path as this run owns it: the checkpoint marks a run; log and config go with it."""
    name = vtab.resolve_task(settings.dataset).name
    return OutputFolder(settings.save_path, [f"{name}.pt"], [f"{name}_log.jsonl", f"{name}_args.yaml", f"{name}_run.log"],
                        lock_name=f".{name}.lock")


def main(settings: TrainSettings) -> None:
    s = settings
    check_args(s)  # every flag in its range, before anything is built or read
    if s.resume == "auto":  # finished: nothing to do; a state: continue it; none: start fresh
        finished = completed(s)
        if finished:
            print(finished)
            return
        s = s.replace(resume=checkpoint_path(s).is_file())
    if s.resume and not checkpoint_path(s).is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {checkpoint_path(s)}")
    device = resolve_device(s.device)
    set_matmul_numerics(s.precision, device)
    world = init_world("nccl" if device.type == "cuda" else "gloo")  # one rank outside torchrun
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    say = log if world.main else (lambda *a, **k: None)  # only rank 0 prints and writes
    folder = output_folder(s)  # rank 0 owns it
    on_main(world, lambda: folder.check(s.resume, s.overwrite))  # writes nothing; every rank stops on a refusal
    seen = folder.held_outputs()
    torch.manual_seed(s.seed)  # the same on every rank: the same head init and choice sampler
    run = Run(s, device, world)  # model, weights, targets, rank and input size checked
    check_batch_size(s.batch_size, count_listed(s.data_path, run.task, run.splits["train"]),
                     f"{run.task.name}/{run.splits['train']}", world.size)
    with folder.acquire(s.overwrite, seen) if world.main else contextlib.nullcontext():
        if s.resume:
            run.restore()  # refuses a checkpoint trained with other settings, before anything is written
        log_path = Path(s.save_path) / f"{run.task.name}_run.log"
        with run_log(log_path, "glora-supernet", s.argv, versions()) if world.main else contextlib.nullcontext():
            train(s, run, device, say)


def train(s: TrainSettings, run: Run, device: torch.device, say) -> None:
    """The run's log and config, the data, the epochs, and the closing line."""
    if s.resume:
        say(f"resumed {run.ckpt_path} at epoch {run.epoch}")
    if run.world.main:
        trim_log(run.log_path, run.epoch)  # a fresh run (epoch 0) starts a fresh log
        write_yaml(Path(s.save_path) / f"{run.task.name}_args.yaml", s.record())
    train_loader, val_loader = load_data(s, run, device)
    say(describe(run, len(train_loader.split)))
    start = time.time()
    try:
        with sigterm_as_interrupt():  # pre-emption saves like Ctrl-C
            fit(run, train_loader, val_loader)
    except NonFiniteLossError as err:
        kept = f"kept the last good checkpoint {run.ckpt_path}" if run.ckpt_path.exists() else "no checkpoint was written"
        raise SystemExit(f"error: {err}; stopped, {kept}") from None
    finally:
        run.scalars.close()
        close(run.world)
    say(f"done: {s.epochs} epochs in {time.time() - start:.1f}s -> {run.ckpt_path}")


def check_args(settings: TrainSettings) -> None:
    """The flags' ranges (one line each, naming the valid range)."""
    parser = get_args_parser()
    check_common(settings, parser)
    check_ranges(settings, parser, SUPERNET_RANGES)


def cli(argv: list[str] | None = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    settings = settings_from(argv)
    run_command(settings, main, lambda: interrupted(settings))


def interrupted(settings: TrainSettings) -> str:
    """The line for Ctrl-C outside the epoch loop (which saves and explains itself)."""
    path = checkpoint_path(settings)
    if path.is_file():
        return f"interrupted; the last checkpoint is {path}; continue with --resume"
    return "interrupted before a checkpoint was written; run the same command again"


if __name__ == "__main__":
    cli(sys.argv[1:])
