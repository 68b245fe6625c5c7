"""``results.json``: the record of one searched or exported model, written by ``evolution`` only.

``python -m vtab.report`` and the sweep read it back; the fields below are its format. Accuracies
are top-1 in percent. The sweep keeps it at ``RUNS/<task>/seed<S>/<protocol>/<row>/results.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from glora.io.files import atomic_write


@dataclass(frozen=True)
class Results:
    """One model's results.

    ``weights`` is ``supernet`` when the subnet keeps the supernet's tensors (the paper's way) and
    ``trained`` for a fixed subnet or baseline trained on its own; ``init`` says whether that
    training started from a supernet's tensors (``inherited``) or afresh (``fresh``).
    ``test_acc1_merged`` is the exported folder reloaded with plain timm (equal to ``test_acc1`` in
    fp32). ``params`` counts the adapter's parameters (the head is ``head_params``).
    """

    dataset: str                      # the task's folder name
    group: str                        # natural | specialized | structured
    method: str                       # glora, lora, linear_probe, bitfit, ssf, largest, full_finetune, ...
    protocol: str                     # val | paper | retrain
    weights: str                      # supernet | trained
    init: str                         # inherited | fresh
    splits: dict                      # {"train": ..., "search": ..., "test": ...}
    search_split_in_training: bool    # the selection split was part of the weights' training data
    selection_split: str              # the split the subnet (or nothing, for a baseline) was chosen on
    search_acc1: float                # accuracy on the selection split
    test_acc1: float
    test_acc1_merged: float
    test_n: int
    params: int
    params_M: float
    head_params: int
    param_limit_M: float | None       # the search's budget (or the one the subnet file records)
    min_param_limit_M: float | None
    rank: int
    seed: int
    supernet_seed: int | None
    supernet_epochs: int | None       # epochs of the checkpoint this step loaded
    supernet_sha256: str              # content hash of that checkpoint's trained tensors
    model: str
    model_kwargs: dict
    search: dict                      # num_evaluated, generations, top_k, stats, plain_draw_acceptance
    versions: dict                    # torch, timm, ...
    wall_time_s: dict                 # {"search": s, "test_and_export": s}
    config: dict                      # the step's resolved settings (a valid --config)
    inputs: dict                      # content digests of what it read: data lists, weights, supernet, subnet
    subnet_file: str | None           # "subnet.yaml" beside it (None for full fine-tuning)
    merged_model_dir: str             # "merged": the plain timm folder

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def write_results(path: str | os.PathLike, results: Results) -> None:
    """Write ``results`` as indented JSON, atomically: the one place results.json is written."""
    atomic_write(path, json.dumps(results.as_dict(), indent=1))
