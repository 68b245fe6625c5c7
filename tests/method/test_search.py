"""Properties of the pure evolutionary search (glora/search.py): no models, a synthetic fitness."""
import json
import random
import zlib

import pytest

from glora.search import (BudgetError, EvolutionSearch, check_budget, crossover, feasible_range,
                          mutate, random_candidate, subnet_from_key, subnet_key)
from glora.space import SUPPORTS, subnet_params, validate_choice

VIT_B = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
TINY = [(32, 96), (32, 32), (32, 128), (128, 32)] * 2
RANK = 4


def synthetic_fitness(subnet):
    """Deterministic 'accuracy' in [0, 100): rewards some options per layer, plus a key hash."""
    key = subnet_key(subnet)
    score = sum((i % 3 + 1) * (c["A"].startswith("LoRA") + 0.5 * (c["E"] == "vector"))
                for i, c in enumerate(subnet))
    return 50.0 * score / (3 * len(subnet)) + (zlib.crc32(key.encode()) % 1000) / 100.0


class Recorder:
    """An evaluate_fn that records every call."""

    def __init__(self, fn=synthetic_fitness):
        self.fn, self.calls = fn, []

    def __call__(self, subnet):
        self.calls.append(subnet_key(subnet))
        return self.fn(subnet)


def small_search(evaluate_fn, **kw):
    settings = dict(population_num=12, select_num=4, mutation_num=5, crossover_num=5, max_epochs=4,
                    max_params=20_000, seed=3)
    settings.update(kw)
    return EvolutionSearch(evaluate_fn, TINY, RANK, **settings)


def test_feasible_range_hand_checked():
    # (2 -> 3) at rank 1: A, B LoRA_1 = 1*(2+3) = 5 each, C LoRA_1 = 1*(2+1) = 3, D, E vectors = 3.
    assert feasible_range(1, [(2, 3)]) == (0, 5 + 5 + 3 + 3 + 3)
    # rank 2: (2 -> 3): 10 + 10 + 6 + 3 + 3 = 32; (4 -> 1): 10 + 10 + 2*(4+1) + 1 + 1 = 32.
    assert feasible_range(2, [(2, 3), (4, 1)]) == (0, 64)


def test_subnet_key_round_trip_and_json_friendly():
    subnet = random_candidate(random.Random(0), RANK, VIT_B, 0, 1_000_000)
    key = subnet_key(subnet)
    assert subnet_from_key(key) == subnet
    assert json.loads(json.dumps({key: 1})) == {key: 1}
    reordered = [dict(reversed(list(c.items()))) for c in subnet]
    assert subnet_key(reordered) == key  # independent of dict order


@pytest.mark.parametrize("shapes,min_p,max_p", [(VIT_B, 0, 290_000), (VIT_B, 400_000, 450_000),
                                                 (TINY, 0, 1_500), (TINY, 3_000, 3_010)])
def test_random_candidate_within_budget(shapes, min_p, max_p):
    rng, stats = random.Random(0), {}
    for _ in range(30):
        subnet = random_candidate(rng, RANK, shapes, min_p, max_p, stats=stats)
        assert [validate_choice(c, RANK) for c in subnet] == subnet
        assert min_p <= subnet_params(subnet, shapes) <= max_p


@pytest.mark.parametrize("sampling", ["exact", "repair"])
def test_tight_budget_reached_quickly(sampling):
    # Uniform draws at rank 4 on ViT-B hold 0.41-0.60 M; 0.29 M accepts ~1 in 20,000 of them.
    rng, stats = random.Random(1), {}
    subnets = [random_candidate(rng, RANK, VIT_B, 0, 290_000, sampling=sampling, stats=stats)
               for _ in range(50)]
    assert all(subnet_params(s, VIT_B) <= 290_000 for s in subnets)
    if sampling == "repair":
        assert stats["repaired"] + stats.get("constructed", 0) >= 45
    else:
        assert stats == {"exact": 50}


