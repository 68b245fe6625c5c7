"""Search candidate generation: plain uniform draws (the original) vs the budget-aware generator.

For each (shapes, budget): the acceptance rate of plain uniform draws (sampled, and exact from the
distribution of a uniform subnet's params) and the time per accepted candidate, next to
``glora.search.random_candidate`` (always within budget) with ``sampling="exact"`` (the default:
uniform over the subnets within the budget, no rejection loop) and ``"repair"`` (the earlier
heuristic): how its candidates were made, the time of the first candidate (exact: with the count
tables built) and of the next ones, and how often C, D and E are ``none``. Then the time to draw a
ViT-B/16 population of 50 at 0.29 M from scratch, and the search's own overhead: a full default
search (50/10/25/25, 20 generations) with a free evaluate_fn.
Pure Python (and numpy), CPU, no model. Run: python benchmarks/bench_search.py
"""
from __future__ import annotations

import argparse
import functools
import random
import statistics
import time

import numpy as np

from glora import budget
from glora.search import EvolutionSearch, feasible_range, random_candidate
from glora.space import (SUPPORTS, option_params, sample_choice, subnet_params,
                         support_options)

VIT_B = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12  # 12 blocks x qkv, proj, fc1, fc2
TINY = [(32, 96), (32, 32), (32, 128), (128, 32)] * 2  # depth 2, width 32
CASES = [("ViT-B/16", VIT_B, 0, 290_000), ("ViT-B/16", VIT_B, 0, 500_000),
         ("ViT-B/16", VIT_B, 0, 1_000_000), ("tiny d2 w32", TINY, 0, 1_000),
         ("tiny d2 w32", TINY, 2_000, 2_005)]


@functools.lru_cache(maxsize=4)
def uniform_distribution(rank: int, shapes: tuple) -> np.ndarray:
    """Exact distribution of a uniform subnet's params (support by support convolution)."""
    prob = np.zeros(feasible_range(rank, shapes)[1] + 1)
    prob[0] = 1.0
    for i, o in shapes:
        for s in SUPPORTS:
            opts = support_options(s, rank)
            new = np.zeros_like(prob)
            for opt in opts:
                c = option_params(s, opt, i, o, rank)
                new[c:] += prob[:len(prob) - c] / len(opts)
            prob = new
    return prob


def plain_draws(rng: random.Random, rank: int, shapes, lo: int, hi: int, n: int) -> dict:
    """The original's generator: uniform draws, kept when within the budget."""
    # Time per accepted candidate is reported as time per draw / exact P(accept), which stays
    # finite where no draw out of n is accepted.
    start, params = time.perf_counter(), []
    for _ in range(n):
        params.append(subnet_params([sample_choice(rng, rank) for _ in shapes], shapes))
    seconds = time.perf_counter() - start
    accepted = sum(lo <= p <= hi for p in params)
    return dict(accepted=accepted, rate=accepted / n, per_draw=seconds / n)


def budget_aware(rng: random.Random, rank: int, shapes, lo: int, hi: int, n: int,
                 sampling: str) -> dict:
    """glora.search.random_candidate: exact, or plain draws, then repair, then construction."""
    budget._count_tables.cache_clear()  # the first exact candidate builds the count tables
    stats, start = {}, time.perf_counter()
    subnets = [random_candidate(rng, rank, shapes, lo, hi, sampling=sampling, stats=stats)]
    first = time.perf_counter() - start
    subnets += [random_candidate(rng, rank, shapes, lo, hi, sampling=sampling, stats=stats)
                for _ in range(n - 1)]
    seconds = time.perf_counter() - start - first
    params = [subnet_params(s, shapes) for s in subnets]
    none = {s: sum(c[s] == "none" for sub in subnets for c in sub) / (n * len(shapes)) for s in "CDE"}
    return dict(rate=sum(lo <= p <= hi for p in params) / n, stats=stats, first=first,
                per=seconds / max(n - 1, 1), median=statistics.median(params), none=none)


