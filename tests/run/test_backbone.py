"""Backbone building and local weight loading (never a download)."""
import pytest
import torch

from glora.run.backbone import WeightsError, build_model, load_backbone
from tests.helpers import TINY_VIT_KWARGS, make_tiny_vit, save_google_npz, save_tiny_backbone


def backbone_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("head."))


def test_google_npz_miniature_loads_through_timm(tmp_path):
    source = make_tiny_vit(seed=11)
    save_google_npz(source, tmp_path / "ViT-B_16.npz")
    model = build_model("vit_tiny_patch16_224", 7, str(tmp_path / "ViT-B_16.npz"), TINY_VIT_KWARGS)
    assert backbone_equal(model, source)
    assert model.head.weight.shape == (7, 32)  # the 21,843-class head was not taken
    source.eval(); model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(x), source.forward_features(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_state_dict_files_load_without_head(tmp_path, suffix):
    path = tmp_path / f"bb{suffix}"
    if suffix == ".safetensors":
        save_tiny_backbone(path, seed=4)
    else:
        torch.save({"model": make_tiny_vit(seed=4).state_dict()}, path)
    model = build_model("vit_tiny_patch16_224", 3, str(path), TINY_VIT_KWARGS)
    assert backbone_equal(model, make_tiny_vit(seed=4))
    assert model.head.out_features == 3


def test_head_is_reinitialised_for_the_task(tmp_path):
    torch.save(make_tiny_vit(num_classes=3, seed=4).state_dict(), tmp_path / "full.pth")
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 3, str(tmp_path / "full.pth"), TINY_VIT_KWARGS)
    assert not torch.equal(model.head.weight, make_tiny_vit(num_classes=3, seed=4).head.weight)


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(WeightsError, match=r"not found: .*ViT-B_16.npz.*storage.googleapis.com.*--pretrained none"):
        build_model("vit_tiny_patch16_224", 3, str(tmp_path / "ViT-B_16.npz"), TINY_VIT_KWARGS)


def test_corrupt_or_mismatched_weights_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot load pretrained weights from .*bad.safetensors"):
        build_model("vit_tiny_patch16_224", 3, str(bad), TINY_VIT_KWARGS)
    save_tiny_backbone(tmp_path / "bb.safetensors")
    with pytest.raises(WeightsError, match="does not fit the model"):
        build_model("vit_tiny_patch16_224", 3, str(tmp_path / "bb.safetensors"), {**TINY_VIT_KWARGS, "depth": 3})


def test_npz_loading_does_not_touch_the_network(tmp_path, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access during weight loading")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    save_google_npz(make_tiny_vit(), tmp_path / "w.npz")
    load_backbone(make_tiny_vit(seed=2), tmp_path / "w.npz")


@pytest.mark.parametrize("precision,tf32,amp", [("auto", True, None), ("fp32", False, None),
                                                ("bf16", True, torch.bfloat16)])
def test_precision_auto_is_the_originals_numerics(precision, tf32, amp, monkeypatch):
    """Fails if --precision auto autocasts to bf16 on CUDA, or does not turn TF32 matmuls and
    convolutions on there (fp32 weights with TF32, as the original ran on torch 1.10): only bf16
    autocasts, only fp32 turns TF32 off, and the CPU's settings are left alone."""
    from glora.run.backbone import autocast_dtype, set_matmul_numerics
    for flag in (torch.backends.cuda.matmul, torch.backends.cudnn):
        monkeypatch.setattr(flag, "allow_tf32", not tf32)  # restored after the test
    set_matmul_numerics(precision, torch.device("cpu"))
    assert torch.backends.cuda.matmul.allow_tf32 is (not tf32)
    set_matmul_numerics(precision, torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert autocast_dtype(precision, torch.device("cuda")) is amp
    assert autocast_dtype(precision, torch.device("cpu")) is amp
