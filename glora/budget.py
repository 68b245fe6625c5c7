"""The parameter budget of a search: which totals are feasible, and random subnets inside it.

Pure, like ``glora.search``: no model or torch; randomness from a seeded ``random.Random``. A
subnet's cost is ``space.subnet_params``; the budget is min <= params <= max.

The original drew uniform random subnets and rejected them until one fell inside the budget, with no
bound: endless for small budgets (at rank 4 on ViT-B a uniform subnet holds 0.41-0.60 M parameters,
so a 0.29 M limit accepts about 1 draw in 20,000). ``random_candidate`` draws from exactly that
distribution, uniform over every subnet within [min, max], with no rejection loop (``exact``, the
default): it counts the subnets per total by dynamic programming, draws a total, then the options
backwards. ``sampling="repair"`` keeps the earlier heuristic: ``plain_tries`` uniform draws, then the
last one repaired toward the budget (biased for tight budgets: at 0.29 M the C/D/E supports are
``none`` more often than under the original). ``check_budget`` reports an infeasible budget at
once, naming the achievable range (``BudgetError``).

Exact counting. A gene is one (layer, support); genes whose options have the same names and costs
(A and B of a layer; the same support of layers of the same shape) are exchangeable, so they form
one class (at most ``CLASS_GENES`` genes). Uniform subnets within the budget are drawn as: a total
t in [lo, hi] with probability proportional to its number of subnets; then, class by class from the
last, how many of its genes take each option (a composition, weighted by its arrangements times the
count of the earlier classes at the remaining total); then a uniform arrangement of those options
over the class's genes (``rng.shuffle``). Counts are exact integers, held by numpy as 60-bit limbs
(one row per class over the totals 0..hi); Python ints only where a draw reads them.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from typing import Mapping, Sequence

import numpy as np

from glora.errors import BudgetError
from glora.space import SUPPORTS, all_choices, option_params, sample_choice, search_space, support_options

__all__ = ["BudgetError", "PLAIN_TRIES", "SAMPLING", "feasible_range", "check_budget",
           "random_candidate"]

Subnet = list  # list of per-layer choice dicts, in injection order
PLAIN_TRIES = 10  # "repair" sampling: uniform draws before the repair
SAMPLING = ("exact", "repair")  # how random candidates are drawn; exact is the original's distribution
CLASS_GENES = 24  # genes per class at most: bounds the compositions a draw weighs (2,925 for 4 options)
_LIMB = 60  # bits per limb: 4 options add 4 limbs < 2**62, and int64 holds that before the carry


def _shapes(shapes: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    return tuple((int(i), int(o)) for i, o in shapes)


@functools.lru_cache(maxsize=16)
def _costs(rank: int, shapes: tuple) -> tuple[dict[str, dict[str, int]], ...]:
    # Per layer: support -> option -> params via space.option_params (one counting rule). Read-only.
    search_space(rank)  # validates rank
    return tuple({s: {o: option_params(s, o, i, out, rank) for o in support_options(s, rank)}
                  for s in SUPPORTS} for i, out in shapes)


def _total(subnet: Sequence[Mapping[str, str]], costs) -> int:
    return sum(layer[s][c[s]] for c, layer in zip(subnet, costs) for s in SUPPORTS)


def feasible_range(rank: int, shapes: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(fewest, most) params of any subnet: all supports 'none'; all at their largest option."""
    costs = _costs(rank, _shapes(shapes))
    return (sum(min(o.values()) for layer in costs for o in layer.values()),
            sum(max(o.values()) for layer in costs for o in layer.values()))


@functools.lru_cache(maxsize=2)
def _prefix_reach(rank: int, shapes: tuple, cap: int) -> tuple[int, ...]:
    # Bit t of prefix[i] is set iff layers[:i] can hold exactly t params (t <= cap). Python ints are
    # fast bitsets; convolving one support at a time costs ~17 shift-ORs per layer.
    mask, prefix = (1 << (cap + 1)) - 1, [1]
    for layer in _costs(rank, shapes):
        reach = prefix[-1]
        for opts in layer.values():
            acc = 0
            for c in set(opts.values()):
                acc |= reach << c
            reach = acc & mask
        prefix.append(reach)
    return tuple(prefix)


