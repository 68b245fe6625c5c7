"""Injection, trainable set, state dict, merge to plain timm, and original-checkpoint import."""
import random

import pytest
import timm
import torch
from torch import nn

import glora
from glora.space import sample_choice
from tests.helpers import TINY_VIT_KWARGS, make_tiny_vit, randomize_glora


def random_subnet(n_layers: int, seed: int, rank: int = 4) -> list[dict]:
    rng = random.Random(seed)
    return [sample_choice(rng, rank) for _ in range(n_layers)]


def test_injection_targets_exactly_block_linears(tiny_vit):
    names = glora.inject_glora(tiny_vit, 4)
    expected = [f"blocks.{i}.{n}" for i in range(2)
                for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert names == expected
    assert [n for n, _ in glora.glora_layers(tiny_vit)] == expected
    assert type(tiny_vit.head) is nn.Linear
    assert isinstance(tiny_vit.patch_embed.proj, nn.Conv2d)


def test_regression_layer_count_derived_from_model_not_hard_coded():
    """The original hard-coded 48 layers; depth 3 gives 12, depth 5 gives 20."""
    for depth in (3, 5):
        model = make_tiny_vit(depth=depth)
        assert len(glora.inject_glora(model, 2)) == 4 * depth


def test_regression_targeting_is_not_every_linear_but_head():
    """A stray Linear outside the blocks (the original would wrap it) stays untouched."""
    model = make_tiny_vit()
    model.fc_norm = nn.Linear(32, 32)  # e.g. a pre-logits/representation layer
    names = glora.inject_glora(model, 4)
    assert "fc_norm" not in names and type(model.fc_norm) is nn.Linear


def test_state_dict_keys_keep_timm_names(tiny_vit):
    before = set(tiny_vit.state_dict())
    glora.inject_glora(tiny_vit, 4)
    after = set(tiny_vit.state_dict())
    assert before <= after
    assert all(".glora_" in k for k in after - before)


def test_trainable_set_is_exactly_glora_and_head(tiny_vit):
    glora.inject_glora(tiny_vit, 4)
    trainable = set(glora.mark_trainable(tiny_vit))
    expected = {n for n, _ in tiny_vit.named_parameters() if ".glora_" in n or n.startswith("head.")}
    assert trainable == expected
    assert {n for n, p in tiny_vit.named_parameters() if p.requires_grad} == expected
    assert set(glora.glora_state_dict(tiny_vit)) == expected


def test_regression_trainable_selection_not_by_letter_substrings():
    """The original matched names containing single letters; a 'D' or 'E' in a name is not enough."""
    model = make_tiny_vit()
    model.register_parameter("EXTRA_D", nn.Parameter(torch.zeros(1)))
    glora.inject_glora(model, 4)
    assert "EXTRA_D" not in glora.mark_trainable(model)
    assert "EXTRA_D" not in glora.glora_state_dict(model)


def test_training_updates_every_used_support(tiny_vit):
    glora.inject_glora(tiny_vit, 4)
    glora.mark_trainable(tiny_vit)
    full = {"A": "LoRA_4", "B": "LoRA_4", "C": "LoRA_4", "D": "vector", "E": "vector"}
    glora.set_subnet(tiny_vit, [full] * 8)
    start = {k: v.clone() for k, v in glora.glora_state_dict(tiny_vit).items()}
    opt = torch.optim.AdamW([p for p in tiny_vit.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    for step in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(tiny_vit(x), y).backward()
        if step == 0:  # down factors are zero, so no gradient reaches the up factors yet
            ups = [p.grad for n, p in tiny_vit.named_parameters() if n.endswith(("glora_Au", "glora_Bu", "glora_Cu"))]
            assert all(g is None or torch.count_nonzero(g) == 0 for g in ups)
        opt.step()
    end = glora.glora_state_dict(tiny_vit)
    unchanged = [k for k in start if torch.equal(start[k], end[k])]
    assert unchanged == []
    frozen = [n for n, p in tiny_vit.named_parameters() if not p.requires_grad]
    assert frozen and all(".glora_" not in n for n in frozen)


def test_merge_loads_strictly_into_fresh_timm_model_with_same_logits():
    model = make_tiny_vit(seed=3)
    glora.inject_glora(model, 4)
    randomize_glora(model, seed=4, scale=0.2)
    subnet = random_subnet(8, seed=5)
    glora.set_subnet(model, subnet)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        w0 = model.blocks[0].attn.qkv.weight.clone()
    glora.merge_glora(model)
    assert not glora.glora_layers(model)
    fresh = timm.create_model("vit_tiny_patch16_224", num_classes=5, **TINY_VIT_KWARGS)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        got = fresh(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, w0)  # the supports did something


def test_merge_computes_from_w0_and_never_aliases_it():
    model = make_tiny_vit()
    glora.inject_glora(model, 4)
    randomize_glora(model)
    layer = model.blocks[0].mlp.fc1
    w0 = layer.weight
    w0_copy = w0.detach().clone()
    glora.set_subnet(model, glora.preset_subnet("largest", 8, 4))
    glora.merge_glora(model)
    assert torch.equal(w0, w0_copy)  # the frozen tensor was not updated in place
    assert model.blocks[0].mlp.fc1.weight.data_ptr() != w0.data_ptr()


def test_merge_requires_fixed_choices_and_finite_weights(tiny_vit):
    glora.inject_glora(tiny_vit, 4)
    glora.set_subnet(tiny_vit, None, seed=0)
    with pytest.raises(ValueError, match="no fixed choice"):
        glora.merge_glora(tiny_vit)
    glora.set_subnet(tiny_vit, glora.preset_subnet("largest", 8, 4))
    with torch.no_grad():
        tiny_vit.blocks[1].mlp.fc2.glora_E[0] = float("nan")
    with pytest.raises(FloatingPointError, match="blocks.1.mlp.fc2"):
        glora.merge_glora(tiny_vit)
    assert len(glora.glora_layers(tiny_vit)) == 8  # nothing was replaced


def test_set_subnet_validates_length_and_names(tiny_vit):
    names = glora.inject_glora(tiny_vit, 4)
    with pytest.raises(ValueError, match="3 choices but the model has 8"):
        glora.set_subnet(tiny_vit, glora.preset_subnet("lora", 3, 4))
    by_name = dict(zip(names, random_subnet(8, 1)))
    glora.set_subnet(tiny_vit, by_name)
    assert glora.current_subnet(tiny_vit) == [by_name[n] for n in names]
    with pytest.raises(ValueError, match="does not match"):
        glora.set_subnet(tiny_vit, {"blocks.9.attn.qkv": by_name[names[0]]})


def test_count_params_matches_rule(tiny_vit):
    glora.inject_glora(tiny_vit, 4)
    # tiny ViT: qkv 32->96, proj 32->32, fc1 32->128, fc2 128->32, two blocks
    lora = 2 * (4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 128) + 4 * (128 + 32))
    assert glora.count_params(tiny_vit, glora.preset_subnet("lora", 8, 4)) == lora
    assert glora.count_params(tiny_vit, glora.preset_subnet("linear_probe", 8, 4)) == 0
    assert glora.count_params(tiny_vit, glora.preset_subnet("bitfit", 8, 4)) == 2 * (96 + 32 + 128 + 32)


def test_convert_original_state_dict_loads_into_ours(tiny_vit):
    glora.inject_glora(tiny_vit, 4)
    randomize_glora(tiny_vit)
    ours = glora.glora_state_dict(tiny_vit)
    original = {}
    for key, value in ours.items():  # the original's naming: …qkv.Ad, and a DataParallel prefix
        original["module." + key.replace(".glora_", ".")] = value
    converted = glora.convert_original_state_dict(original)
    assert converted.keys() == ours.keys()
    fresh = make_tiny_vit(seed=9)
    glora.inject_glora(fresh, 4)
    missing, unexpected = fresh.load_state_dict(converted, strict=False)
    assert not unexpected
    assert all(".glora_" not in k and not k.startswith("head.") for k in missing)
    for key, value in ours.items():
        assert torch.equal(fresh.state_dict()[key], value)


# Fixed-subnet training trains exactly the entries the subnet reads (train_read_entries).
PARTIAL = [{"A": "vector", "B": "LoRA_4", "C": "vector", "D": "constant", "E": "vector"},
           {"A": "LoRA_2", "B": "constant", "C": "LoRA_3", "D": "vector", "E": "constant"},
           {"A": "constant", "B": "vector", "C": "none", "D": "none", "E": "none"},
           {"A": "none", "B": "LoRA_1", "C": "LoRA_4", "D": "vector", "E": "vector"}] * 2


def adamw_steps(model, params, x, y, steps=3):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("subnet", [PARTIAL, random_subnet(8, seed=9)], ids=["partial", "random"])
def test_fixed_subnet_trains_exactly_its_budget_count(subnet):
    """Fails if a fixed subnet trains, decays or keeps optimizer moments for stored entries it
    never reads (all of a vector support's (out, r) factor rather than column 0, a constant's
    whole factor, the columns beyond k of LoRA_k): the trainable count, the entries that move
    under AdamW with weight decay, and each moment's size all equal count_params plus the head;
    the state-dict names stay glora_*."""
    model = make_tiny_vit(seed=2)
    glora.inject_glora(model, 4)
    randomize_glora(model, seed=3)
    glora.set_subnet(model, subnet)
    keys, head = set(model.state_dict()), model.head.weight.numel() + model.head.bias.numel()
    start = {k: v.clone() for k, v in glora.glora_state_dict(model).items()}
    params = glora.train_read_entries(model)
    budget = glora.count_params(model, subnet)
    assert sum(p.numel() for p in params) == budget + head
    torch.manual_seed(0)
    opt = adamw_steps(model, params, torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,)))
    end = glora.glora_state_dict(model)
    moved = sum(int((end[k] != start[k]).sum()) for k in start if ".glora_" in k)
    assert moved == budget
    for moment in ("exp_avg", "exp_avg_sq"):
        assert sum(opt.state[p][moment].numel() for p in params) == budget + head
    assert set(model.state_dict()) == keys


