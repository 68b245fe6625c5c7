"""Data parallelism for one run under ``torchrun --nproc_per_node N supernet.py ...``.

Every rank builds the same model from the same seed, so every rank holds the same per-layer choice
sampler and draws the same choices at every step (one forward per step on every rank). Each rank
takes its contiguous share of every global batch of ``--batch-size`` images, in the single-process
order (``vtab.Loader(rank=, world_size=)``); after ``backward`` the gradients are averaged over the
ranks in one all-reduce, which gives the gradient of the global batch's mean loss. Tensors without
a gradient (supports no rank used) are the same on every rank and stay out of the all-reduce, so
zero-filled and absent gradients mean what they mean in one process. Only rank 0 writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from glora.errors import GLoRAError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (a world of one outside torchrun)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints and logs and prints."""
        return self.rank == 0


def init_world(backend: str) -> World:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); else a world of one.

    ``backend``: ``gloo`` for CPU tensors, ``nccl`` for CUDA ones (the caller picks the device).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def on_main(world: World, check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 only, and have every rank raise its refusal (a ``GLoRAError``) with
    it, so a refusal ends every rank with the same line instead of leaving the others to fail in
    a collective."""
    refusal = None
    if world.main:
        try:
            check()
        except GLoRAError as err:
            refusal = err
    if world.size > 1:
        box = [refusal]
        dist.broadcast_object_list(box, src=0)
        refusal = box[0]
    if refusal is not None:
        raise refusal


def average_gradients(params: Iterable[torch.Tensor], world: World) -> None:
    """Replace each gradient by its mean over the ranks (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world.size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numel,)
    dist.all_reduce(flat)
    flat.div_(world.size)
    for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(part.view_as(grad))


def mean_over_ranks(value: float, world: World, device: torch.device) -> float:
    """The mean of a per-rank number (e.g. an epoch's train loss) over the ranks."""
    if world.size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / world.size


def epoch_seed(seed: int, epoch: int, world: World) -> int:
    """The torch seed of one rank's epoch under DDP (stochastic depth differs per rank, and a
    resumed run draws what an uninterrupted one would, whatever the number of ranks before)."""
    return (seed * 1_000_003 + epoch) * 1_009 + world.rank


def close(world: World) -> None:
    """Leave the process group (a no-op for a world of one)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
