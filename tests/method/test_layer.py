"""GLoRALinear against an independent, straightforward implementation of the formula."""
import random

import pytest
import torch
from torch import nn

import glora
from glora.layer import GLoRALinear
from glora.space import all_choices, choice_params


def reference_support(option: str, down: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
    """Dense value of one support written out by hand (0 for none)."""
    if option == "none":
        return torch.zeros(())
    if option.startswith("LoRA_"):
        k = int(option.split("_")[1])
        return down[:, :k] @ up[:k, :]
    if up is None:  # D or E: a vector
        return down if option == "vector" else down[0]
    return down[:, 0:1] if option == "vector" else down[0, 0]


def reference_forward(x, w0, b0, layer: GLoRALinear, choice: dict) -> torch.Tensor:
    a = reference_support(choice["A"], layer.glora_Ad, layer.glora_Au)
    b = reference_support(choice["B"], layer.glora_Bd, layer.glora_Bu)
    c = reference_support(choice["C"], layer.glora_Cd, layer.glora_Cu)
    d = reference_support(choice["D"], layer.glora_D, None)
    e = reference_support(choice["E"], layer.glora_E, None)
    w = w0 + w0 * a + b
    wc = (w0 @ (c * torch.ones(w0.shape[1], 1))).reshape(-1)  # W0 · C, C broadcast to (in, 1)
    if b0 is None:
        bias = e * torch.ones(w0.shape[0]) + wc
    else:
        bias = b0 + b0 * d + e + wc
    return x @ w.T + bias


def make_layer(bias: bool, rank: int = 4, in_f: int = 6, out_f: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_f, out_f, bias=bias)
    w0 = linear.weight.detach().clone()
    b0 = None if linear.bias is None else linear.bias.detach().clone()
    layer = GLoRALinear.from_linear(linear, rank)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("glora_"):
                p.copy_(torch.randn_like(p))
    return layer, w0, b0


@pytest.mark.parametrize("bias", [True, False])
def test_all_432_choices_match_reference(bias):
    layer, w0, b0 = make_layer(bias)
    x = torch.randn(3, 6)
    choices = all_choices(4)
    assert len(choices) == 432
    for choice in choices:
        layer.set_choice(choice)
        torch.testing.assert_close(layer(x), reference_forward(x, w0, b0, layer, choice),
                                   rtol=1e-5, atol=1e-5, msg=str(choice))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_lora_k_below_rank_uses_leading_factors(k):
    layer, w0, b0 = make_layer(True)
    x = torch.randn(3, 6)
    choice = {"A": f"LoRA_{k}", "B": f"LoRA_{k}", "C": f"LoRA_{k}", "D": "vector", "E": "constant"}
    layer.set_choice(choice)
    torch.testing.assert_close(layer(x), reference_forward(x, w0, b0, layer, choice))
    # Changing factor columns beyond k must not change the output.
    before = layer(x)
    with torch.no_grad():
        layer.glora_Ad[:, k:] += 1.0
        layer.glora_Bu[k:, :] += 1.0
    torch.testing.assert_close(layer(x), before)


@pytest.mark.parametrize("bias", [True, False])
def test_zero_initialised_layer_equals_original_for_every_choice(bias):
    torch.manual_seed(0)
    linear = nn.Linear(6, 5, bias=bias)
    layer = GLoRALinear.from_linear(linear, 4)
    x = torch.randn(3, 6)
    expected = linear(x)
    for choice in all_choices(4):
        layer.set_choice(choice)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_stored_tensor_names_shapes_and_inits():
    layer, _, _ = make_layer(True)
    fresh = GLoRALinear(torch.randn(5, 6), torch.randn(5), rank=4)
    shapes = {n: tuple(p.shape) for n, p in fresh.named_parameters()}
    assert shapes == {"weight": (5, 6), "bias": (5,), "glora_Ad": (5, 4), "glora_Au": (4, 6),
                      "glora_Bd": (5, 4), "glora_Bu": (4, 6), "glora_Cd": (6, 4), "glora_Cu": (4, 1),
                      "glora_D": (5,), "glora_E": (5,)}
    for name in ("glora_Ad", "glora_Bd", "glora_Cd", "glora_D", "glora_E"):
        assert torch.count_nonzero(getattr(fresh, name)) == 0, name
    for name in ("glora_Au", "glora_Bu", "glora_Cu"):  # xavier-uniform: bounded, non-zero
        t = getattr(fresh, name)
        bound = (6.0 / (t.shape[0] + t.shape[1])) ** 0.5
        assert t.abs().max() <= bound and torch.count_nonzero(t) == t.numel(), name
    assert not fresh.weight.requires_grad and not fresh.bias.requires_grad


def test_weight_sharing_vector_is_first_column_constant_is_corner():
    layer, w0, b0 = make_layer(True)
    x = torch.randn(3, 6)
    none = {s: "none" for s in "ABCDE"}
    layer.set_choice({**none, "B": "vector"})
    expected = x @ (w0 + layer.glora_Bd[:, 0:1]).T + b0
    torch.testing.assert_close(layer(x), expected)
    layer.set_choice({**none, "A": "constant"})
    torch.testing.assert_close(layer(x), x @ (w0 * (1 + layer.glora_Ad[0, 0])).T + b0)
    layer.set_choice({**none, "C": "vector"})
    torch.testing.assert_close(layer(x), x @ w0.T + b0 + w0 @ layer.glora_Cd[:, 0])
    layer.set_choice({**none, "E": "constant"})
    torch.testing.assert_close(layer(x), x @ w0.T + b0 + layer.glora_E[0])
    layer.set_choice({**none, "D": "constant"})
    torch.testing.assert_close(layer(x), x @ w0.T + b0 * (1 + layer.glora_D[0]))


def test_none_choice_returns_frozen_tensors_without_allocation():
    layer, w0, b0 = make_layer(True)
    weight, bias = layer.merged_weight_bias({s: "none" for s in "ABCDE"})
    assert weight is layer.weight and bias is layer.bias  # nothing computed, nothing allocated


def test_regression_no_cuda_in_layer_and_device_dtype_follow_weight():
    """The original called .cuda() inside the layer; ours follows the frozen weight."""
    linear = nn.Linear(6, 5).to(torch.float64)
    layer = GLoRALinear.from_linear(linear, 2)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    layer.set_choice({"A": "LoRA_2", "B": "vector", "C": "LoRA_2", "D": "vector", "E": "vector"})
    assert layer(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64
    import inspect
    import glora.layer, glora.inject, glora.merge
    for module in (glora.layer, glora.inject, glora.merge):
        assert ".cuda(" not in inspect.getsource(module)


def test_forward_under_autocast():
    layer, w0, b0 = make_layer(True)
    layer.set_choice({"A": "LoRA_4", "B": "LoRA_4", "C": "LoRA_4", "D": "vector", "E": "vector"})
    x = torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=5e-2, atol=5e-2)


def test_invalid_option_lists_valid_values():
    layer, _, _ = make_layer(True)
    with pytest.raises(ValueError, match="valid: LoRA_k"):
        layer.set_choice({"A": "lora_4", "B": "none", "C": "none", "D": "none", "E": "none"})
    with pytest.raises(ValueError, match="valid: vector, constant, none"):
        layer.set_choice({"A": "none", "B": "none", "C": "none", "D": "LoRA_4", "E": "none"})
    with pytest.raises(ValueError, match="invalid option 'constant' for support C"):
        layer.set_choice({"A": "none", "B": "none", "C": "constant", "D": "none", "E": "none"})
    with pytest.raises(ValueError, match=r"1 <= k <= 4"):
        layer.set_choice({"A": "LoRA_5", "B": "none", "C": "none", "D": "none", "E": "none"})
    with pytest.raises(ValueError, match="exactly the keys"):
        layer.set_choice({"A": "none"})


def test_regression_option_strings_are_exact_not_substrings():
    """The original dispatched on `'LoRA' in s`; 'myLoRA_4' or 'vectors' must be rejected."""
    layer, _, _ = make_layer(True)
    for bad in ("myLoRA_4", "LoRA_04", "LoRA_", "vectors", "None", " none"):
        with pytest.raises(ValueError):
            layer.set_choice({"A": bad, "B": "none", "C": "none", "D": "none", "E": "none"})


# ViT-B/16's four layer shapes (in, out) and hand-computed counts at rank 4.
VIT_B_SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}