@pytest.mark.parametrize("sampling,stat", [("exact", "exact"), ("repair", "constructed")])
def test_exact_budget_is_reached(sampling, stat):
    # 960 = one C vector on a 768-input layer + all 192 constants of A, B, D, E: a single shape of
    # subnet, unreachable by uniform draws or by repair, reachable by exact sampling and by the
    # repair heuristic's exact construction.
    stats = {}
    subnet = random_candidate(random.Random(0), RANK, VIT_B, 960, 960, sampling=sampling, stats=stats)
    assert subnet_params(subnet, VIT_B) == 960 and stats[stat] == 1
    assert sum(c["C"] == "vector" for c in subnet) == 1
    assert all(c[s] == "constant" for c in subnet for s in "ABDE")


@pytest.mark.parametrize("min_p,max_p,expect", [
    (0, -1, "0 to 1,603,776 params"), (2_000_000, 3_000_000, "1.60378 M"),
    (500, 400, "infeasible"), (1_000, 1_000, "960 below, 1,536 above")])
def test_infeasible_budget_fails_fast(min_p, max_p, expect):
    with pytest.raises(BudgetError, match=expect):
        EvolutionSearch(synthetic_fitness, VIT_B, RANK, max_params=max_p, min_params=min_p)
    with pytest.raises(ValueError):  # BudgetError is a ValueError, for callers catching that
        check_budget(RANK, VIT_B, min_p, max_p)


def test_mutation_and_crossover_legal():
    rng = random.Random(0)
    parents = [random_candidate(rng, RANK, VIT_B, 0, 500_000) for _ in range(2)]
    kept = 0
    for _ in range(200):
        for child in (mutate(rng, parents[0], RANK, 0.2, VIT_B, 0, 500_000),
                      crossover(rng, *parents, VIT_B, 0, 500_000)):
            if child is None:
                continue
            kept += 1
            assert [validate_choice(c, RANK) for c in child] == child
            assert subnet_params(child, VIT_B) <= 500_000
    assert kept > 50
    for i, c in enumerate(crossover(rng, *parents, VIT_B, 0, 10**9)):
        # uniform crossover per gene: each support of each layer from one of the parents
        assert all(c[s] in (parents[0][i][s], parents[1][i][s]) for s in SUPPORTS)
    assert mutate(rng, parents[0], RANK, 0.0, VIT_B, 0, 10**9) == parents[0]


def test_search_respects_budget_and_never_reevaluates():
    evaluate = Recorder()
    search = small_search(evaluate, max_params=4_000, min_params=2_000)
    result = search.run()
    assert len(evaluate.calls) == len(set(evaluate.calls)) == result.num_evaluated
    assert all(2_000 <= subnet_params(subnet_from_key(k), TINY) <= 4_000 for k in evaluate.calls)
    assert result.generations == 5 and result.num_evaluated == 5 * 12
    assert search.stats["mutations"] > 0 and search.stats["crossovers"] > 0


def test_children_are_not_visited_subnets():
    search = small_search(Recorder())
    search.run()
    by_gen = {}
    for r in search.records:
        by_gen.setdefault(r["generation"], []).append(r["key"])
    seen = set()
    for g in sorted(by_gen):
        assert not seen & set(by_gen[g]) and len(set(by_gen[g])) == len(by_gen[g])
        seen |= set(by_gen[g])


def test_top_k_is_all_time_best_with_first_evaluated_tie_break():
    search = small_search(lambda s: float(len(subnet_key(s)) % 3))  # many ties
    result = search.run()
    ranked = sorted(range(len(search.records)), key=lambda i: (-search.records[i]["fitness"], i))
    assert [r["key"] for r in result.top_k] == [search.records[i]["key"] for i in ranked[:4]]


def test_determinism_from_seed():
    a, b, c = Recorder(), Recorder(), Recorder()
    ra, rb = small_search(a).run(), small_search(b).run()
    small_search(c, seed=4).run()
    assert a.calls == b.calls and ra == rb
    assert c.calls != a.calls


