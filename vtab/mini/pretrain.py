"""Pretrain the tiny ViT backbone of mini-VTAB on a generated source task, on a CPU, in minutes.

    python -m vtab.mini.pretrain [--out data/tiny_vit] [--force]

The source task (`vtab.mini.source`, "letter scenes": letter, tilt, position and mark-count
heads) is generated in memory from the seed and is none of the downstream mini tasks; a random
channel permutation per image stretches the generated pool. Writes into the output folder:

- ``backbone.safetensors``: the timm state dict without ``head.*`` (a head is per task), so
  ``timm.create_model(MODEL, num_classes=K, **MODEL_KWARGS).load_state_dict(sd, strict=False)``
  reports exactly ``head.weight`` and ``head.bias`` missing;
- ``backbone.json``: model name and kwargs, source task, seed, schedule, held-out source
  accuracy per head, torch/timm versions, wall time.

Deterministic for a seed on a given machine: seeded init, a dedicated generator for batch order
and augmentation, and ``torch.use_deterministic_algorithms`` while training.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from glora.io.files import atomic_write
from glora.io.progress import progress as progress_bar

from . import source

MODEL = "vit_tiny_patch16_224"
# 32x32 input in 4x4 patches of 8x8 pixels (16 tokens + cls): a forward+backward of a batch
# of 64 takes ~30 ms on 2 CPU cores (patch 4 = 64 tokens would be ~3x slower).
MODEL_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
WEIGHTS_FILE = "backbone.safetensors"
META_FILE = "backbone.json"
DEFAULT_OUT = "data/tiny_vit"


@dataclass
class PretrainConfig:
    """Everything the pretrained weights depend on (besides code and library versions)."""

    seed: int = 0
    pool_size: int = 20000   # generated training images, reused across epochs
    eval_size: int = 2000    # held-out generated images for the reported source accuracy
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    # Torch threads while training: a sum split over another number of threads rounds differently,
    # so the weights (and every number measured on them) depend on it. Fixed, not "all cores".
    threads: int = 2


def create_model(num_classes: int, model: str = MODEL, model_kwargs: dict | None = None
                 ) -> torch.nn.Module:
    """A randomly initialised tiny timm ViT (seed torch first for a reproducible init)."""
    return timm.create_model(model, pretrained=False, num_classes=num_classes,
                             **(MODEL_KWARGS if model_kwargs is None else model_kwargs))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 ImageNet-normalised, as the downstream loaders do."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def recolour(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random channel permutation per image (B, 3, H, W): every source label survives it and
    objects stay brighter than the background, so the reused pool looks 6x more colourful."""
    perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    order = perms[torch.randint(0, 6, (images.shape[0],), generator=generator)]  # (B, 3)
    return torch.gather(images, 1, order[:, :, None, None].expand_as(images))


def source_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the heads; logits (B, sum of head sizes), labels (B, heads)."""
    chunks = logits.split(list(source.HEADS.values()), dim=1)
    return sum(F.cross_entropy(c, labels[:, j]) for j, c in enumerate(chunks))


@torch.no_grad()
def source_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 500) -> dict[str, float]:
    """Top-1 accuracy (%) of each head on uint8 images (N, 3, H, W)."""
    model.eval()
    logits = torch.cat([model(normalise(x)) for x in images.split(batch_size)])
    chunks = logits.split(list(source.HEADS.values()), dim=1)
    return {name: round(100.0 * (c.argmax(1) == labels[:, j]).float().mean().item(), 2)
            for j, (name, c) in enumerate(zip(source.HEADS, chunks))}


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_source(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 cfg: PretrainConfig, progress: bool = True) -> float:
    """AdamW + warmup/cosine on the pool for `cfg.epochs`; returns the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(labels) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total, max(1, int(cfg.warmup_frac * total))))
    model.train()
    bar = progress_bar(desc="pretrain", total=total, enabled=progress, unit="step")
    for _ in range(cfg.epochs):
        order = torch.randperm(len(labels), generator=generator)
        losses = []
        for idx in order[: steps_per_epoch * cfg.batch_size].split(cfg.batch_size):
            x = normalise(recolour(images[idx], generator))
            loss = source_loss(model(x), labels[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite source loss {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            bar.update(1)
        epoch_loss = torch.stack(losses).mean().item()
        bar.set_postfix(loss=f"{epoch_loss:.3f}")
    bar.close()
    return epoch_loss


def backbone_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the task head, as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous().clone()
            for k, v in model.state_dict().items() if not k.startswith("head.")}


def save_backbone(model: torch.nn.Module, out_dir: "str | os.PathLike", meta: dict) -> Path:
    """Write backbone.safetensors (no head.*) and backbone.json atomically; returns the former."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    # Atomic: readers see the old file or the complete new one, never a half.
    atomic_write(weights, save_safetensors(backbone_state_dict(model), metadata={"model": meta["model"]}))
    atomic_write(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return weights


def _source_tensors(n: int, seed: list[int], progress: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    with progress_bar(desc=f"generate source {seed}", total=n, enabled=progress,
                      unit="img") as bar:
        images, labels = source.generate(n, seed, bar.update)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def pretrain(out_dir: "str | os.PathLike" = DEFAULT_OUT, cfg: PretrainConfig | None = None,
             model: str = MODEL, model_kwargs: dict | None = None,
             progress: bool = True) -> Path:
    """Generate the source task, pretrain, evaluate on held-out images, save; returns weights."""
    cfg = cfg or PretrainConfig()
    model_kwargs = dict(MODEL_KWARGS if model_kwargs is None else model_kwargs)
    start = time.perf_counter()
    train_x, train_y = _source_tensors(cfg.pool_size, [cfg.seed, 0], progress)
    eval_x, eval_y = _source_tensors(cfg.eval_size, [cfg.seed, 1], progress)  # held out
    generated = time.perf_counter()
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        net = create_model(sum(source.HEADS.values()), model, model_kwargs)
        loss = train_source(net, train_x, train_y, cfg, progress)
        accuracy = source_accuracy(net, eval_x, eval_y)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # do not leak global state
        torch.set_num_threads(threads)
    meta = {
        "model": model, "model_kwargs": model_kwargs,
        "source_task": source.DESCRIPTION, "source_heads": source.HEADS,
        "config": asdict(cfg), "seed": cfg.seed, "epochs": cfg.epochs,
        "final_train_loss": round(loss, 4), "source_test_acc1": accuracy,
        "source_test_acc1_mean": round(float(np.mean(list(accuracy.values()))), 2),
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "threads": cfg.threads,
        "wall_time_s": {"generate": round(generated - start, 1),
                        "total": round(time.perf_counter() - start, 1)},
    }
    path = save_backbone(net, out_dir, meta)
    if progress:
        print(f"source accuracy (held out) {accuracy}; wrote {path} "
              f"in {meta['wall_time_s']['total']} s")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    """CLI arguments; the schedule defaults are PretrainConfig's."""
    d = PretrainConfig()
    parser = argparse.ArgumentParser("python -m vtab.mini.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=str, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--force", action="store_true", help="overwrite an existing backbone")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--pool-size", type=int, default=d.pool_size)
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads while training (the weights depend on it)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Pretrain unless the backbone exists (or --force)."""
    weights = Path(args.out) / WEIGHTS_FILE
    if weights.is_file() and not args.force:
        print(f"{weights} exists (use --force to retrain)")
        return
    cfg = PretrainConfig(seed=args.seed, epochs=args.epochs, pool_size=args.pool_size, threads=args.threads)
    pretrain(args.out, cfg)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
