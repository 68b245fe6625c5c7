"""One training run of ``supernet.py``: the model with its supports, optimizer, schedule and
checkpoint (``Run``), the epoch loop (``fit``), and the log. The CLI wires these together."""
from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler

import glora
import vtab
from glora.checkpoint import (CheckpointError, atomic_torch_save, check_compatible, load_checkpoint,
                              load_subnet, subnet_origin, versions)
from glora.compile import compile_fixed, resolve_compile
from glora.config import RUN_ONLY_KEYS, config_dict, differing_settings
from glora.distributed import World, average_gradients, epoch_seed, mean_over_ranks
from glora.engine import evaluate, evaluate_subnets, train_one_epoch, zero_fill_stepped_grads
from glora.model import autocast_dtype, build_model
from glora.checks import check_rank
from glora.files import atomic_write
from glora.probe import check_targets_called, forward_once
from glora.space import sample_choice
from glora.timm_bias import unexportable_bias_free


# Settings a resumed run may change: where files are (a moved data tree, weights or subnet file,
# the dataset's alias) and how the run reports; everything else changes the result and must match.
# The subnet itself (not its file name) is compared, as is the init (not the supernet's path).
RESUME_FREE_KEYS = RUN_ONLY_KEYS | {"data_path", "pretrained", "save_path", "init_from", "dataset", "subnet"}


class Run:
    """Everything one training run owns; ``payload()`` is its checkpoint."""

    def __init__(self, args: argparse.Namespace, device: torch.device, world: World = World()):
        self.args, self.device, self.world = args, device, world
        self.task = vtab.resolve_task(args.dataset)
        self.mode = "full" if args.full_finetune else ("subnet" if args.subnet else "supernet")
        protocol = vtab.PROTOCOLS[args.protocol]
        # A supernet trains on the protocol's supernet split; a fixed subnet or baseline on its
        # final-training split (train800val200 under `retrain`).
        train = protocol["train"] if self.mode == "supernet" else protocol["fit"]
        self.splits = {"train": train, "search": protocol["search"], "test": protocol["test"]}
        self.model = build_model(args.model, self.task.num_classes, args.pretrained,
                                 args.model_kwargs, args.drop_path)
        self.layer_names: list[str] = []
        self.sampler = self.subnet = self.targets = None
        probe = torch.zeros(1, args.model_kwargs.get("in_chans", 3), args.input_size, args.input_size)
        if self.mode != "full":
            self.targets = args.targets or glora.DEFAULT_TARGETS
            self.layer_names = inject_targets(self.model, self.targets, args.rank, probe)
            glora.mark_trainable(self.model)
        else:
            forward_once(self.model, probe)  # --input-size must fit the model
        self.origin = {"method": "full_finetune" if self.mode == "full" else "glora", "param_limit_M": None}
        if self.mode == "subnet":
            self.subnet = load_subnet(args.subnet, self.layer_names, args.rank)
            self.origin = subnet_origin(args.subnet)
            glora.set_subnet(self.model, self.subnet)
        elif self.mode == "supernet":
            self.sampler = glora.set_subnet(self.model, None, seed=args.seed)
        self.init = init_from_supernet(self, args.init_from) if args.init_from else {"init": "fresh"}
        self.model.to(device)
        # A fixed subnet trains exactly the entries it reads (views of partly read tensors), so the
        # trainable count is its budget count plus the head, and AdamW holds moments for no more.
        params = (glora.train_read_entries(self.model) if self.mode == "subnet"
                  else [p for p in self.model.parameters() if p.requires_grad])
        if self.mode != "supernet":  # a sampling supernet changes its graph every step
            compile_fixed(self.model, resolve_compile(args.compile, device))
        # The fused kernel on CUDA: one launch per step instead of one per tensor. It takes dense
        # tensors only, which a column view (a vector support's trained entries) is not.
        fused = device.type == "cuda" and all(p.is_contiguous() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, fused=fused)
        # The floor and warm-up start never exceed the peak, so --lr 0 really freezes the weights
        # (the original's absolute 1e-5 / 1e-6 would otherwise lift a smaller lr).
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=args.epochs,
                                           lr_min=min(args.min_lr, args.lr), warmup_t=args.warmup_epochs,
                                           warmup_lr_init=min(args.warmup_lr, args.lr))
        rng = random.Random(args.seed + 1)  # validation subnets: fixed for the whole run
        self.eval_subnets = [[sample_choice(rng, args.rank) for _ in self.layer_names]
                             for _ in range(args.eval_subnets)]
        self.epoch = 0
        out = Path(args.save_path)
        self.ckpt_path = out / f"{self.task.name}.pt"
        self.log_path = out / f"{self.task.name}_log.jsonl"

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict() if self.mode == "full" else glora.glora_state_dict(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def payload(self) -> dict:
        a = self.args
        return {"format_version": 1, "mode": self.mode, **self.origin, **self.init,
                "state_dict": self.trained_state(),
                "config": config_dict(a), "dataset": self.task.name, "protocol": a.protocol,
                "splits": dict(self.splits), "rank": a.rank, "targets": self.targets, "model": a.model,
                "model_kwargs": dict(a.model_kwargs), "input_size": a.input_size,
                "num_classes": self.task.num_classes, "layer_names": list(self.layer_names),
                "subnet": self.subnet, "eval_subnets": self.eval_subnets, "epoch": self.epoch,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "scheduler": dict(self.scheduler.state_dict()),
                "sampler": self.sampler.state_dict() if self.sampler else None,
                "torch_rng": torch.get_rng_state(), "world_size": self.world.size, "versions": versions()}

    def restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path)
        a = self.args
        check_compatible(ckpt, {"model": a.model, "model_kwargs": dict(a.model_kwargs), "rank": a.rank,
                                "targets": self.targets, "protocol": a.protocol, "dataset": self.task.name,
                                "mode": self.mode, "init": self.init["init"]}, self.ckpt_path)
        # Every setting that changes the result must be the one the checkpoint was trained with:
        # otherwise the run would record values it did not use (the optimizer keeps its own wd).
        diffs = differing_settings(ckpt["config"], config_dict(a), ignore=RESUME_FREE_KEYS)
        if self.mode == "subnet" and ckpt.get("subnet") != self.subnet:
            diffs.append(f"subnet: the checkpoint's layer choices differ from those of {a.subnet}")
        if diffs:
            raise CheckpointError(f"{self.ckpt_path} was trained with other settings ({'; '.join(diffs)}); "
                                  "resume with the recorded values, or start afresh with --overwrite")
        glora.load_trained_state(self.model, ckpt["state_dict"], full=self.mode == "full")
        params = trained_tensors(self.optimizer)  # the optimizer state is keyed by their index
        state = ckpt["optimizer"].get("state", {})
        if any(int(i) >= len(params) or ("exp_avg" in st and st["exp_avg"].shape != params[int(i)].shape)
               for i, st in state.items()):
            # e.g. a fixed subnet saved when it still trained whole factors, not the entries it reads
            raise CheckpointError(f"{self.ckpt_path}: its optimizer state does not fit the tensors this "
                                  "run trains (written by an earlier version?); start afresh with --overwrite")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if a.unused_supports == "update":
            zero_fill_stepped_grads(self.optimizer)  # the gradients an uninterrupted run would hold
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.sampler is not None:
            self.sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.epoch = ckpt["epoch"]

    def validate(self, loader) -> dict:
        amp = autocast_dtype(self.args.precision, self.device)
        if self.mode == "supernet":
            return evaluate_subnets(self.model, loader, self.device, self.eval_subnets, self.sampler, amp)
        return evaluate(self.model, loader, self.device, amp)


