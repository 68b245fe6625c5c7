"""The exported timm folder: the preprocessing it records, and what a merged state dict is when the
backbone has no qkv bias."""
import copy
import json

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from glora.run import evolution
import glora
from glora.run import supernet
import vtab
from tests.helpers import make_tiny_vit, randomize_glora, write_tiny_setup

NONE = {s: "none" for s in "ABCDE"}


def test_exported_config_reproduces_the_training_preprocessing(tmp_path):
    """Fails if merged/config.json records another input size, interpolation, mean/std or a crop
    (timm's default crop_pct 0.875 would centre-crop what training saw whole): the transform a timm
    user builds from the folder must give the tensors the model was trained and tested on."""
    config = write_tiny_setup(tmp_path)
    supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "sup"),
                  "--epochs", "1", "--subnet", "lora"])
    evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(tmp_path / "sup"),
                   "--save_path", str(tmp_path / "out")])
    folder = tmp_path / "out" / "merged"
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx(vtab.IMAGENET_DEFAULT_MEAN)
    assert cfg["std"] == pytest.approx(vtab.IMAGENET_DEFAULT_STD)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    transform = create_transform(**resolve_data_config({}, model=model))
    split = vtab.load_split(tmp_path / "data", "eurosat", "test", input_size=32, progress=False)
    ours, _ = next(iter(vtab.Loader(split, 4, shuffle=False, drop_last=False)))
    rows = (tmp_path / "data" / "eurosat" / "test.txt").read_text().splitlines()[:4]
    theirs = torch.stack([transform(Image.open(tmp_path / "data" / "eurosat" / r.split()[0]).convert("RGB"))
                          for r in rows])  # the 40x40 files, resized as timm would
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def merged_without_qkv_bias(qkv_choice):
    """A tiny ViT built without qkv bias, GLoRA on every block linear, merged with ``qkv_choice``."""
    model = make_tiny_vit(qkv_bias=False)
    glora.inject_glora(model, 4)
    randomize_glora(model)
    other = {**NONE, "A": "vector", "E": "vector"}
    glora.set_subnet(model, [qkv_choice if i % 4 == 0 else other for i in range(8)])
    x = torch.randn(2, 3, 32, 32)
    expected = model.eval()(x)
    glora.merge_glora(model)
    torch.testing.assert_close(model(x), expected)
    return model, x, expected


@pytest.mark.parametrize("qkv_choice", [{**NONE, "A": "LoRA_4", "B": "vector", "D": "vector"},
                                        {**NONE, "B": "LoRA_4"}])
def test_no_qkv_bias_merged_state_dict_is_timms_when_qkv_gains_no_bias(qkv_choice):
    """Fails if merging gives a bias-free qkv a bias when its choice adds none (C and E none; D only
    scales an existing bias), breaking the strict load into the original architecture."""
    model, x, expected = merged_without_qkv_bias(qkv_choice)
    fresh = make_tiny_vit(qkv_bias=False)
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), expected)


@pytest.mark.parametrize("support", ["C", "E"])
def test_no_qkv_bias_merged_state_dict_gains_a_qkv_bias_when_c_or_e_is_used(support):
    """Pins the real behaviour (the merged state dict is then not timm's for this architecture):
    fails if the qkv bias that C or E creates is dropped (outputs would change), or if the merged
    model stops loading strictly into the same ViT built with qkv_bias=True."""
    model, x, expected = merged_without_qkv_bias({**NONE, support: "vector"})
    assert model.blocks[0].attn.qkv.bias is not None
    fresh = make_tiny_vit(qkv_bias=False)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "blocks.0.attn.qkv.bias"'):
        fresh.load_state_dict(model.state_dict(), strict=True)
    with_bias = make_tiny_vit(qkv_bias=True)
    with_bias.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(with_bias.eval()(x), expected)


def test_bf16_accuracy_difference_after_merging_is_checked_in_fp32(capsys):
    """Fails if a bf16 rounding difference between the merged and the unmerged model (an image at a
    decision boundary) stops the export, or if a merge that is wrong in fp32 passes."""
    from glora.run.searcher import check_merge_in_fp32
    model = make_tiny_vit()
    glora.inject_glora(model, rank=2)
    glora.set_subnet(model, [{**NONE, "A": "LoRA_2", "B": "vector", "E": "vector"}] * len(glora.glora_layers(model)))
    randomize_glora(model)
    merged = glora.merge_glora(copy.deepcopy(model))
    loader = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    check_merge_in_fp32(model, merged, loader)  # the same function: passes
    with torch.no_grad():
        merged.blocks[0].mlp.fc1.weight[0, 0] += 0.5
    with pytest.raises(RuntimeError, match="differ from the unmerged subnet's in fp32"):
        check_merge_in_fp32(model, merged, loader)


def test_exported_tag_does_not_claim_timms_default_weights(tmp_path):
    """Fails if merged/config.json inherits timm's default pretrained tag (augreg_in21k_ft_in1k for
    vit_tiny_patch16_224), which names weights that the exported ones are not."""
    from glora.export.timm_folder import export_timm_folder

    model = make_tiny_vit()
    glora.inject_glora(model, 2)
    randomize_glora(model)
    glora.set_subnet(model, glora.preset_subnet("largest", 8, 2))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x)
    folder = export_timm_folder(glora.merge_glora(model), tmp_path / "merged", 32, (0.5,) * 3, (0.5,) * 3)
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["tag"] == "glora"
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), want, rtol=1e-5, atol=1e-5)
