"""Linears without bias: the original's semantics (E and W0·C form a new bias, D does nothing but is
counted), merges that gain a bias exactly when needed, and timm exports that hold that bias."""
import pytest
import timm
import torch
from torch import nn

import glora
from glora.layer import GLoRALinear, merged_linear
from glora.export.timm_folder import export_timm_folder
from glora.space import all_choices, choice_params
from glora.export.timm_bias import fit_gained_biases, unexportable_bias_free
from tests.helpers import TINY_VIT_KWARGS, make_tiny_vit, randomize_glora

RANK = 2
IN, OUT = 6, 5
NONE = {s: "none" for s in "ABCDE"}
SWIN_KWARGS = dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4)


def bias_free_layer(seed: int = 0) -> GLoRALinear:
    """A bias-free GLoRA layer in float64 with every stored tensor random."""
    gen = torch.Generator().manual_seed(seed)
    layer = GLoRALinear(torch.randn(OUT, IN, generator=gen, dtype=torch.float64), None, RANK)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.startswith("glora_"):
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
    return layer


def by_hand(layer: GLoRALinear, choice: dict, x: torch.Tensor) -> torch.Tensor:
    """y = x W'ᵀ + b' with W' = W0 + W0⊙A + B, b' = E + W0·C, written out element by element."""
    w0 = layer.weight.detach()

    def matrix(option, down, up):  # A or B as a full (out, in) matrix
        if option == "none":
            return torch.zeros_like(w0)
        if option == "vector":
            return down[:, :1].expand(OUT, IN)
        if option == "constant":
            return torch.full_like(w0, float(down[0, 0]))
        k = int(option.split("_")[1])
        return down[:, :k] @ up[:k, :]

    a = matrix(choice["A"], layer.glora_Ad, layer.glora_Au)
    b = matrix(choice["B"], layer.glora_Bd, layer.glora_Bu)
    if choice["C"] == "none":
        c = torch.zeros(IN, dtype=w0.dtype)
    elif choice["C"] == "vector":
        c = layer.glora_Cd[:, 0]
    else:
        k = int(choice["C"].split("_")[1])
        c = (layer.glora_Cd[:, :k] @ layer.glora_Cu[:k, :])[:, 0]
    e = {"none": torch.zeros(OUT, dtype=w0.dtype), "vector": layer.glora_E,
         "constant": layer.glora_E[0].expand(OUT)}[choice["E"]]
    weight = w0 + w0 * a + b
    bias = e + torch.stack([(w0[o] * c).sum() for o in range(OUT)])  # D never enters
    return x @ weight.T + bias


def params_by_hand(choice: dict) -> int:
    """The original's count on a bias-free (in=6, out=5) layer: D is counted like on any layer."""
    cost = {"none": 0, "constant": 1, "vector": OUT}
    total = 0
    for support in "AB":
        opt = choice[support]
        total += RANK * (IN + OUT) if opt.startswith("LoRA") else cost[opt]
    total += {"none": 0, "vector": IN}.get(choice["C"], RANK * (IN + 1))
    return total + cost[choice["D"]] + cost[choice["E"]]


def test_every_choice_on_a_bias_free_layer_forward_merge_and_count():
    """Fails if, on a layer without bias, any of the 432 choices departs from b' = E + W0·C (D
    unused), if its merge is not the same function, if the merged layer gains a bias when neither E
    nor C asks for one (or lacks one when they do), or if D is not counted as the original counts it."""
    layer = bias_free_layer()
    x = torch.randn(4, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    choices = all_choices(RANK)
    assert len(choices) == 432
    for choice in choices:
        layer.set_choice(choice)
        with torch.no_grad():
            got, want = layer(x), by_hand(layer, choice, x)
            merged = merged_linear(layer)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=str(choice))
        torch.testing.assert_close(merged(x), got, rtol=1e-12, atol=1e-12, msg=str(choice))
        assert (merged.bias is not None) == (choice["C"] != "none" or choice["E"] != "none"), choice
        assert choice_params(choice, IN, OUT) == params_by_hand(choice), choice