def inject_targets(model, targets: str, rank: int, probe: torch.Tensor) -> list[str]:
    """GLoRA into the linears ``targets`` matches, once a forward pass on ``probe`` shows they are
    called and ``rank`` fits them (checked before any support is allocated)."""
    check_rank(model, check_targets_called(model, targets, probe), rank)
    names = glora.inject_glora(model, rank, targets=targets)
    unexportable = unexportable_bias_free(model)
    if unexportable:  # evolution.py refuses to search these; say so before hours of training
        print(f"note: {', '.join(unexportable[:3])}{' …' if len(unexportable) > 3 else ''}: no bias, and "
              "timm has no flag to give one, so a subnet using C or E there cannot be exported")
    return names


def init_from_supernet(run: Run, spec: str) -> dict:
    """Start a fixed subnet's glora_* tensors and head from a supernet checkpoint; the record of it."""
    a = run.args
    if run.mode != "subnet":
        raise CheckpointError("--init-from starts a fixed subnet (--subnet PRESET|FILE) from a supernet's "
                              "trained tensors; it does not apply to a supernet or --full-finetune run")
    path = Path(spec)
    path = path / f"{run.task.name}.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, {"model": a.model, "model_kwargs": dict(a.model_kwargs), "rank": a.rank,
                            "targets": run.targets, "dataset": run.task.name}, path)
    if ckpt.get("mode") == "full":
        raise CheckpointError(f"{path} is a full fine-tuning checkpoint; --init-from needs GLoRA tensors")
    source = ckpt.get("protocol")
    # The subnet was chosen on the source's search split; training on it here is only honest when
    # this protocol selects on the same split (val and retrain share val200; paper uses test).
    if source is not None and vtab.PROTOCOLS[source]["search"] != vtab.PROTOCOLS[a.protocol]["search"]:
        raise CheckpointError(f"{path} was trained under protocol {source!r}, which selects on "
                              f"{vtab.PROTOCOLS[source]['search']}; this run's protocol {a.protocol!r} "
                              f"selects on {vtab.PROTOCOLS[a.protocol]['search']}")
    glora.load_trained_state(run.model, ckpt["state_dict"])
    return {"init": "inherited", "init_from": str(path), "init_epoch": ckpt.get("epoch"),
            "init_protocol": source}


