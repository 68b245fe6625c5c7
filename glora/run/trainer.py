"""One training run of step 1 (``glora.run.supernet``): the model with its supports, optimizer, schedule and
checkpoint (``Run``), the epoch loop (``fit``), and the log. The CLI wires these together."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler

import glora
import vtab
from glora.run.checkpoint import (MODEL_KEYS, CheckpointError, atomic_torch_save, check_compatible,
                                  load_checkpoint, load_subnet, state_digest, subnet_origin, versions)
from glora.run.inputs import PATH_KEYS, run_inputs, subnet_digest
from glora.run.logs import Scalars, log
from glora.run.compile import compile_fixed, resolve_compile
from glora.run.config import RUN_ONLY_KEYS, differing_settings
from glora.run.settings import TrainSettings
from glora.run.distributed import World, average_gradients, epoch_seed, mean_over_ranks
from glora.run.engine import evaluate, evaluate_subnets, train_one_epoch, zero_fill_stepped_grads
from glora.run.backbone import autocast_dtype, build_model, frozen_digest
from glora.run.preflight import check_rank
from glora.io.files import atomic_write
from glora.run.preflight import check_targets_called, forward_once
from glora.space import sample_choice
from glora.export.timm_bias import unexportable_bias_free


# Settings a resumed run may change: where files are (a moved data tree, weights or subnet file,
# the dataset's alias) and how the run reports; everything else changes the result and must match.
# The subnet itself (not its file name) is compared, as is the init (not the supernet's path).
RESUME_FREE_KEYS = RUN_ONLY_KEYS | PATH_KEYS | {"dataset"}


class Run:
    """Everything one training run owns; ``payload()`` is its checkpoint."""

    def __init__(self, settings: TrainSettings, device: torch.device, world: World = World()):
        self.settings, self.device, self.world = settings, device, world
        s = settings
        self.task = vtab.resolve_task(s.dataset)
        self.mode = mode_of(s)
        self.splits = splits_of(s)
        self.model = build_model(s.model, self.task.num_classes, s.pretrained, s.model_kwargs, s.drop_path,
                                 init_seed=s.seed)
        self.layer_names: list[str] = []
        self.sampler = self.subnet = self.targets = None
        probe = torch.zeros(1, s.model_kwargs.get("in_chans", 3), s.input_size, s.input_size)
        if self.mode != "full":
            self.targets = s.targets or glora.DEFAULT_TARGETS
            self.layer_names = inject_targets(self.model, self.targets, s.rank, probe)
            glora.mark_trainable(self.model)
        else:
            forward_once(self.model, probe)  # --input-size must fit the model
        self.origin = {"method": "full_finetune" if self.mode == "full" else "glora", "param_limit_M": None}
        if self.mode == "subnet":
            self.subnet = load_subnet(s.subnet, self.layer_names, s.rank)
            self.origin = subnet_origin(s.subnet)
            glora.set_subnet(self.model, self.subnet)
        elif self.mode == "supernet":
            self.sampler = glora.set_subnet(self.model, None, seed=s.seed)
        self.init = init_from_supernet(self, s.init_from) if s.init_from else {"init": "fresh"}
        # How the frozen part was made: a later step rebuilds it with this seed and checks the digest.
        self.backbone = {"init_seed": s.seed, "frozen_sha256": frozen_digest(self.model, self.trained_state())}
        self.inputs = run_inputs(s.data_path, self.task, (self.splits["train"], self.splits["search"]),
                                 s.pretrained, subnet=subnet_digest(s.subnet), init=self.init.get("init_sha256"))
        self.model.to(device)
        # A fixed subnet trains exactly the entries it reads (views of partly read tensors), so the
        # trainable count is its budget count plus the head, and AdamW holds moments for no more.
        params = (glora.train_read_entries(self.model) if self.mode == "subnet"
                  else [p for p in self.model.parameters() if p.requires_grad])
        if self.mode != "supernet":  # a sampling supernet changes its graph every step
            compile_fixed(self.model, resolve_compile(s.compile, device))
        # The fused kernel on CUDA: one launch per step instead of one per tensor. It takes dense
        # tensors only, which a column view (a vector support's trained entries) is not.
        fused = device.type == "cuda" and all(p.is_contiguous() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, fused=fused)
        # The floor and warm-up start never exceed the peak, so --lr 0 really freezes the weights
        # (the original's absolute 1e-5 / 1e-6 would otherwise lift a smaller lr).
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=s.epochs,
                                           lr_min=min(s.min_lr, s.lr), warmup_t=s.warmup_epochs,
                                           warmup_lr_init=min(s.warmup_lr, s.lr))
        rng = random.Random(s.seed + 1)  # validation subnets: fixed for the whole run
        self.eval_subnets = [[sample_choice(rng, s.rank) for _ in self.layer_names]
                             for _ in range(s.eval_subnets)]
        self.epoch = 0
        self.world_sizes = {0: world.size}  # epoch a stretch of training started -> its ranks
        self.scalars = Scalars(s.log_tensorboard if world.main else None)
        out = Path(s.save_path)
        self.ckpt_path = out / f"{self.task.name}.pt"
        self.log_path = out / f"{self.task.name}_log.jsonl"

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict() if self.mode == "full" else glora.glora_state_dict(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def payload(self) -> dict:
        s = self.settings
        return {"format_version": 1, "mode": self.mode, **self.origin, **self.init,
                "state_dict": self.trained_state(),
                "config": stored_config(s), **model_record(s), "dataset": self.task.name,
                "splits": dict(self.splits), "inputs": dict(self.inputs), "backbone": dict(self.backbone),
                "num_classes": self.task.num_classes, "layer_names": list(self.layer_names),
                "subnet": self.subnet, "eval_subnets": self.eval_subnets, "epoch": self.epoch,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "scheduler": dict(self.scheduler.state_dict()),
                "sampler": self.sampler.state_dict() if self.sampler else None,
                "torch_rng": torch.get_rng_state(), "world_size": self.world.size,
                "world_sizes": dict(self.world_sizes), "versions": versions()}

    def restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path)
        s = self.settings
        check_compatible(ckpt, {"model": s.model, "model_kwargs": dict(s.model_kwargs), "rank": s.rank,
                                "targets": self.targets, "protocol": s.protocol, "dataset": self.task.name,
                                "mode": self.mode, "init": self.init["init"]}, self.ckpt_path)
        # Every setting that changes the result must be the one the checkpoint was trained with:
        # otherwise the run would record values it did not use (the optimizer keeps its own wd).
        diffs = differing_settings(ckpt["config"], stored_config(s), ignore=RESUME_FREE_KEYS)
        if self.mode == "subnet" and ckpt.get("subnet") != self.subnet:
            diffs.append(f"subnet: the checkpoint's layer choices differ from those of {s.subnet}")
        if diffs:
            raise CheckpointError(f"{self.ckpt_path} was trained with other settings ({'; '.join(diffs)}); "
                                  "resume with the recorded values, or start afresh with --overwrite")
        glora.load_trained_state(self.model, ckpt["state_dict"], full=self.mode == "full")
        params = trained_tensors(self.optimizer)  # the optimizer state is keyed by their index
        state = ckpt["optimizer"].get("state") if isinstance(ckpt.get("optimizer"), dict) else None
        state = state if isinstance(state, dict) else {}  # malformed: load_state_dict below says so
        if any(int(i) >= len(params) or ("exp_avg" in st and st["exp_avg"].shape != params[int(i)].shape)
               for i, st in state.items()):
            # e.g. a fixed subnet saved when it still trained whole factors, not the entries it reads
            raise CheckpointError(f"{self.ckpt_path}: its optimizer state does not fit the tensors this "
                                  "run trains (written by an earlier version?); start afresh in another --save_path")
        for part, load in (("optimizer", self.optimizer.load_state_dict), ("scheduler", self.scheduler.load_state_dict),
                           ("sampler", self.sampler.load_state_dict if self.sampler else None),
                           ("torch_rng", torch.set_rng_state)):
            if load is None:
                continue
            try:
                load(ckpt[part])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                raise CheckpointError(f"{self.ckpt_path}: its {part} state is malformed ({type(err).__name__}); "
                                      "it cannot be resumed exactly: start afresh in another --save_path") from None
        if s.zero_fill_grads:
            zero_fill_stepped_grads(self.optimizer)  # the gradients an uninterrupted run would hold
        self.epoch = ckpt["epoch"]
        self.world_sizes = dict(ckpt.get("world_sizes") or {0: ckpt.get("world_size", 1)})
        if ckpt.get("world_size", 1) != self.world.size:
            self.world_sizes[self.epoch] = self.world.size
            print(f"note: {self.ckpt_path} was trained on {ckpt.get('world_size', 1)} rank(s) and resumes on "
                  f"{self.world.size}: the result differs from a run on either alone (drop-path draws and "
                  "reduction order follow the ranks); the checkpoint records both")

    def validate(self, loader) -> dict:
        amp = autocast_dtype(self.settings.precision, self.device)
        if self.mode == "supernet":
            return evaluate_subnets(self.model, loader, self.device, self.eval_subnets, self.sampler, amp)
        return evaluate(self.model, loader, self.device, amp)


def mode_of(settings: TrainSettings) -> str:
    """``full`` (full fine-tuning), ``subnet`` (a fixed subnet or baseline) or ``supernet``."""
    return "full" if settings.full_finetune else ("subnet" if settings.subnet else "supernet")


def splits_of(settings: TrainSettings) -> dict[str, str]:
    """The splits a run of these settings trains on, selects on and is tested on."""
    protocol = vtab.PROTOCOLS[settings.protocol]
    # A supernet trains on the protocol's supernet split; a fixed subnet or baseline on its
    # final-training split (train800val200 under `retrain`).
    train = protocol["train"] if mode_of(settings) == "supernet" else protocol["fit"]
    return {"train": train, "search": protocol["search"], "test": protocol["test"]}


def current_inputs(settings: TrainSettings) -> dict:
    """The ``inputs`` record a run of these settings would write now (for a finished-run check)."""
    splits = splits_of(settings)
    init = None
    if settings.init_from:
        path = init_checkpoint_path(settings.init_from, vtab.resolve_task(settings.dataset).name)
        init = state_digest(load_checkpoint(path)["state_dict"])
    return run_inputs(settings.data_path, vtab.resolve_task(settings.dataset), (splits["train"], splits["search"]),
                      settings.pretrained, subnet=subnet_digest(settings.subnet), init=init)


def model_record(settings: TrainSettings) -> dict:
    """The model a checkpoint of these settings records at its top level (targets resolved)."""
    targets = None if settings.full_finetune else settings.targets or glora.DEFAULT_TARGETS
    return {"model": settings.model, "model_kwargs": dict(settings.model_kwargs), "rank": settings.rank,
            "targets": targets, "input_size": settings.input_size, "protocol": settings.protocol}


def stored_config(settings: TrainSettings) -> dict:
    """The settings a checkpoint keeps in ``config``: all but the model, which it keeps once, above."""
    return {key: value for key, value in settings.record().items() if key not in MODEL_KEYS}


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
    s = run.settings
    if run.mode != "subnet":
        raise CheckpointError("--init-from starts a fixed subnet (--subnet PRESET|FILE) from a supernet's "
                              "trained tensors; it does not apply to a supernet or --full-finetune run")
    path = init_checkpoint_path(spec, run.task.name)
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, {"model": s.model, "model_kwargs": dict(s.model_kwargs), "rank": s.rank,
                            "targets": run.targets, "dataset": run.task.name}, path)
    if ckpt.get("mode") == "full":
        raise CheckpointError(f"{path} is a full fine-tuning checkpoint; --init-from needs GLoRA tensors")
    source = ckpt.get("protocol")
    # The subnet was chosen on the source's search split; training on it here is only honest when
    # this protocol selects on the same split (val and retrain share val200; paper uses test).
    if source is not None and vtab.PROTOCOLS[source]["search"] != vtab.PROTOCOLS[s.protocol]["search"]:
        raise CheckpointError(f"{path} was trained under protocol {source!r}, which selects on "
                              f"{vtab.PROTOCOLS[source]['search']}; this run's protocol {s.protocol!r} "
                              f"selects on {vtab.PROTOCOLS[s.protocol]['search']}")
    glora.load_trained_state(run.model, ckpt["state_dict"])
    return {"init": "inherited", "init_from": str(path), "init_epoch": ckpt.get("epoch"),
            "init_protocol": source, "init_sha256": state_digest(ckpt["state_dict"])}


def init_checkpoint_path(spec: str, task: str) -> Path:
    """``--init-from``: the checkpoint file itself, or its --save_path folder."""
    path = Path(spec)
    return path / f"{task}.pt" if path.is_dir() else path


def describe(run: Run, train_images: int) -> str:
    """The line a run starts with: mode, task, split size, layers, trainable parameters, device."""
    trainable = sum(p.numel() for p in trained_tensors(run.optimizer))
    world, batch = run.world, run.settings.batch_size
    what = {"supernet": "all supernet storage + head", "subnet": "the subnet's budget count + head",
            "full": "the whole model"}[run.mode]
    return (f"{run.mode} on {run.task.name} ({run.splits['train']}: {train_images} images), "
            f"{len(run.layer_names)} GLoRA layers, {trainable:,} trainable parameters "
            f"({what}), device {run.device}"
            + (f", {world.size} ranks of {batch // world.size} images per step" if world.size > 1 else ""))


def trained_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors a run trains: its optimizer's (for a fixed subnet, views of the read entries)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def load_data(s: TrainSettings, run: Run, device: torch.device):
    """The protocol's training split (shuffled, drop_last) and search split, decoded once."""
    load = dict(input_size=s.input_size, progress=s.progress)
    train = vtab.load_split(s.data_path, run.task.name, run.splits["train"], **load)
    search = vtab.load_split(s.data_path, run.task.name, run.splits["search"], **load)
    train_loader = vtab.Loader(train, s.batch_size, shuffle=True, drop_last=True, seed=s.seed, device=device,
                               rank=run.world.rank, world_size=run.world.size)  # each rank: its share
    val_loader = vtab.Loader(search, s.eval_batch_size, shuffle=False, drop_last=False, device=device,
                             resident=len(search) <= 20000)
    return train_loader, val_loader


