"""The parameter budget: the counting rule against the tensors a choice reads, exact uniform
sampling of the subnets within a budget against brute force, and a search whose budget really
binds (most uniform draws of the tiny model fall outside it)."""
import collections
import itertools
import json
import math
import random

import pytest
import torch
import yaml

from glora.run import evolution
import glora
from glora import budget
from glora.run import supernet
from glora.layer import GLoRALinear
from tests.helpers import make_tiny_vit, parse_subnet_key, write_tiny_setup

OPTIONS = {"A": ("LoRA_4", "LoRA_2", "vector", "constant"), "B": ("LoRA_4", "LoRA_1", "vector", "constant"),
           "C": ("LoRA_4", "LoRA_3", "vector"), "D": ("vector", "constant"), "E": ("vector", "constant")}
NONE = {s: "none" for s in "ABCDE"}
# The tiny ViT's GLoRA layers (in, out), in injection order: qkv, proj, fc1, fc2 per block.
TINY_SHAPES = [(32, 96), (32, 32), (32, 128), (128, 32)] * 2


def spec_params(choice, in_f, out_f):
    """The budget rule of the spec, written out: LoRA_k k(in+out) (C: k(in+1)); vector out (C: in);
    constant 1; none 0."""
    total = 0
    for s, option in choice.items():
        if option.startswith("LoRA_"):
            k = int(option[5:])
            total += k * (in_f + 1) if s == "C" else k * (in_f + out_f)
        elif option == "vector":
            total += in_f if s == "C" else out_f
        elif option == "constant":
            total += 1
    return total


@pytest.mark.parametrize("in_f,out_f", [(6, 5), (5, 9)])
@pytest.mark.parametrize("support,option", [(s, o) for s, opts in OPTIONS.items() for o in opts])
def test_count_equals_the_stored_entries_the_option_reads(support, option, in_f, out_f):
    """Fails if an option's parameter count differs from the number of stored entries that change
    the layer's output, e.g. C = vector counted as out_features instead of in_features."""
    torch.manual_seed(0)
    layer = GLoRALinear(torch.randn(out_f, in_f), torch.randn(out_f), rank=4)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("glora_"):
                p.copy_(torch.randn_like(p))
    choice = {**NONE, support: option}
    layer.set_choice(choice)
    x = torch.randn(7, in_f)
    (layer(x) * torch.randn(7, out_f)).sum().backward()
    influential = sum(int((p.grad != 0).sum()) for name, p in layer.named_parameters()
                      if name.startswith("glora_") and p.grad is not None)
    assert influential == spec_params(choice, in_f, out_f)
    assert glora.choice_params(choice, in_f, out_f) == influential


def test_count_params_of_the_tiny_vit_by_hand():
    """Fails if count_params swaps in/out for C or A/B vectors, or drops layers: hand sums over the
    tiny ViT's (32->96, 32->32, 32->128, 128->32) x 2 layers."""
    model = make_tiny_vit()
    glora.inject_glora(model, 4)
    c_vector = [{**NONE, "C": "vector"}] * 8
    assert glora.count_params(model, c_vector) == 2 * (32 + 32 + 32 + 128)
    a_vector = [{**NONE, "A": "vector"}] * 8
    assert glora.count_params(model, a_vector) == 2 * (96 + 32 + 128 + 32)
    c_lora = [{**NONE, "C": "LoRA_4"}] * 8
    assert glora.count_params(model, c_lora) == 2 * 4 * (33 + 33 + 33 + 129)
    rng = random.Random(0)
    for _ in range(20):
        subnet = [{s: rng.choice(o + ("none",)) for s, o in OPTIONS.items()} for _ in range(8)]
        assert glora.count_params(model, subnet) == sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, TINY_SHAPES))


LO, HI = 3500, 4000  # 0.0035 M to 0.004 M


def uniform_draw(rng):
    space = {"A": ("LoRA_4", "vector", "constant", "none"), "B": ("LoRA_4", "vector", "constant", "none"),
             "C": ("LoRA_4", "vector", "none"), "D": ("vector", "constant", "none"),
             "E": ("vector", "constant", "none")}
    return [{s: rng.choice(o) for s, o in space.items()} for _ in TINY_SHAPES]


def test_the_window_binds_for_uniform_draws():
    """Fails if the end-to-end budget test below could pass with the budget ignored: most uniform
    draws of the tiny model must fall outside [LO, HI], on both sides."""
    rng = random.Random(0)
    totals = [sum(spec_params(c, i, o) for c, (i, o) in zip(uniform_draw(rng), TINY_SHAPES)) for _ in range(4000)]
    below, above = sum(t < LO for t in totals) / 4000, sum(t > HI for t in totals) / 4000
    assert below > 0.4 and above > 0.2


