"""The search operators and the optimizer step behave as the original code's (per-gene mutation and
crossover, zero-filled gradients), and the smaller fidelity fixes."""
import random
from math import prod

import pytest
import torch

import glora
from glora.run.engine import train_one_epoch
from glora.merge import CandidateModel
from glora.search import crossover, mutate, random_candidate
from glora.space import SUPPORTS, search_space, subnet_params
from tests.helpers import make_tiny_vit, randomize_glora

VIT_B = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
RANK = 4


class ScriptedRng:
    """A stand-in for random.Random that records the calls and answers from a script."""

    def __init__(self, randoms, pick=0):
        self.randoms, self.pick, self.calls = list(randoms), pick, []

    def random(self):
        self.calls.append("random")
        return self.randoms.pop(0)

    def choice(self, seq):
        self.calls.append(("choice", tuple(seq)))
        return seq[self.pick % len(seq)]


def test_mutation_draws_once_per_gene_as_the_original():
    """Fails if mutation re-draws a whole layer: the original calls random() once per (layer,
    support), A..E in order, and draws that support's option only when it falls below m_prob."""
    parent = [{s: "none" for s in SUPPORTS} for _ in range(2)]
    # layer 0: only C and E mutate; layer 1: only A mutates
    rng = ScriptedRng([0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    child = mutate(rng, parent, RANK, 0.2, [(8, 8), (8, 8)], 0, 10**9)
    space = search_space(RANK)
    expected_calls = ["random", "random", "random", ("choice", space["C"]), "random", "random",
                      ("choice", space["E"]), "random", ("choice", space["A"]), "random", "random",
                      "random", "random"]
    assert rng.calls == expected_calls
    assert child == [{"A": "none", "B": "none", "C": "LoRA_4", "D": "none", "E": "vector"},
                     {"A": "LoRA_4", "B": "none", "C": "none", "D": "none", "E": "none"}]


def test_mutation_changes_about_half_the_vit_b_layers():
    """Fails if mutation re-draws whole layers (about 10 of 48 change) instead of single genes
    (the original: P(layer unchanged) = prod over supports of 1 - m_prob * (1 - 1/options))."""
    space = search_space(RANK)
    p_same = prod(1 - 0.2 * (1 - 1 / len(space[s])) for s in SUPPORTS)
    expected = 48 * (1 - p_same)  # 25.4 layers
    rng = random.Random(0)
    changed, changed_supports = [], []
    for _ in range(300):
        parent = [{s: rng.choice(space[s]) for s in SUPPORTS} for _ in VIT_B]
        child = mutate(rng, parent, RANK, 0.2, VIT_B, 0, 10**9)
        diffs = [sum(c[s] != p[s] for s in SUPPORTS) for c, p in zip(child, parent)]
        changed.append(sum(d > 0 for d in diffs))
        changed_supports += [d for d in diffs if d > 0]
    mean = sum(changed) / len(changed)
    assert abs(mean - expected) < 0.6, (mean, expected)
    # most changed layers change in one support only, which whole-layer re-draws almost never do
    assert sum(d == 1 for d in changed_supports) / len(changed_supports) > 0.6


def test_crossover_recombines_within_a_layer():
    """Fails if crossover takes whole layers: one pick per (layer, support), so a child can take A
    from one parent and B from the other."""
    p1 = [{"A": "LoRA_4", "B": "LoRA_4", "C": "LoRA_4", "D": "vector", "E": "vector"}]
    p2 = [{"A": "none", "B": "none", "C": "none", "D": "none", "E": "none"}]

    class Alternate:
        def __init__(self):
            self.calls = 0

        def choice(self, pair):
            self.calls += 1
            return pair[self.calls % 2]

    rng = Alternate()
    child = crossover(rng, p1, p2, [(8, 8)], 0, 10**9)
    assert rng.calls == 5
    assert child == [{"A": "none", "B": "LoRA_4", "C": "none", "D": "vector", "E": "none"}]
    # with a real generator, mixed layers are the rule over 48 layers
    rng = random.Random(1)
    parents = [random_candidate(rng, RANK, VIT_B, 0, 10**7) for _ in range(2)]
    child = crossover(rng, *parents, VIT_B, 0, 10**9)
    mixed = [c not in (a, b) for c, a, b in zip(child, *parents)]
    assert sum(mixed) > 10
    assert subnet_params(child, VIT_B) > 0


def one_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 3]))]


