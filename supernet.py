"""Step 1 of GLoRA: train the supernet (or one fixed subnet) on a VTAB-1k task.

    python supernet.py --dataset DATASET --lr LR --model 'vit_base_patch16_224_in21k' \
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
from glora.checkpoint import CheckpointError, load_checkpoint
from glora.checks import SUPERNET_RANGES, check_batch_size, check_common, check_ranges
from glora.config import (add_common_args, config_dict, differing_settings, parse_args,
                          sigterm_as_interrupt, write_yaml)
from glora.distributed import close, init_world
from glora.engine import NonFiniteLossError
from glora.errors import one_line_errors
from glora.model import resolve_device, set_matmul_numerics
from glora.outputs import OutputFolder
from glora.training import Run, describe, fit, load_data, trim_log
from vtab.dataset import count_listed


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("GLoRA supernet training", add_help=True)
    add_common_args(parser)
    parser.add_argument("--save_path", type=str, default="runs/supernet", help="output folder")
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


def checkpoint_path(args: argparse.Namespace) -> Path:
    """Where this run's checkpoint lives: SAVE_DIR/<dataset>.pt."""
    return Path(args.save_path) / f"{vtab.resolve_task(args.dataset).name}.pt"


def completed(args: argparse.Namespace) -> str | None:
    """'already finished: …' if --save_path holds this run's checkpoint at epoch --epochs, else None.

    A finished checkpoint trained with other settings is an error, never silently reused.
    """
    path = checkpoint_path(args)
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path, mmap=True)
    if ckpt.get("epoch") != args.epochs:
        return None
    diffs = differing_settings(ckpt.get("config", {}), config_dict(args))
    if diffs:
        raise CheckpointError(f"{path} is a finished run with other settings ({'; '.join(diffs)}); "
                              "use another --save_path or delete it")
    return f"already finished: {path} ({args.epochs} epochs)"


def output_folder(args: argparse.Namespace) -> OutputFolder:
    """--save_path as this run owns it: the checkpoint marks a run; log and config go with it."""
    name = vtab.resolve_task(args.dataset).name
    return OutputFolder(args.save_path, [f"{name}.pt"], [f"{name}_log.jsonl", f"{name}_args.yaml"],
                        lock_name=f".{name}.lock")


def main(args: argparse.Namespace) -> None:
    check_args(args)  # every flag in its range, before anything is built or read
    if args.resume == "auto":  # finished: nothing to do; a state: continue it; none: start fresh
        finished = completed(args)
        if finished:
            print(finished)
            return
        args.resume = checkpoint_path(args).is_file()
    if args.resume and not checkpoint_path(args).is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {checkpoint_path(args)}")
    device = resolve_device(args.device)
    set_matmul_numerics(args.precision, device)
    world = init_world("nccl" if device.type == "cuda" else "gloo")  # one rank outside torchrun
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    say = print if world.main else (lambda *a, **k: None)  # only rank 0 prints and writes
    folder = output_folder(args)  # rank 0 owns it (torchrun stops the other ranks if it refuses)
    if world.main:
        folder.check(args.resume, args.overwrite)  # writes nothing: a refused run leaves no trace
    seen = folder.held_outputs()
    torch.manual_seed(args.seed)  # the same on every rank: the same head init and choice sampler
    run = Run(args, device, world)  # model, weights, targets, rank and input size checked
    check_batch_size(args.batch_size, count_listed(args.data_path, run.task, run.splits["train"]),
                     f"{run.task.name}/{run.splits['train']}", world.size)
    with folder.acquire(args.overwrite, seen) if world.main else contextlib.nullcontext():
        if args.resume:
            run.restore()  # refuses a checkpoint trained with other settings
            say(f"resumed {run.ckpt_path} at epoch {run.epoch}")
        if world.main:
            trim_log(run.log_path, run.epoch)  # a fresh run (epoch 0) starts a fresh log
            write_yaml(Path(args.save_path) / f"{run.task.name}_args.yaml", config_dict(args))
        train_loader, val_loader = load_data(args, run, device)
        say(describe(run, len(train_loader.split)))
        start = time.time()
        try:
            with sigterm_as_interrupt():  # pre-emption saves like Ctrl-C
                fit(run, train_loader, val_loader)
        except NonFiniteLossError as err:
            kept = f"kept the last good checkpoint {run.ckpt_path}" if run.ckpt_path.exists() else "no checkpoint was written"
            raise SystemExit(f"error: {err}; stopped, {kept}") from None
        finally:
            close(world)
    say(f"done: {args.epochs} epochs in {time.time() - start:.1f}s -> {run.ckpt_path}")


def check_args(args: argparse.Namespace) -> None:
    """The flags' ranges (one line each, naming the valid range)."""
    parser = get_args_parser()
    check_common(args, parser)
    check_ranges(args, parser, SUPERNET_RANGES)


def cli(argv: list[str] | None = None) -> None:
    """Parse, run, and turn the expected failures into one-line errors."""
    args = parse_args(get_args_parser(), argv)
    try:
        with one_line_errors(), sigterm_as_interrupt():
            main(args)
    except KeyboardInterrupt:  # outside the epoch loop (which saves and explains itself)
        path = checkpoint_path(args)
        if path.is_file():
            raise SystemExit(f"interrupted; the last checkpoint is {path}; continue with --resume") from None
        raise SystemExit("interrupted before a checkpoint was written; run the same command again") from None


if __name__ == "__main__":
    cli(sys.argv[1:])
