"""Helpers shared by the tests (not fixtures: those are in conftest.py): tiny timm ViTs that run in
milliseconds on the CPU, generated NOAH-layout tasks and backbones, and small run utilities."""
import contextlib
import importlib
import json
import os
from pathlib import Path

import pytest
import timm
import torch

import glora.run.trainer

REPO = Path(__file__).resolve().parents[1]

TINY_VIT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def make_tiny_vit(num_classes: int = 5, seed: int = 0, **overrides) -> torch.nn.Module:
    """A deterministic tiny ViT (2 blocks, width 32, 32x32 input)."""
    torch.manual_seed(seed)
    kwargs = {**TINY_VIT_KWARGS, **overrides}
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **kwargs)
    with torch.no_grad():  # timm zero-initialises biases; a pretrained model's are not zero
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model


def randomize_glora(model: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    """Give every glora_* tensor non-zero values so no support is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".glora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def make_noah_task(root, task: str = "eurosat", num_classes: int = 10,
                   sizes=(("train800", 48), ("val200", 16), ("test", 24)), seed: int = 0):
    """A learnable NOAH-layout task in ``root/task``: class k is a colour-coded noisy image."""
    import numpy as np
    from pathlib import Path
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = {}
    for split, count in sizes:
        rows = []
        for i in range(count):
            label = i % num_classes
            base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=float)
            pixels = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            rel = f"images/{split}_{i:04d}.jpg"
            Image.fromarray(pixels).save(folder / rel, quality=95)
            rows.append(f"{rel} {label}")
        lines[split] = rows
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


def save_tiny_backbone(path, seed: int = 0) -> dict:
    """Save a tiny ViT's backbone (no head) as safetensors; return its model_kwargs."""
    from safetensors.torch import save_file

    model = make_tiny_vit(seed=seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(path))
    return dict(TINY_VIT_KWARGS)


def save_google_npz(model: torch.nn.Module, path, head_classes: int = 21843) -> None:
    """Write a timm ViT in the key layout of Google's ViT-B_16.npz (the inverse of timm's loader).

    Like the original in21k file it carries a 21,843-class head and a pre-logits layer, which a
    task model must not take.
    """
    import numpy as np

    t = lambda x: x.detach().cpu().numpy()
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    w = {"embedding/kernel": t(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
         "embedding/bias": t(model.patch_embed.proj.bias), "cls": t(model.cls_token),
         "Transformer/posembed_input/pos_embedding": t(model.pos_embed),
         "Transformer/encoder_norm/scale": t(model.norm.weight),
         "Transformer/encoder_norm/bias": t(model.norm.bias),
         "head/kernel": np.zeros((dim, head_classes), np.float32),
         "head/bias": np.zeros((head_classes,), np.float32),
         "pre_logits/kernel": np.eye(dim, dtype=np.float32), "pre_logits/bias": np.zeros(dim, np.float32)}
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = t(block.norm1.weight), t(block.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = t(block.norm2.weight), t(block.norm2.bias)
        qkv_w = block.attn.qkv.weight.reshape(3, dim, dim)  # (q|k|v, out, in)
        qkv_b = block.attn.qkv.bias.reshape(3, heads, dim // heads)
        for j, name in enumerate(("query", "key", "value")):
            w[mha + f"{name}/kernel"] = t(qkv_w[j].T.reshape(dim, heads, dim // heads))
            w[mha + f"{name}/bias"] = t(qkv_b[j])
        w[mha + "out/kernel"] = t(block.attn.proj.weight.reshape(dim, heads, dim // heads).permute(1, 2, 0))
        w[mha + "out/bias"] = t(block.attn.proj.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = t(fc.weight.T)
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = t(fc.bias)
    np.savez(path, **w)


def write_tiny_setup(root, task: str = "eurosat", num_classes: int = 10, sizes=None, **config):
    """A generated task, a tiny backbone and a YAML config for both CLIs in ``root``.

    Returns the YAML path; ``config`` overrides or adds keys (e.g. ``epochs``, ``lr``).
    """
    from pathlib import Path

    import yaml

    root = Path(root)
    make_noah_task(root / "data", task, num_classes=num_classes, **({"sizes": sizes} if sizes else {}))
    save_tiny_backbone(root / "bb.safetensors")
    base = {"model": "vit_tiny_patch16_224", "model_kwargs": dict(TINY_VIT_KWARGS), "input_size": 32,
            "pretrained": str(root / "bb.safetensors"), "data_path": str(root / "data"),
            "batch_size": 16, "progress": False}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({**base, **config}))
    return path


@contextlib.contextmanager
def one_thread():
    """In-process runs with a subprocess's single thread, so float results match bit for bit
    (a matrix product summed over two threads rounds differently)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def on_optimizer_step(callback):
    """Call ``callback(optimizer)`` after every optimizer step of any optimizer while active.

    A global torch hook: it sees the steps of the CLIs without depending on how they loop.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: callback(optimizer))
    try:
        yield
    finally:
        handle.remove()


def parse_subnet_key(key: str) -> list[dict]:
    """A history.jsonl key ('A,B,C,D,E|…', one group per layer) as a list of choice dicts."""
    return [dict(zip("ABCDE", layer.split(","))) for layer in key.split("|")]


@torch.no_grad()
def accuracy_bounds(model: torch.nn.Module, data_root, task: str, split: str, input_size: int = 32,
                    margin: float = 1e-4) -> tuple[float, float]:
    """Top-1 (%) of ``model`` on a split, computed here: (lowest, highest) over near-ties.

    An image whose two best logits are within ``margin`` counts as wrong for the low bound and
    right for the high one, so an equally correct computation in another float order agrees.
    """
    import vtab

    data = vtab.load_split(data_root, task, split, input_size=input_size, progress=False)
    model.eval()
    sure = tie = 0
    for x, y in vtab.Loader(data, 64, shuffle=False, drop_last=False):
        logits = model(x).float()
        top2 = logits.topk(2, dim=-1).values
        near = (top2[:, 0] - top2[:, 1]) < margin
        right = logits.argmax(-1) == y
        sure += int((right & ~near).sum())
        tie += int(near.sum())
    n = len(data)
    return 100.0 * sure / n, 100.0 * (sure + tie) / n


def require(module: str):
    """Import ``module``; skip the test file if it is missing, unless CI is set (then fail loudly)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"optional extra {module!r} is not installed "
                                              "(pip install -r requirements-extras.txt)")


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def interrupt_at(monkeypatch, epoch_to_interrupt):
    """Make the CLI's training raise KeyboardInterrupt part-way through epoch ``epoch_to_interrupt``."""
    real = glora.run.trainer.train_one_epoch

    def flaky(model, loader, optimizer, device, epoch, *args, **kwargs):
        if epoch == epoch_to_interrupt:
            next(iter(loader))  # part of the epoch has happened
            raise KeyboardInterrupt
        return real(model, loader, optimizer, device, epoch, *args, **kwargs)

    monkeypatch.setattr(glora.run.trainer, "train_one_epoch", flaky)


def write_result(runs: Path, task: str, acc: float, seed: int = 1, budget: float = 1.0,
                 method: str = "glora", protocol: str = "val", split: str = "val200",
                 params: int = 800_000) -> Path:
    """One results.json in the sweep layout RUNS/<task>/<budget>M_seed<seed>/results.json."""
    path = runs / task / f"{budget}M_seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "dataset": task, "group": "natural", "method": method, "protocol": protocol,
        "selection_split": split, "search_acc1": acc + 1.0, "test_acc1": acc, "params": params,
        "params_M": params / 1e6, "head_params": 7690, "param_limit_M": budget, "rank": 4,
        "seed": seed, "supernet_seed": 42, "model": "vit_base_patch16_224_in21k"}))
    return path