def two_steps(zero_fill: bool):
    """Step 1 uses B = LoRA_4 everywhere; step 2 uses nothing. Returns Bd before/after step 2."""
    model = make_tiny_vit()
    glora.inject_glora(model, RANK)
    glora.mark_trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=1e-2)
    layers = glora.glora_layers(model)
    glora.set_subnet(model, glora.preset_subnet("lora", len(layers), RANK))
    train_one_epoch(model, one_batch(0), optimizer, torch.device("cpu"), 1, progress=False,
                    zero_fill_grads=zero_fill)
    before = layers[0][1].glora_Bd.detach().clone()
    glora.set_subnet(model, glora.preset_subnet("linear_probe", len(layers), RANK))
    train_one_epoch(model, one_batch(1), optimizer, torch.device("cpu"), 2, progress=False,
                    zero_fill_grads=zero_fill)
    return before, layers[0][1].glora_Bd.detach().clone(), optimizer


def test_unused_support_moves_under_adamw_as_the_original():
    """Fails if gradients are set to None between steps (torch >= 2's default): the original's
    zero_grad() on torch 1.10 zero-filled them, so AdamW's momentum and decay move a support the
    sampled path did not use."""
    before, after, optimizer = two_steps(zero_fill=True)
    assert not torch.equal(before, after)
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {2}  # every tensor used in step 1 took the second step too


def test_freeze_keeps_unused_supports_still():
    """Fails if --unused-supports freeze does not restore set_to_none (unused supports stand still)."""
    before, after, _ = two_steps(zero_fill=False)
    assert torch.equal(before, after)


def test_unused_support_step_matches_a_hand_computed_adamw_step():
    """Fails if the zero-filled step is not AdamW's update with g = 0 (m, v decay; p decays)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-8)
    p.grad = torch.tensor([0.3, -0.4])
    opt.step()
    m, v, ref = 0.1 * p.grad.clone(), 0.001 * p.grad.clone() ** 2, p.detach().clone()
    opt.zero_grad(set_to_none=False)  # the original's semantics
    opt.step()
    m, v = 0.9 * m, 0.999 * v
    ref = ref * (1 - 0.1 * 0.5)
    ref = ref - 0.1 / (1 - 0.9 ** 2) * m / ((v / (1 - 0.999 ** 2)).sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("choice", [{"A": "none", "B": "none", "C": "vector", "D": "none", "E": "none"},
                                    {"A": "vector", "B": "LoRA_4", "C": "none", "D": "vector", "E": "constant"},
                                    {"A": "none", "B": "none", "C": "none", "D": "none", "E": "none"}])
def test_candidate_model_scores_bias_free_layers(choice):
    """Fails if CandidateModel.load assumes every linear has a bias (AttributeError when E or C gives
    a bias-free qkv one), or leaves a previous candidate's bias behind."""
    model = make_tiny_vit(qkv_bias=False)
    glora.inject_glora(model, RANK)
    randomize_glora(model)
    model.eval()
    layers = glora.glora_layers(model)
    candidate = CandidateModel(model)
    x = torch.randn(3, 3, 32, 32)
    largest = glora.preset_subnet("largest", len(layers), RANK)
    candidate.load(largest)  # leaves a bias on every layer; the next load must replace it
    subnet = [dict(choice) for _ in layers]
    with torch.no_grad():
        got = candidate.load(subnet)(x)
        glora.set_subnet(model, subnet)
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_supernet_default_dataset_is_the_originals():
    """Fails if supernet.py's --dataset default drifts from the original's caltech101."""
    from glora.run import supernet

    assert supernet.get_args_parser().parse_args([]).dataset == "caltech101"
    assert supernet.get_args_parser().parse_args([]).unused_supports == "update"
