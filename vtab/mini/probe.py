"""Linear probes on frozen features: does the pretrained tiny backbone beat a random one?

Features are timm's ``forward_head(forward_features(x), pre_logits=True)`` (the normed cls
token) of images decoded by `vtab.load_split` and normalised by `vtab.Loader` exactly as
training does (bicubic resize to 32 is the identity on 32x32 files). A multinomial logistic
regression on standardised features is fitted on train800 with a fixed regularisation;
nothing is selected on the test set, which is scored once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from ..dataset import Loader, load_split
from . import pretrain

PROBE_C = 1.0  # inverse L2 strength of the logistic regression, fixed a priori


def load_backbone(backbone_dir: "str | os.PathLike", num_classes: int = 0,
                  random_init_seed: int | None = None) -> torch.nn.Module:
    """The tiny ViT of `backbone_dir` with pretrained weights, or re-initialised from a seed."""
    meta = json.loads((Path(backbone_dir) / pretrain.META_FILE).read_text(encoding="utf-8"))
    if random_init_seed is not None:
        torch.manual_seed(random_init_seed)
    model = pretrain.create_model(num_classes, meta["model"], meta["model_kwargs"])
    if random_init_seed is None:
        state = load_file(str(Path(backbone_dir) / pretrain.WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        head = {k for k in model.state_dict() if k.startswith("head.")}
        if set(missing) != head or unexpected:
            raise RuntimeError(f"backbone mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


@torch.no_grad()
def features(model: torch.nn.Module, data_path: str, task: str, split: str,
             input_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Frozen pre-logits features (N, D) and labels (N,) of one split."""
    loader = Loader(load_split(data_path, task, split, input_size=input_size, progress=False),
                    256, shuffle=False, drop_last=False)
    feats, labels = [], []
    for x, y in loader:
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
        labels.append(y)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def linear_probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 c: float = PROBE_C) -> float:
    """Test accuracy (%) of a logistic regression fitted on standardised train features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    clf.fit(*train)
    return 100.0 * float(clf.score(*test))


def probe(data_path: str, backbone_dir: "str | os.PathLike", tasks: Sequence[str],
          seed: int = 0) -> list[dict]:
    """One row per task: linear-probe test accuracy of the pretrained and a random backbone."""
    models = {"pretrained": load_backbone(backbone_dir),
              "random_init": load_backbone(backbone_dir, random_init_seed=seed)}
    input_size = models["pretrained"].patch_embed.img_size[0]
    rows = []
    for task in tasks:
        row = {"task": task}
        for name, model in models.items():
            train = features(model, data_path, task, "train800", input_size)
            test = features(model, data_path, task, "test", input_size)
            row[name] = linear_probe(train, test)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows of `probe` as a markdown table with a mean line."""
    lines = ["| task | pretrained | random init | gain |", "|---|---:|---:|---:|"]
    for r in rows:
        gain = r["pretrained"] - r["random_init"]
        lines.append(f"| {r['task']} | {r['pretrained']:.1f} | {r['random_init']:.1f} | "
                     f"{gain:+.1f} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("pretrained", "random_init")}
    lines.append(f"| mean | {mean['pretrained']:.1f} | {mean['random_init']:.1f} | "
                 f"{mean['pretrained'] - mean['random_init']:+.1f} |")
    return "\n".join(lines)
