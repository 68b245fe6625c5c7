"""GLoRA on a Hugging Face LLaMA-style model (tiny, built from a config, no download): q/k/v/o and
gate/up/down projections, supernet steps on a toy token task, a search with a user-given
evaluate_fn, merge with equal logits, and the PEFT export of a bias-free subnet."""
import copy

import pytest
import torch
import torch.nn.functional as F

import glora
from glora.export.peft import export_peft, load_peft, to_peft_model
from glora.merge import CandidateModel
from glora.export.peft_map import PeftExportError
from glora.run.preflight import check_targets_called
from glora.search import EvolutionSearch, feasible_range
from glora.space import sample_choice
from tests.helpers import require

transformers = require("transformers")
require("peft")

TARGETS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VOCAB, RANK = 16, 2


def tiny_llama():
    """Random init at a wider scale than HF's 0.02, so the frozen lm_head lets logits move."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=32, initializer_range=0.2)
    return transformers.LlamaForCausalLM(config).eval()


def counting(seed: int, n: int = 16, length: int = 12) -> torch.Tensor:
    """Toy token task: each sequence counts up modulo the vocabulary from a random start."""
    start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(length)) % VOCAB  # (n, length)


def next_token_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits  # (n, length, vocab)
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def test_llama_supernet_search_and_merge():
    """Fails if GLoRA cannot go into a transformers LLaMA's seven projections per layer, if the
    supernet does not learn the toy task, if the search's scores are not the named subnet's, or if
    merging (bias-free projections gaining a bias from E or C) changes the logits."""
    model = tiny_llama()
    train, val = counting(0), counting(1)
    names = check_targets_called(model, TARGETS, input_ids=train[:1])
    assert glora.inject_glora(model, RANK, targets=TARGETS) == names and len(names) == 14
    assert all(layer.bias is None for _, layer in glora.glora_layers(model))
    trainable = glora.mark_trainable(model)
    assert trainable and all(".glora_" in n for n in trainable)
    largest = glora.preset_subnet("largest", len(names), RANK)
    glora.set_subnet(model, largest)
    with torch.no_grad():
        before = next_token_loss(model, val).item()
    glora.set_subnet(model, None, seed=0)  # supernet: a fresh choice per layer per forward
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        loss = next_token_loss(model, train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    glora.set_subnet(model, largest)
    with torch.no_grad():
        assert next_token_loss(model, val).item() < before - 0.5

    candidate = CandidateModel(model)

    def evaluate_fn(subnet):  # the user's own metric: minus the next-token loss on held-out data
        with torch.no_grad():
            return -next_token_loss(candidate.load(subnet), val).item()

    shapes = glora.layer_shapes(model)
    limit = feasible_range(RANK, shapes)[1] // 3
    result = EvolutionSearch(evaluate_fn, shapes, RANK, population_num=6, select_num=3, mutation_num=3,
                             crossover_num=3, max_epochs=2, max_params=limit, seed=0).run()
    assert result.params <= limit
    glora.set_subnet(model, result.subnet)
    with torch.no_grad():
        unmerged = model(input_ids=val).logits
    assert -F.cross_entropy(unmerged[:, :-1].reshape(-1, VOCAB), val[:, 1:].reshape(-1)).item() == \
        pytest.approx(result.fitness, abs=1e-5)
    merged = glora.merge_glora(copy.deepcopy(model))
    for name, choice in zip(names, result.subnet):
        assert (merged.get_submodule(name).bias is not None) == (choice["C"] != "none" or choice["E"] != "none")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=val).logits, unmerged, rtol=1e-5, atol=1e-5)


def bias_free_subnet(n: int, seed: int = 0) -> list[dict]:
    """A random subnet that PEFT can express on bias-free layers: C and E none (D is dropped)."""
    import random

    rng = random.Random(seed)
    return [{**sample_choice(rng, RANK), "C": "none", "E": "none"} for _ in range(n)]


def randomized_llama():
    model = tiny_llama()
    base = copy.deepcopy(model)
    glora.inject_glora(model, RANK, targets=TARGETS)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".glora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model, base


def test_llama_subnet_round_trips_through_peft(tmp_path):
    """Fails if a LLaMA subnet exported as PEFT adapters gives other logits than ours, unmerged,
    reloaded onto the untouched base model, or after merge_and_unload."""
    model, base = randomized_llama()
    glora.set_subnet(model, bias_free_subnet(14))
    ids = counting(3)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        peft_model, plans = to_peft_model(model)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    export_peft(model, tmp_path / "peft")
    reloaded = load_peft(base, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    assert all(merged.get_submodule(n).bias is None for p in plans for n in p.layers)


def test_llama_subnet_with_a_new_bias_is_refused(tmp_path):
    """Fails if a subnet whose E gives a bias-free projection a bias is exported to PEFT (which
    would silently drop it) instead of refused in one line naming the layer, before writing."""
    model, _ = randomized_llama()
    subnet = bias_free_subnet(14)
    subnet[5]["E"] = "vector"
    glora.set_subnet(model, subnet)
    with pytest.raises(PeftExportError) as err:
        export_peft(model, tmp_path / "peft")
    assert str(err.value).startswith("model.layers.0.mlp.up_proj: the layer has no bias and its choice adds one")
    assert not (tmp_path / "peft").exists()