def test_fixed_subnet_training_equals_full_tensor_training_on_read_entries():
    """Fails if training through views changes what the subnet computes: against AdamW on the whole
    stored tensors (unread entries get zero gradients and only decay), the read entries and the
    logits after three steps are equal; the views share memory with the stored tensors."""
    x, y = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    models = []
    for views in (True, False):
        model = make_tiny_vit(seed=2)
        glora.inject_glora(model, 4)
        randomize_glora(model, seed=3)
        glora.mark_trainable(model)
        glora.set_subnet(model, PARTIAL)
        if views:
            params = glora.train_read_entries(model)
        else:
            glora.freeze_unused(model)
            params = [p for p in model.parameters() if p.requires_grad]
        adamw_steps(model, params, x, y)
        models.append(model.eval())
    with torch.no_grad():
        assert torch.allclose(models[0](x), models[1](x), rtol=0, atol=1e-6)
    for (_, a), (_, b), choice in zip(glora.glora_layers(models[0]), glora.glora_layers(models[1]), PARTIAL):
        for name, index in glora.layer.read_entries(choice, 4).items():
            assert torch.allclose(getattr(a, name)[index], getattr(b, name)[index], rtol=0, atol=1e-7), name
        for name, view in a._views.items():
            assert view.data_ptr() == getattr(a, name).data_ptr()
    with pytest.raises(RuntimeError, match="cannot change"):
        glora.set_subnet(models[0], PARTIAL)