def population_seconds(rank: int, shapes, hi: int, n: int = 50, seed: int = 1) -> float:
    """Time to draw a first population of n exact candidates, count tables built from scratch."""
    budget._count_tables.cache_clear()
    rng, start = random.Random(seed), time.perf_counter()
    for _ in range(n):
        random_candidate(rng, rank, shapes, 0, hi)
    return time.perf_counter() - start


def search_overhead(rank: int, shapes, hi: int, seed: int) -> dict:
    """A full default search with a free evaluate_fn: the time the search itself adds."""
    start = time.perf_counter()
    search = EvolutionSearch(lambda subnet: 0.0, shapes, rank, max_params=hi, seed=seed)
    result = search.run()
    return dict(seconds=time.perf_counter() - start, evaluated=result.num_evaluated, **search.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20_000, help="plain uniform draws per case")
    parser.add_argument("--candidates", type=int, default=200, help="budget-aware draws per case")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"rank {args.rank}, seed {args.seed}\n\nPlain uniform draws (the original generator), "
          f"{args.draws:,} per case:\n")
    print("| model | budget (params) | feasible | params of a uniform draw: 1 % / 50 % / 99 % | "
          "accepted | exact P(accept) | ms per accepted |\n|---|---|---|---|---|---|---|")
    aware = []
    for name, shapes, lo, hi in CASES:
        plain = plain_draws(random.Random(args.seed), args.rank, shapes, lo, hi, args.draws)
        dist, (least, most) = uniform_distribution(args.rank, tuple(shapes)), feasible_range(
            args.rank, shapes)
        exact = dist[max(lo, 0):hi + 1].sum()
        q01, q50, q99 = np.searchsorted(np.cumsum(dist), [0.01, 0.5, 0.99])
        print(f"| {name} | {lo:,} - {hi:,} | {least:,} - {most:,} | {q01:,} / {q50:,} / {q99:,} "
              f"| {plain['accepted']:,} ({100 * plain['rate']:.3f} %) | {exact:.3g} "
              f"(1 in {1 / exact:,.0f}) | {1e3 * plain['per_draw'] / exact:,.3g} |")
        for sampling in ("exact", "repair"):
            aware.append((name, lo, hi, sampling, budget_aware(
                random.Random(args.seed), args.rank, shapes, lo, hi, args.candidates, sampling)))
    print(f"\nBudget-aware generator (glora.search.random_candidate), {args.candidates} "
          "per case:\n")
    print("| model | budget (params) | sampling | in budget | exact / plain / repaired / constructed "
          "| first candidate (s) | ms per next candidate | median params | C / D / E none |"
          "\n|---|---|---|---|---|---|---|---|---|")
    for name, lo, hi, sampling, a in aware:
        st, none = a["stats"], a["none"]
        print(f"| {name} | {lo:,} - {hi:,} | {sampling} | {100 * a['rate']:.0f} % | "
              f"{st.get('exact', 0)} / {st.get('plain_accepted', 0)} / {st.get('repaired', 0)} / "
              f"{st.get('constructed', 0)} | {a['first']:.3g} | {1e3 * a['per']:.3g} | "
              f"{a['median']:,.0f} | {' / '.join(f'{100 * none[s]:.0f} %' for s in 'CDE')} |")
    seconds = population_seconds(args.rank, VIT_B, 290_000)
    print(f"\nA ViT-B/16 population of 50 exact candidates at 0.29 M, tables built from scratch: "
          f"{seconds:.2f} s")
    print("\nFull default search (population 50, select 10, 25 mutations, 25 crossovers, "
          "20 generations) with a free evaluate_fn, ViT-B/16 shapes:\n")
    print("| budget | search seconds | evaluated | mutations kept / tried | crossovers kept / "
          "tried | random refills | duplicates |\n|---|---|---|---|---|---|---|")
    for hi in (290_000, 500_000, 1_000_000):
        o = search_overhead(args.rank, VIT_B, hi, seed=1)
        print(f"| {hi:,} | {o['seconds']:.2f} | {o['evaluated']:,} | {o['mutations']} / "
              f"{o['mutation_tries']} | {o['crossovers']} / {o['crossover_tries']} | "
              f"{o['randoms']} | {o['duplicates']} |")


if __name__ == "__main__":
    main()