def test_resume_equals_uninterrupted():
    full = Recorder()
    states = []
    expected = small_search(full).run(
        on_generation=lambda state, info: states.append(json.loads(json.dumps(state))))
    assert [s["generation"] for s in states] == [1, 2, 3, 4, 5]
    for state in states[:3]:
        resumed = Recorder()
        search = small_search(resumed)
        search.load_state_dict(state)
        assert search.run() == expected
        assert resumed.calls == full.calls[len(state["evaluated"]):]


def test_resume_rejects_other_settings_but_may_extend_generations():
    states = []
    small_search(Recorder()).run(on_generation=lambda state, info: states.append(state))
    with pytest.raises(ValueError, match="max_params"):
        small_search(Recorder(), max_params=30_000).load_state_dict(states[-1])
    longer = small_search(Recorder(), max_epochs=6)
    longer.load_state_dict(states[-1])
    assert longer.run() == small_search(Recorder(), max_epochs=6).run()


def test_on_generation_info_and_history_records():
    infos = []
    result = small_search(Recorder()).run(on_generation=lambda state, info: infos.append(info))
    assert [i["generation"] for i in infos] == [0, 1, 2, 3, 4]
    assert sum(len(i["records"]) for i in infos) == infos[-1]["num_evaluated"]
    assert infos[-1]["best_fitness"] == result.fitness and infos[-1]["best_params"] == result.params
    record = infos[1]["records"][0]
    assert set(record) == {"key", "params", "fitness", "generation"} and record["generation"] == 1


def test_regression_original_last_generation_children_never_entered_top_k():
    # The original evaluated the last generation's children, then returned before ranking them.
    # With a fitness that grows with every call, the best subnet must be the very last evaluated.
    evaluate = Recorder(fn=lambda s: float(len(evaluate.calls)))
    result = small_search(evaluate).run()
    assert result.fitness == len(evaluate.calls)
    assert result.top_k[0]["generation"] == 4 and subnet_key(result.subnet) == evaluate.calls[-1]


def test_exhausted_space_stops_instead_of_hanging():
    # One layer with at most 1 param: all-none or one constant among A, B, D, E = 5 subnets.
    evaluate = Recorder()
    search = EvolutionSearch(evaluate, [(8, 8)], RANK, max_params=1, population_num=50)
    result = search.run()
    assert len(evaluate.calls) == len(set(evaluate.calls))
    assert result.num_evaluated == 5 and search.stats["exhausted_at_generation"] == 1


def test_invalid_settings_rejected():
    with pytest.raises(ValueError, match="m_prob"):
        small_search(Recorder(), m_prob=1.5)
    with pytest.raises(ValueError, match="select_num"):
        small_search(Recorder(), select_num=0)
    with pytest.raises(ValueError, match="rank"):
        EvolutionSearch(Recorder(), TINY, 0, max_params=1_000)
    with pytest.raises(ValueError, match="non-finite|nan"):
        small_search(lambda s: float("nan")).run()
    assert SUPPORTS == ("A", "B", "C", "D", "E")


def test_a_population_larger_than_the_space_terminates_with_what_it_reached():
    """Fails if a population of 1e8 over a budget that admits a handful of subnets spins (the refill
    drew up to 10 per place, a billion draws of the same few subnets)."""
    shapes = [(4, 4)]
    lo = hi = 8  # rank 1: A = LoRA_1 (8) or B = LoRA_1 (8) or A and B vector (4 + 4), D/E/C none, ...
    search = EvolutionSearch(lambda subnet: 1.0, shapes, 1, population_num=10**8, select_num=2, mutation_num=2,
                             crossover_num=2, max_epochs=1, max_params=hi, min_params=lo, seed=0)
    result = search.run()
    reached = result.num_evaluated
    assert 0 < reached < 1000 and len(search.candidates) <= reached