def test_search_keeps_every_candidate_inside_a_binding_budget(tmp_path):
    """Fails if evolution.py ignores --param-limits or --min-param-limits (random draws, mutants or
    crossovers outside the window are evaluated), or if the params it records are not the spec's count."""
    config = write_tiny_setup(tmp_path)
    supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "sup"),
                  "--epochs", "1"])
    evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(tmp_path / "sup"),
                   "--save_path", str(tmp_path / "s"), "--min-param-limits", str(LO / 1e6),
                   "--param-limits", str(HI / 1e6), "--population-num", "10", "--select-num", "4",
                   "--mutation-num", "5", "--crossover-num", "5", "--max-epochs", "3"])
    history = [json.loads(line) for line in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert len(history) >= 30 and {r["generation"] for r in history} == {0, 1, 2, 3}
    for record in history:
        subnet = parse_subnet_key(record["key"])
        params = sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, TINY_SHAPES))
        assert params == record["params"] and LO <= params <= HI, record
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert LO <= results["params"] <= HI
    assert (results["param_limit_M"], results["min_param_limit_M"]) == (HI / 1e6, LO / 1e6)
    doc = yaml.safe_load((tmp_path / "s" / "subnet.yaml").read_text())
    chosen = list(doc["layers"].values())
    assert doc["params"] == results["params"] == sum(spec_params(c, i, o) for c, (i, o) in zip(chosen, TINY_SHAPES))


# Exact sampling (glora.budget.random_candidate, sampling="exact") against brute force: small
# models whose subnets can be enumerated, or drawn by the original's rejection sampling.
SPACE = {"A": ("LoRA_2", "vector", "constant", "none"), "B": ("LoRA_2", "vector", "constant", "none"),
         "C": ("LoRA_2", "vector", "none"), "D": ("vector", "constant", "none"),
         "E": ("vector", "constant", "none")}
CHOICES = [dict(zip(SPACE, combo)) for combo in itertools.product(*SPACE.values())]  # 432


def chi2_critical(df, alpha=1e-4):
    """The chi-square critical value: scipy's when installed, else Wilson-Hilferty (z = 3.719)."""
    try:
        from scipy.stats import chi2
        return float(chi2.isf(alpha, df))
    except ImportError:
        assert alpha == 1e-4
        return df * (1 - 2 / (9 * df) + 3.719 * math.sqrt(2 / (9 * df))) ** 3


def goodness_of_fit(observed, expected_p, n):
    """(statistic, df) of observed counts (Counter) against probabilities (dict); a drawn category
    of probability 0 fails at once. Categories expected below 5 draws are pooled."""
    assert set(observed) <= {k for k, p in expected_p.items() if p > 0}, set(observed) - set(expected_p)
    cells, pool_obs, pool_exp = [], 0, 0.0
    for k, p in expected_p.items():
        if n * p >= 5:
            cells.append((observed.get(k, 0), n * p))
        else:
            pool_obs, pool_exp = pool_obs + observed.get(k, 0), pool_exp + n * p
    if pool_exp > 0:
        cells.append((pool_obs, pool_exp))
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1


def homogeneity(a, b):
    """(statistic, df) of the chi-square test that two samples (Counters) share one distribution."""
    keys, na, nb = sorted(set(a) | set(b)), sum(a.values()), sum(b.values())
    stat = 0.0
    for k in keys:
        col = a.get(k, 0) + b.get(k, 0)
        for obs, n in ((a.get(k, 0), na), (b.get(k, 0), nb)):
            stat += (obs - n * col / (na + nb)) ** 2 / (n * col / (na + nb))
    return stat, len(keys) - 1


def features(subnet, shapes):
    """What the tests compare: each (layer, support)'s option, and the total."""
    out = {(i, s): c[s] for i, c in enumerate(subnet) for s in SPACE}
    out["total"] = sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, shapes))
    return out


def enumerated(shapes, lo, hi):
    """Every subnet of a two-layer model within [lo, hi] (the limit of rejection sampling)."""
    assert len(shapes) == 2
    return [[a, b] for a in CHOICES for b in CHOICES
            if lo <= spec_params(a, *shapes[0]) + spec_params(b, *shapes[1]) <= hi]