def describe(run: Run, train_images: int) -> str:
    """The line a run starts with: mode, task, split size, layers, trainable parameters, device."""
    trainable = sum(p.numel() for p in trained_tensors(run.optimizer))
    world, batch = run.world, run.args.batch_size
    what = {"supernet": "all supernet storage + head", "subnet": "the subnet's budget count + head",
            "full": "the whole model"}[run.mode]
    return (f"{run.mode} on {run.task.name} ({run.splits['train']}: {train_images} images), "
            f"{len(run.layer_names)} GLoRA layers, {trainable:,} trainable parameters "
            f"({what}), device {run.device}"
            + (f", {world.size} ranks of {batch // world.size} images per step" if world.size > 1 else ""))


def trained_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors a run trains: its optimizer's (for a fixed subnet, views of the read entries)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def load_data(args: argparse.Namespace, run: Run, device: torch.device):
    """The protocol's training split (shuffled, drop_last) and search split, decoded once."""
    load = dict(input_size=args.input_size, progress=args.progress)
    train = vtab.load_split(args.data_path, run.task.name, run.splits["train"], **load)
    search = vtab.load_split(args.data_path, run.task.name, run.splits["search"], **load)
    train_loader = vtab.Loader(train, args.batch_size, shuffle=True, drop_last=True, seed=args.seed, device=device,
                               rank=run.world.rank, world_size=run.world.size)  # each rank: its share
    val_loader = vtab.Loader(search, args.eval_batch_size, shuffle=False, drop_last=False, device=device,
                             resident=len(search) <= 20000)
    return train_loader, val_loader


def fit(run: Run, train_loader, val_loader) -> None:
    """The epoch loop: train, step the schedule, validate every ``eval_every``, checkpoint."""
    args, device, world = run.args, run.device, run.world
    amp = autocast_dtype(args.precision, device)
    params = trained_tensors(run.optimizer)
    sync = (lambda: average_gradients(params, world)) if world.size > 1 else None
    # The exact state at the start of the current epoch, saved on Ctrl-C (rank 0 writes).
    snapshot = run.payload() if world.main else None
    while run.epoch < args.epochs:
        try:
            train_loader.set_epoch(run.epoch)
            if world.size > 1:  # stochastic depth: each rank its own draws, a function of the epoch
                torch.manual_seed(epoch_seed(args.seed, run.epoch, world))
            stats = train_one_epoch(run.model, train_loader, run.optimizer, device, run.epoch + 1, amp,
                                    progress=args.progress and world.main,
                                    zero_fill_grads=args.unused_supports == "update", after_backward=sync)
            loss = mean_over_ranks(stats["loss"], world, device)
            # As the original (FacT's loop): step with the finished epoch's index, so epoch e+1
            # trains at the schedule's value for e.
            run.scheduler.step(run.epoch)
            run.epoch += 1
            if world.main:
                snapshot = end_epoch(run, val_loader, {"epoch": run.epoch, "train_loss": loss, "lr": stats["lr"]})
        except KeyboardInterrupt:
            if not world.main:
                raise SystemExit(f"interrupted in epoch {run.epoch + 1} (rank {world.rank})") from None
            atomic_torch_save(snapshot, run.ckpt_path)
            raise SystemExit(f"interrupted in epoch {snapshot['epoch'] + 1}; saved the state at its start "
                             f"to {run.ckpt_path}; continue with --resume") from None


def end_epoch(run: Run, val_loader, record: dict) -> dict:
    """Validate when due, log, checkpoint; returns the new snapshot (rank 0 only)."""
    args = run.args
    if run.epoch % args.eval_every == 0 or run.epoch == args.epochs:
        val = run.validate(val_loader)
        record.update({"split": run.splits["search"], **{f"val_{k}": v for k, v in val.items()}})
        print(f"epoch {run.epoch}: loss {record['train_loss']:.4f}  {run.splits['search']} acc1 "
              f"{val['acc1']:.2f}  -> {run.ckpt_path}", flush=True)
    append_jsonl(run.log_path, record)
    snapshot = run.payload()  # built once: the checkpoint now, the Ctrl-C fallback next epoch
    if "split" in record or run.epoch % args.save_every == 0:
        atomic_torch_save(snapshot, run.ckpt_path)
    return snapshot


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def trim_log(path: Path, epoch: int) -> None:
    """Keep the log lines up to a resumed checkpoint's epoch (none for a fresh run), so the log
    matches the run. A last line cut off by a kill is dropped with a note; any other line that is
    not a record stops the resume, naming the file and line."""
    kept = []
    lines = path.read_bytes().decode("utf-8", "replace").splitlines() if epoch and path.is_file() else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            logged = record.get("epoch") if isinstance(record, dict) else None
            if not isinstance(logged, int):
                raise ValueError("no epoch")
        except ValueError:
            if number == len(lines):
                print(f"note: {path}:{number}: dropped an incomplete last line (the run was stopped while "
                      "writing it)")
                break
            raise CheckpointError(f"{path}:{number}: not a log record ({line[:40]!r}); mend or delete that "
                                  "line, or start afresh with --overwrite") from None
        if logged <= epoch:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept))