@functools.lru_cache(maxsize=64)
def _budget(rank: int, shapes: tuple, lo: int, hi: int) -> int | None:
    """Check [lo, hi]; return None when wide enough to be feasible, else the bitset cap to use."""
    least, most = feasible_range(rank, shapes)
    span = (f"achievable at rank {rank} over {len(shapes)} layers: {least:,} to {most:,} params "
            f"({least / 1e6:.6g} M to {most / 1e6:.6g} M)")
    asked = f"budget [{lo:,}, {hi:,}] params ({lo / 1e6:.6g} M to {hi / 1e6:.6g} M)"
    if lo > hi or hi < least or lo > most:
        raise BudgetError(f"infeasible {asked}; {span}")
    # Raising one support to its next dearer option adds at most `gap`, so achievable totals are
    # never further apart than `gap`: a window at least that wide always holds one.
    gap = max((b - a for layer in _costs(rank, shapes) for o in layer.values()
               for a, b in zip(sorted(o.values()), sorted(o.values())[1:])), default=1)
    lo, hi = max(lo, least), min(hi, most)
    if hi - lo + 1 >= gap:
        return None
    cap = min(most, hi + gap)  # room to name the nearest achievable total above the window
    reach = _prefix_reach(rank, shapes, cap)[-1]
    if (reach >> lo) & ((1 << (hi - lo + 1)) - 1):
        return cap
    below = (reach & ((1 << lo) - 1)).bit_length() - 1
    above = reach >> (hi + 1)
    above = hi + (above & -above).bit_length() if above else None
    raise BudgetError(f"no subnet fits the {asked}; nearest achievable: {below:,} below, "
                      f"{above if above is None else f'{above:,}'} above; {span}")


def check_budget(rank: int, shapes: Sequence[Sequence[int]], min_params: float,
                 max_params: float) -> tuple[int, int]:
    """Return the budget as integers (lo, hi), or raise BudgetError naming the achievable range."""
    lo, hi = math.ceil(min_params), math.floor(max_params)
    _budget(rank, _shapes(shapes), lo, hi)
    return lo, hi


def _repair(rng: random.Random, subnet: Subnet, costs, lo: int, hi: int) -> Subnet | None:
    # Move one random support at a time towards the budget, never past its far edge: the walk is
    # monotone (at most 3 moves per support) and fails only when the window is narrower than a step.
    total = _total(subnet, costs)

    def moves(i: int, s: str) -> list[str]:
        cur, opts = costs[i][s][subnet[i][s]], costs[i][s]
        if total > hi:
            return [o for o, c in opts.items() if c < cur and total - cur + c >= lo]
        return [o for o, c in opts.items() if c > cur and total - cur + c <= hi]

    while not lo <= total <= hi:
        for _ in range(32):  # rejection over positions: exact, and cheaper than a full scan
            i, s = rng.randrange(len(subnet)), rng.choice(SUPPORTS)
            if ok := moves(i, s):
                break
        else:
            valid = [(i, s, m) for i in range(len(subnet)) for s in SUPPORTS if (m := moves(i, s))]
            if not valid:
                return None
            i, s, ok = rng.choice(valid)
        option = rng.choice(ok)
        total += costs[i][s][option] - costs[i][s][subnet[i][s]]
        subnet[i][s] = option
    return subnet