@pytest.mark.parametrize("layer_name,choice,expected", [
    ("qkv", {"A": "LoRA_4", "B": "LoRA_4", "C": "LoRA_4", "D": "vector", "E": "vector"},
     4 * 3072 + 4 * 3072 + 4 * 769 + 2304 + 2304),
    ("proj", {"A": "vector", "B": "constant", "C": "vector", "D": "constant", "E": "none"},
     768 + 1 + 768 + 1),
    ("fc1", {"A": "none", "B": "LoRA_4", "C": "none", "D": "none", "E": "vector"},
     4 * (768 + 3072) + 3072),
    ("fc2", {"A": "constant", "B": "vector", "C": "LoRA_4", "D": "vector", "E": "constant"},
     1 + 768 + 4 * 3073 + 768 + 1),
    ("fc2", {"A": "LoRA_2", "B": "none", "C": "LoRA_1", "D": "none", "E": "none"},
     2 * (3072 + 768) + 1 * 3073),
    ("qkv", {s: "none" for s in "ABCDE"}, 0),
])
def test_parameter_count_on_vit_b_shapes(layer_name, choice, expected):
    in_f, out_f = VIT_B_SHAPES[layer_name]
    assert choice_params(choice, in_f, out_f) == expected


def test_sampler_is_seeded_and_leaves_global_rng_untouched(tiny_vit):
    glora.inject_glora(tiny_vit, 4)
    x = torch.randn(2, 3, 32, 32)

    def draws(seed):
        sampler = glora.set_subnet(tiny_vit, None, seed=seed)
        seen = []
        for _ in range(3):
            tiny_vit(x)
            seen.append(sampler.rng.getstate())
        return seen

    py_state, torch_state = random.getstate(), torch.get_rng_state()
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_sampler_draws_every_option_of_every_support():
    sampler = glora.ChoiceSampler(3)
    seen = {s: set() for s in "ABCDE"}
    for _ in range(500):
        for s, opt in sampler.draw(4).items():
            seen[s].add(opt)
    assert seen == {s: set(v) for s, v in glora.search_space(4).items()}


def test_sampler_state_roundtrip_continues_the_same_sequence():
    a = glora.ChoiceSampler(5)
    for _ in range(10):
        a.draw(4)
    state = a.state_dict()
    b = glora.ChoiceSampler(0)
    b.load_state_dict(state)
    assert [a.draw(4) for _ in range(20)] == [b.draw(4) for _ in range(20)]