def fit(run: Run, train_loader, val_loader) -> None:
    """The epoch loop: train, step the schedule, validate every ``eval_every``, checkpoint."""
    s, device, world = run.settings, run.device, run.world
    amp = autocast_dtype(s.precision, device)
    params = trained_tensors(run.optimizer)
    sync = (lambda: average_gradients(params, world)) if world.size > 1 else None
    # The exact state at the start of the current epoch, saved on Ctrl-C (rank 0 writes).
    snapshot = run.payload() if world.main else None
    while run.epoch < s.epochs:
        try:
            train_loader.set_epoch(run.epoch)
            if world.size > 1:  # stochastic depth: each rank its own draws, a function of the epoch
                torch.manual_seed(epoch_seed(s.seed, run.epoch, world))
            stats = train_one_epoch(run.model, train_loader, run.optimizer, device, run.epoch + 1, amp,
                                    progress=s.progress and world.main,
                                    zero_fill_grads=s.zero_fill_grads, after_backward=sync)
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
    s = run.settings
    if run.epoch % s.eval_every == 0 or run.epoch == s.epochs:
        val = run.validate(val_loader)
        record.update({"split": run.splits["search"], **{f"val_{k}": v for k, v in val.items()}})
        log(f"epoch {run.epoch}: loss {record['train_loss']:.4f}  {run.splits['search']} acc1 "
            f"{val['acc1']:.2f}  -> {run.ckpt_path}")
        run.scalars.add(run.epoch, **{f"val/{k}": v for k, v in val.items() if isinstance(v, (int, float))})
    else:
        log(f"epoch {run.epoch}: loss {record['train_loss']:.4f}  lr {record['lr']:.3g}", file_only=True)
    run.scalars.add(run.epoch, **{"train/loss": record["train_loss"], "train/lr": record["lr"]})
    append_jsonl(run.log_path, record)
    snapshot = run.payload()  # built once: the checkpoint now, the Ctrl-C fallback next epoch
    if "split" in record or run.epoch % s.save_every == 0:
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