def marginals(subnets, shapes):
    """Feature -> value -> probability, for a list of equally likely subnets."""
    counts = collections.defaultdict(collections.Counter)
    for subnet in subnets:
        for key, value in features(subnet, shapes).items():
            counts[key][value] += 1
    return {key: {v: n / len(subnets) for v, n in c.items()} for key, c in counts.items()}


def sampled(draw, n):
    counts = collections.defaultdict(collections.Counter)
    for _ in range(n):
        for key, value in draw().items():
            counts[key][value] += 1
    return counts


@pytest.fixture
def class_genes(request, monkeypatch):
    """Run with classes of at most N exchangeable genes (budget.CLASS_GENES), tables rebuilt."""
    monkeypatch.setattr(budget, "CLASS_GENES", request.param)
    budget._count_tables.cache_clear()
    yield request.param
    budget._count_tables.cache_clear()


@pytest.mark.parametrize("class_genes", [24, 1, 3], indirect=True)
@pytest.mark.parametrize("shapes,lo,hi", [([(3, 5), (3, 5)], 10, 14), ([(3, 5), (5, 2)], 0, 12)])
def test_exact_sampling_matches_enumeration(shapes, lo, hi, class_genes):
    """Fails if exact sampling is not uniform over the subnets within a tight budget (3 % and 4 %
    of uniform draws fit): chi-square of every (layer, support)'s option frequencies and of the
    totals against all subnets enumerated; also if it draws an option or total of probability 0.
    Classes of 1 and 3 genes check the grouping of exchangeable genes and its cut."""
    expected = marginals(enumerated(shapes, lo, hi), shapes)
    rng, n = random.Random(7), 6000
    observed = sampled(lambda: features(budget.random_candidate(rng, 2, shapes, lo, hi), shapes), n)
    for key, probs in expected.items():
        stat, df = goodness_of_fit(observed[key], probs, n)
        assert stat < chi2_critical(df), (key, stat, df, observed[key], probs)


def test_exact_sampling_matches_rejection_sampling_and_repair_does_not():
    """Fails if exact sampling differs from the original's rejection sampling on a three-layer model
    at a tight budget (2.4 % of uniform draws fit): chi-square homogeneity tests of option and total
    frequencies. The repair heuristic, biased there, must fail the same test (the test has power)."""
    shapes, lo, hi, n = [(3, 5), (3, 5), (5, 2)], 0, 22, 3000
    rng = random.Random(11)

    def rejection():
        while True:
            subnet = [{s: rng.choice(o) for s, o in SPACE.items()} for _ in shapes]
            if lo <= sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, shapes)) <= hi:
                return features(subnet, shapes)

    reference = sampled(rejection, n)
    for sampling, agrees in (("exact", True), ("repair", False)):
        draws = sampled(lambda: features(budget.random_candidate(
            rng, 2, shapes, lo, hi, sampling=sampling), shapes), n)
        tests = [homogeneity(reference[key], draws[key]) for key in reference]
        passed = [stat < chi2_critical(df) for stat, df in tests]
        assert all(passed) if agrees else not all(passed), (sampling, tests)


@pytest.mark.parametrize("lo,hi", [(0, 290_000), (400_000, 450_000), (960, 960)])
def test_exact_sampling_never_leaves_the_budget(lo, hi):
    """Fails if an exact draw on ViT-B at rank 4 is invalid or outside [lo, hi], at loose, tight,
    and single-total (960: one C vector and all 192 constants) budgets."""
    vit_b = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
    rng = random.Random(0)
    for _ in range(20):
        subnet = budget.random_candidate(rng, 4, vit_b, lo, hi)
        assert [glora.space.validate_choice(c, 4) for c in subnet] == subnet
        assert lo <= sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, vit_b)) <= hi


def test_exact_sampling_is_deterministic_under_a_seed():
    """Fails if exact draws depend on anything but the generator's state (global random, table
    caching, dict order): same seed, same subnets, also with the tables rebuilt and from a saved
    generator state; another seed, other subnets."""
    def draws(rng, n=10):
        return [budget.random_candidate(rng, 4, TINY_SHAPES, LO, HI) for _ in range(n)]

    first = draws(random.Random(5))
    budget._count_tables.cache_clear()
    random.seed(123)
    assert draws(random.Random(5)) == first
    rng = random.Random(5)
    draws(rng, 4)
    state = rng.getstate()
    assert draws(rng, 6) == first[4:]
    rng.setstate(state)
    assert draws(rng, 6) == first[4:]
    assert draws(random.Random(6)) != first
