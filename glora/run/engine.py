"""Training and evaluation loops: explicit arguments, no file I/O, dicts out."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glora.errors import GLoRAError
from glora.inject import set_subnet
from glora.io.progress import progress as progress_bar
from glora.layer import ChoiceSampler


class NonFiniteLossError(GLoRAError, FloatingPointError):
    """The training loss became NaN or inf."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch} (step {step})")
        self.epoch, self.step, self.value = epoch, step, value


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, amp_dtype: torch.dtype | None = None,
                    log_every: int = 10, progress: bool = True,
                    zero_fill_grads: bool = True,
                    after_backward: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over ``loader`` with cross-entropy; stops on a non-finite loss.

    ``epoch`` is the 1-based number shown in the progress bar and in errors.

    ``zero_fill_grads=True`` zeroes gradients in place between steps, as ``zero_grad()`` did in the
    torch 1.10 the original code ran on: a support that has been used once keeps a (zero) gradient,
    so AdamW moves it on every later step (momentum, weight decay) even when the sampled path does
    not read it. ``False`` sets them to None, so unused supports stand still.

    ``after_backward`` runs between ``backward`` and the optimizer step (data parallelism averages
    the gradients there).

    The loss is accumulated on the device and read back only every ``log_every`` steps and at
    the end, so the step loop has no other host synchronisation.
    """
    model.train()
    total = torch.zeros((), device=device)
    steps = 0
    # Off a terminal (a log file) one line at the start and one at the end of the epoch.
    bar = progress_bar(loader, f"epoch {epoch}", enabled=progress, steps=1, leave=False, dynamic_ncols=True)
    for x, y in bar:
        with _autocast(device, amp_dtype):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=not zero_fill_grads)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        total += loss.detach().float()
        steps += 1
        if steps % log_every == 0:
            _check_finite(total, epoch, steps)
            bar.set_postfix(loss=f"{total.item() / steps:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    _check_finite(total, epoch, steps)
    return {"loss": total.item() / max(steps, 1), "lr": optimizer.param_groups[0]["lr"], "steps": steps}


def zero_fill_stepped_grads(optimizer: torch.optim.Optimizer) -> None:
    """Give every tensor the optimizer has stepped a zero gradient, as zero-filling leaves them.

    With ``zero_fill_grads=True`` a tensor keeps a gradient once it has been used, so AdamW keeps
    stepping it; a resumed run starts with no gradients and must restore that set to stay exact.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            if optimizer.state.get(param) and param.grad is None:
                param.grad = torch.zeros_like(param)


def _check_finite(total: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(total):
        raise NonFiniteLossError(epoch, step, total.item())


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy over a whole loader."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    count = 0
    for x, y in loader:
        with _autocast(device, amp_dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=-1) == y).sum()
        count += y.numel()
    return {"acc1": 100.0 * correct.item() / max(count, 1), "loss": loss_sum.item() / max(count, 1),
            "n": count}


def evaluate_subnets(model: nn.Module, loader: Iterable, device: torch.device,
                     subnets: Sequence[Sequence[dict]], sampler: ChoiceSampler | None,
                     amp_dtype: torch.dtype | None = None) -> dict:
    """Evaluate each fixed subnet, then put the model back in sampling mode with ``sampler``.

    Fixed subnets make validation comparable across epochs (the original used random paths).
    """
    results = []
    for subnet in subnets:
        set_subnet(model, subnet)
        results.append(evaluate(model, loader, device, amp_dtype))
    if sampler is not None:
        set_subnet(model, None, sampler=sampler)
    accs = [r["acc1"] for r in results]
    return {"acc1": sum(accs) / len(accs), "acc1_per_subnet": accs,
            "loss": sum(r["loss"] for r in results) / len(results)}