def _construct(rng: random.Random, rank: int, shapes: tuple, lo: int, hi: int,
               cap: int | None) -> Subnet:
    # Exact fallback for windows narrower than one option step: pick an achievable total, then walk
    # the layers backwards choosing any choice that leaves a total the earlier layers can hold.
    cap = min(feasible_range(rank, shapes)[1], hi) if cap is None else cap
    lo, hi = max(lo, 0), min(hi, cap)
    prefix, costs = _prefix_reach(rank, shapes, cap), _costs(rank, shapes)
    window = bin((prefix[-1] >> lo) & ((1 << (hi - lo + 1)) - 1))[2:][::-1]
    target = lo + rng.choice([j for j, bit in enumerate(window) if bit == "1"])
    subnet: Subnet = [None] * len(shapes)
    for i in reversed(range(len(shapes))):
        bits = prefix[i].to_bytes(cap // 8 + 1, "little")
        fits = []
        for c in all_choices(rank):
            rest = target - _total([c], costs[i:i + 1])
            if 0 <= rest <= cap and bits[rest >> 3] >> (rest & 7) & 1:
                fits.append((c, rest))
        subnet[i], target = rng.choice(fits)
    return subnet


def _classes(costs) -> list[tuple[tuple[str, ...], tuple[int, ...], list]]:
    # Exchangeable genes grouped: (option names, option costs) -> [(layer, support), ...], in the
    # order first met; then cut into classes of at most CLASS_GENES genes.
    groups: dict[tuple, list] = {}
    for i, layer in enumerate(costs):
        for s in SUPPORTS:
            groups.setdefault((tuple(layer[s]), tuple(layer[s].values())), []).append((i, s))
    return [(names, values, genes[j:j + CLASS_GENES])
            for (names, values), genes in groups.items() for j in range(0, len(genes), CLASS_GENES)]


def _compositions(n: int, k: int):
    # Every (n_1, ..., n_k) of non-negative integers summing to n (stars and bars).
    for bars in itertools.combinations(range(n + k - 1), k - 1):
        edges = (-1,) + bars + (n + k - 1,)
        yield tuple(b - a - 1 for a, b in zip(edges, edges[1:]))


def _add_gene(row: np.ndarray, bound: int, values: tuple[int, ...], hi: int) -> np.ndarray:
    # row: (limbs, totals) exact counts; returns the counts with one more gene, totals <= hi. `bound`
    # (the number of subnets counted so far) sizes the limbs, so the top limb never overflows.
    width = min(hi + 1, row.shape[1] + max(values))
    new = np.zeros((bound.bit_length() // _LIMB + 1, width), dtype=np.int64)
    for c in values:
        n = min(width - c, row.shape[1])
        if n > 0:
            new[:row.shape[0], c:c + n] += row[:, :n]
    for limb in range(new.shape[0] - 1):  # carry: every limb back below 2**60
        new[limb + 1] += new[limb] >> _LIMB
        new[limb] &= (1 << _LIMB) - 1
    return new


def _ints(block: np.ndarray) -> list[int]:
    # (limbs, n) -> n exact Python ints.
    out = [0] * block.shape[1]
    for limb in reversed(range(block.shape[0])):
        out = [(a << _LIMB) | b for a, b in zip(out, block[limb].tolist())]
    return out


@functools.lru_cache(maxsize=1)
def _count_tables(rank: int, shapes: tuple, lo: int, hi: int) -> tuple[list[dict], list[int]]:
    # Per class: its genes, options, compositions (cost, arrangements) and the counts of the classes
    # before it; and the cumulative counts of the totals lo..hi. Memory ~ classes x limbs x 8 x hi.
    row, bound, steps = np.ones((1, 1), dtype=np.int64), 1, []
    for names, values, genes in _classes(_costs(rank, shapes)):
        comps = list(_compositions(len(genes), len(names)))
        steps.append(dict(names=names, genes=genes, comps=comps, before=row,
                          cost=np.array([sum(map(int.__mul__, c, values)) for c in comps], np.int64),
                          ways=[math.factorial(len(genes)) // math.prod(map(math.factorial, c))
                                for c in comps]))
        for _ in genes:
            bound *= len(values)
            row = _add_gene(row, bound, values, hi)
    return steps, list(itertools.accumulate(_ints(row[:, lo:hi + 1])))


def _pick(rng: random.Random, weights: list[int]) -> int:
    # Index j with probability weights[j] / sum(weights), exactly (one randrange of the sum).
    u = rng.randrange(sum(weights))
    for j, w in enumerate(weights):
        if u < w:
            return j
        u -= w
    raise AssertionError("unreachable")


def _exact(rng: random.Random, rank: int, shapes: tuple, lo: int, hi: int) -> Subnet:
    steps, cumulative = _count_tables(rank, shapes, lo, hi)
    rest = lo + bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))  # the total
    subnet: Subnet = [{} for _ in shapes]
    for step in reversed(steps):
        before, index = step["before"], rest - step["cost"]
        fits = np.flatnonzero((index >= 0) & (index < before.shape[1]))
        counts = _ints(before[:, index[fits]])
        j = int(fits[_pick(rng, [step["ways"][k] * n for k, n in zip(fits.tolist(), counts)])])
        rest -= int(step["cost"][j])
        options = [o for o, n in zip(step["names"], step["comps"][j]) for _ in range(n)]
        rng.shuffle(options)  # every arrangement of the multiset over the genes equally likely
        for (i, s), option in zip(step["genes"], options):
            subnet[i][s] = option
    assert rest == 0, rest
    return [{s: c[s] for s in SUPPORTS} for c in subnet]


def random_candidate(rng: random.Random, rank: int, shapes: Sequence[Sequence[int]],
                     min_params: float, max_params: float, *, sampling: str = "exact",
                     plain_tries: int = PLAIN_TRIES, stats: dict | None = None) -> Subnet:
    """A random subnet within the budget: uniform over all of them ("exact"), or "repair"."""
    shapes = _shapes(shapes)
    lo, hi = check_budget(rank, shapes, min_params, max_params)
    stats = stats if stats is not None else {}
    if sampling == "exact":
        stats["exact"] = stats.get("exact", 0) + 1
        return _exact(rng, rank, shapes, max(lo, 0), hi)
    if sampling != "repair":
        raise ValueError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLING)}")
    costs = _costs(rank, shapes)
    for _ in range(max(plain_tries, 1)):
        subnet = [sample_choice(rng, rank) for _ in shapes]
        if plain_tries > 0:
            stats["plain_draws"] = stats.get("plain_draws", 0) + 1
            if lo <= _total(subnet, costs) <= hi:
                stats["plain_accepted"] = stats.get("plain_accepted", 0) + 1
                return subnet
    if _repair(rng, subnet, costs, lo, hi) is not None:
        stats["repaired"] = stats.get("repaired", 0) + 1
        return subnet
    stats["constructed"] = stats.get("constructed", 0) + 1
    return _construct(rng, rank, shapes, lo, hi, _budget(rank, shapes, lo, hi))
