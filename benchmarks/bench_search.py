"""Search candidate generation: plain uniform draws (the original) vs the budget-aware generator.

For each (shapes, budget): the acceptance rate of plain uniform draws (sampled, and exact from the
distribution of a uniform subnet's params) and the time per accepted candidate, next to
``glora.search.random_candidate`` (always within budget), how its candidates were made (plain /
repaired / constructed) and its time per candidate. Then the search's own
overhead: a full default search (50/10/25/25, 20 generations) with a free evaluate_fn.
Pure Python, CPU, no model. Run: python benchmarks/bench_search.py
"""
from __future__ import annotations

import argparse
import functools
import random
import statistics
import time

import numpy as np

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


def budget_aware(rng: random.Random, rank: int, shapes, lo: int, hi: int, n: int) -> dict:
    """glora.search.random_candidate: plain draws, then repair, then exact construction."""
    stats, start = {}, time.perf_counter()
    params = [subnet_params(random_candidate(rng, rank, shapes, lo, hi, stats=stats), shapes)
              for _ in range(n)]
    seconds = time.perf_counter() - start
    return dict(rate=sum(lo <= p <= hi for p in params) / n, stats=stats, per=seconds / n,
                median=statistics.median(params))


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
        aware.append(budget_aware(random.Random(args.seed), args.rank, shapes, lo, hi,
                                  args.candidates))
    print(f"\nBudget-aware generator (glora.search.random_candidate), {args.candidates} "
          "per case:\n")
    print("| model | budget (params) | in budget | plain / repaired / constructed | "
          "ms per candidate | median params |\n|---|---|---|---|---|---|")
    for (name, _, lo, hi), a in zip(CASES, aware):
        st = a["stats"]
        print(f"| {name} | {lo:,} - {hi:,} | {100 * a['rate']:.0f} % | "
              f"{st.get('plain_accepted', 0)} / {st.get('repaired', 0)} / "
              f"{st.get('constructed', 0)} | {1e3 * a['per']:.3g} | {a['median']:,.0f} |")
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