def test_d_changes_nothing_without_bias():
    """Fails if D scales something on a layer without bias (the original leaves it unused there)."""
    layer = bias_free_layer(seed=3)
    x = torch.randn(2, IN, dtype=torch.float64)
    for d in ("vector", "constant"):
        for e in ("none", "vector"):
            layer.set_choice({**NONE, "A": "LoRA_2", "D": d, "E": e})
            with_d = layer(x)
            layer.set_choice({**NONE, "A": "LoRA_2", "E": e})
            assert torch.equal(with_d, layer(x))


def tiny_bias_free_vit() -> nn.Module:
    model = make_tiny_vit(qkv_bias=False)
    glora.inject_glora(model, RANK)
    randomize_glora(model)
    return model.eval()


def test_export_sets_the_bias_flag_and_zero_fills_the_other_layers(tmp_path):
    """Fails if a ViT built with qkv_bias=False whose first qkv gained a bias is exported as a folder
    that plain timm cannot load, or loads with different logits: the export must set qkv_bias and
    give the other qkv a zero bias."""
    model = tiny_bias_free_vit()
    subnet = [dict(NONE) for _ in glora.glora_layers(model)]
    subnet[0].update(E="vector", C="LoRA_2", A="vector")  # blocks.0.attn.qkv gains a bias
    glora.set_subnet(model, subnet)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    glora.merge_glora(model)
    assert model.blocks[0].attn.qkv.bias is not None and model.blocks[1].attn.qkv.bias is None
    folder = export_timm_folder(model, tmp_path / "merged", 32, (0.5,) * 3, (0.5,) * 3)
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert reloaded.blocks[1].attn.qkv.bias is not None
    assert torch.count_nonzero(reloaded.blocks[1].attn.qkv.bias) == 0
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), want, rtol=1e-5, atol=1e-5)


def test_export_without_gained_bias_keeps_the_architecture(tmp_path):
    """Fails if an export sets bias flags when no layer gained a bias (it would change the model)."""
    model = tiny_bias_free_vit()
    glora.set_subnet(model, [{**NONE, "A": "LoRA_2", "D": "vector"} for _ in glora.glora_layers(model)])
    glora.merge_glora(model)
    assert fit_gained_biases(model) == {}
    folder = export_timm_folder(model, tmp_path / "merged", 32, (0.5,) * 3, (0.5,) * 3)
    assert timm.create_model(f"local-dir:{folder}", pretrained=True).blocks[0].attn.qkv.bias is None


def test_swin_reduction_gaining_a_bias_is_refused_before_writing(tmp_path):
    """Fails if a Swin downsample.reduction (bias-free, no timm flag for it) that gained a bias is
    written as a folder that would not load, or if the refusal does not name the layer in one line."""
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, **SWIN_KWARGS)
    names = glora.inject_glora(model, RANK, targets=r"layers\.\d+\.(blocks\.\d+\.mlp\.fc1|downsample\.reduction)")
    assert names == ["layers.0.blocks.0.mlp.fc1", "layers.1.downsample.reduction", "layers.1.blocks.0.mlp.fc1"]
    assert unexportable_bias_free(model) == ["layers.1.downsample.reduction"]
    glora.set_subnet(model, [{**NONE, "E": "constant"} for _ in names])
    glora.merge_glora(model)
    with pytest.raises(ValueError) as err:
        export_timm_folder(model, tmp_path / "merged", 32, (0.5,) * 3, (0.5,) * 3)
    message = str(err.value)
    assert "\n" not in message and message.startswith("layers.1.downsample.reduction: the merged layer gains a bias")
    assert list(tmp_path.iterdir()) == []


def test_beit_and_eva_split_qkv_bias_cannot_hold_a_gained_bias():
    """Fails if BEiT's or EVA's qkv (bias-free, whose qkv_bias flag makes separate q/v bias tensors,
    not a qkv.bias) is reported exportable, or a ViT qkv built without bias is reported unexportable."""
    beit = timm.create_model("beit_base_patch16_224", num_classes=3, qkv_bias=False, **TINY_VIT_KWARGS)
    glora.inject_glora(beit, RANK)
    assert unexportable_bias_free(beit) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    eva = timm.create_model("eva02_tiny_patch14_224", num_classes=3, qkv_bias=False,
                            **{**TINY_VIT_KWARGS, "img_size": 28, "patch_size": 7})
    glora.inject_glora(eva, RANK)
    assert unexportable_bias_free(eva) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert unexportable_bias_free(tiny_bias_free_vit()) == []
