"""Evolutionary search over GLoRA subnets (step 2). Pure: candidates in, candidates out.

No model, data or torch: randomness comes from a seeded ``random.Random``, fitness from
``evaluate_fn(subnet) -> float`` (top-1 %, higher is better). A subnet is a list of per-layer choice
dicts (``glora.space``); its cost is ``space.subnet_params``; the budget is min <= params <= max.

As the original (AutoFormer's evolution in GLoRA): a random population within the budget; then per
generation ``mutation_num`` mutants of random all-time top-k parents (a gene is one support of one
layer, re-drawn uniformly with probability ``m_prob``), ``crossover_num`` uniform crossovers (each
gene from either parent) and random refills up to ``population_num``. A child outside the budget
or already visited is skipped, at most 10x the wanted count of attempts, as the original.
Fixed: (1) the last generation's children were evaluated but never ranked; here generations
0..max_epochs are all evaluated and ranked (the original's evaluations, none wasted). (2) Refills
were unbounded rejection sampling, endless for small budgets; ``random_candidate`` repairs or
constructs, reaching any feasible budget, and ``BudgetError`` reports an infeasible one at once.
(3) Resume never loaded; here a run resumed from ``state_dict()`` (plain JSON) repeats an
uninterrupted one call for call. (4) Crossover parents are distinct.

State dict, exported after every generation::

    {"format": "glora-search/1", "generation": next generation to evaluate (= generations done),
     "config": {"shapes": [[in, out], ...], "rank", "population_num", "select_num", "mutation_num",
                "m_prob", "crossover_num", "max_epochs", "min_params", "max_params", "seed",
                "plain_tries"},
     "candidates": [keys of the last generation], "top_k": [keys, best first],
     "evaluated": [{"key", "params", "fitness", "generation"}, ...]  (evaluation order; the memo),
     "stats": {name: count}, "rng_state": [version, [625 ints], gauss_next]}
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from glora.errors import BudgetError, CheckpointError, ConfigError
from glora.space import (SUPPORTS, all_choices, option_params, sample_choice, search_space,
                         subnet_params, support_options)

Subnet = list  # list of per-layer choice dicts, in injection order
STATE_FORMAT = "glora-search/1"
PLAIN_TRIES = 10  # uniform draws before repair: the original's distribution for loose budgets


class SearchStateError(CheckpointError, ValueError):
    """A search state of another format or other settings, or malformed (a ValueError as before)."""


STAT_KEYS = ("plain_draws", "plain_accepted", "repaired", "constructed", "mutation_tries",
             "mutations", "crossover_tries", "crossovers", "random_tries", "randoms", "duplicates")


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


def random_candidate(rng: random.Random, rank: int, shapes: Sequence[Sequence[int]],
                     min_params: float, max_params: float, *, plain_tries: int = PLAIN_TRIES,
                     stats: dict | None = None) -> Subnet:
    """A random subnet within the budget: uniform draws, else the last one repaired, else built."""
    shapes = _shapes(shapes)
    lo, hi = check_budget(rank, shapes, min_params, max_params)
    costs, stats = _costs(rank, shapes), stats if stats is not None else {}
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


def mutate(rng: random.Random, parent: Sequence[Mapping[str, str]], rank: int, m_prob: float,
           shapes: Sequence[Sequence[int]], min_params: float, max_params: float) -> Subnet | None:
    """Re-draw each (layer, support) gene on its own with probability m_prob; None when out of budget."""
    # As the original: for every layer, for A..E in order, one rng.random() and, only when it falls
    # below m_prob, a uniform option of that support (possibly the same one).
    child = []
    for choice in parent:
        gene = dict(choice)
        for support in SUPPORTS:
            if rng.random() < m_prob:
                gene[support] = rng.choice(support_options(support, rank))
        child.append(gene)
    return child if min_params <= subnet_params(child, shapes) <= max_params else None


def crossover(rng: random.Random, p1: Sequence[Mapping[str, str]],
              p2: Sequence[Mapping[str, str]], shapes: Sequence[Sequence[int]],
              min_params: float, max_params: float) -> Subnet | None:
    """Uniform crossover per gene: each (layer, support) from either parent; None when out of budget."""
    if len(p1) != len(p2):
        raise ValueError(f"parents have {len(p1)} and {len(p2)} layers")
    # As the original: one uniform pick per support of every layer, so a child can combine A from
    # one parent with B from the other inside a layer.
    child = [{s: rng.choice((a[s], b[s])) for s in SUPPORTS} for a, b in zip(p1, p2)]
    return child if min_params <= subnet_params(child, shapes) <= max_params else None


def subnet_key(subnet: Sequence[Mapping[str, str]]) -> str:
    """Stable string key: options in A..E order joined by ',', layers joined by '|'."""
    return "|".join(",".join(c[s] for s in SUPPORTS) for c in subnet)


def subnet_from_key(key: str) -> Subnet:
    """Inverse of ``subnet_key``."""
    return [dict(zip(SUPPORTS, layer.split(","))) for layer in key.split("|")] if key else []


@dataclass
class SearchResult:
    """The best subnet, and the all-time top-k (best first): records with a "subnet" added."""
    subnet: Subnet
    fitness: float
    params: int
    top_k: list[dict]
    num_evaluated: int
    generations: int
    stats: dict


class EvolutionSearch:
    """Resumable evolutionary search; the module docstring gives the algorithm and state format."""

    def __init__(self, evaluate_fn: Callable[[Subnet], float], shapes: Sequence[Sequence[int]],
                 rank: int, *, population_num: int = 50, select_num: int = 10,
                 mutation_num: int = 25, m_prob: float = 0.2, crossover_num: int = 25,
                 max_epochs: int = 20, max_params: float, min_params: float = 0, seed: int = 1,
                 plain_tries: int = PLAIN_TRIES):
        counts = dict(population_num=population_num, select_num=select_num,
                      mutation_num=mutation_num, crossover_num=crossover_num,
                      max_epochs=max_epochs, plain_tries=plain_tries)
        bad = [f"{k}={v!r}" for k, v in counts.items() if not isinstance(v, int) or v < 0]
        bad += [f"{k}=0" for k in ("population_num", "select_num") if counts[k] == 0]
        bad += [] if 0 <= m_prob <= 1 else [f"m_prob={m_prob!r} (needs 0..1)"]
        bad += [] if shapes and all(min(s) > 0 for s in _shapes(shapes)) else [f"shapes={shapes!r}"]
        if bad:
            raise ConfigError(f"invalid search settings: {', '.join(bad)}")
        self.evaluate_fn = evaluate_fn
        self.config = dict(shapes=[list(s) for s in _shapes(shapes)], rank=rank, m_prob=m_prob,
                           min_params=min_params, max_params=max_params, seed=seed, **counts)
        self._shapes = _shapes(shapes)
        self._lo, self._hi = check_budget(rank, self._shapes, min_params, max_params)
        self.rng = random.Random(seed)
        self.generation = 0  # next generation to evaluate; 0 is the random population
        self.candidates: list[str] = []  # keys of the last evaluated generation
        self.top_k: list[str] = []  # all-time best keys, best first
        self.records: list[dict] = []  # every evaluation: key, params, fitness, generation
        self.memo: dict[str, int] = {}  # key -> index in records; visited keys are never re-run
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    def run(self, on_generation: Callable[[dict, dict], None] | None = None) -> SearchResult:
        """Evaluate generations 0..max_epochs (continuing a loaded state); return the best found."""
        cfg = self.config
        while self.generation <= cfg["max_epochs"]:
            g = self.generation
            pending = self._refill({}) if g == 0 else self._breed()
            if not pending:  # every subnet within the budget has been visited
                self.stats["exhausted_at_generation"] = g
                break
            start = len(self.records)
            for key, subnet in pending.items():
                self._evaluate(key, subnet, g)
            self.candidates = list(pending)
            self.top_k = sorted(self.top_k + self.candidates, key=self._rank)[:cfg["select_num"]]
            self.generation = g + 1
            if on_generation is not None:
                best = self.records[self.memo[self.top_k[0]]]
                on_generation(self.state_dict(), dict(
                    generation=g, best_fitness=best["fitness"], best_params=best["params"],
                    best_key=best["key"], num_evaluated=len(self.records),
                    records=[dict(r) for r in self.records[start:]], stats=dict(self.stats)))
        return self.result()

    def _rank(self, key: str) -> tuple[float, int]:
        # Best fitness first; ties go to the first evaluated, so the order is deterministic.
        return -self.records[self.memo[key]]["fitness"], self.memo[key]

    def _evaluate(self, key: str, subnet: Subnet, generation: int) -> None:
        fitness = float(self.evaluate_fn([dict(c) for c in subnet]))
        if not math.isfinite(fitness):
            raise ValueError(f"evaluate_fn returned {fitness} for subnet {key}")
        params = subnet_params(subnet, self._shapes)
        self.memo[key] = len(self.records)
        self.records.append(dict(key=key, params=params, fitness=fitness, generation=generation))

    def _offer(self, pending: dict, child: Subnet | None, kind: str) -> None:
        self.stats[f"{kind}_tries"] += 1
        if child is None:
            return
        key = subnet_key(child)
        if key in self.memo or key in pending:  # visited subnets are not legal children
            self.stats["duplicates"] += 1
            return
        pending[key] = child
        self.stats[f"{kind}s"] += 1

    def _breed(self) -> dict[str, Subnet]:
        cfg, rng, lo, hi = self.config, self.rng, self._lo, self._hi
        parents = [subnet_from_key(k) for k in self.top_k]
        pending: dict[str, Subnet] = {}
        for _ in range(10 * cfg["mutation_num"]):
            if len(pending) >= cfg["mutation_num"]:
                break
            self._offer(pending, mutate(rng, rng.choice(parents), cfg["rank"], cfg["m_prob"],
                                        self._shapes, lo, hi), "mutation")
        wanted = len(pending) + cfg["crossover_num"]
        for _ in range(10 * cfg["crossover_num"] if len(parents) > 1 else 0):
            if len(pending) >= wanted:
                break
            self._offer(pending, crossover(rng, *rng.sample(parents, 2), self._shapes, lo, hi),
                        "crossover")
        return self._refill(pending)

    def _refill(self, pending: dict[str, Subnet]) -> dict[str, Subnet]:
        # The original looped until full; bounded here so a small, exhausted space cannot hang.
        cfg = self.config
        for _ in range(10 * cfg["population_num"]):
            if len(pending) >= cfg["population_num"]:
                break
            child = random_candidate(self.rng, cfg["rank"], self._shapes, self._lo, self._hi,
                                     plain_tries=cfg["plain_tries"], stats=self.stats)
            self._offer(pending, child, "random")
        return pending

    def result(self) -> SearchResult:
        """The best subnet and the top-k so far."""
        if not self.top_k:
            raise RuntimeError("no subnet has been evaluated yet")
        top = [dict(self.records[self.memo[k]], subnet=subnet_from_key(k)) for k in self.top_k]
        return SearchResult(subnet=top[0]["subnet"], fitness=top[0]["fitness"],
                            params=top[0]["params"], top_k=top, num_evaluated=len(self.records),
                            generations=self.generation, stats=dict(self.stats))

    def state_dict(self) -> dict:
        """The whole search state as plain JSON-serialisable values."""
        version, internal, gauss = self.rng.getstate()
        return {"format": STATE_FORMAT, "generation": self.generation,
                "config": dict(self.config, shapes=[list(s) for s in self._shapes]),
                "candidates": list(self.candidates), "top_k": list(self.top_k),
                "evaluated": [dict(r) for r in self.records],
                "stats": dict(self.stats), "rng_state": [version, list(internal), gauss]}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state; settings must match except max_epochs (which may extend a search).

        Raises ``SearchStateError`` for another format, other settings or a malformed state.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise SearchStateError(f"not a {STATE_FORMAT!r} search state: {found!r}")
        saved = state.get("config") if isinstance(state.get("config"), Mapping) else {}
        diff = [f"{k} (saved {saved.get(k)!r}, now {v!r})" for k, v in self.config.items()
                if k != "max_epochs" and saved.get(k) != v]
        if diff:
            raise SearchStateError(f"search state was saved with different settings: {'; '.join(diff)}")
        try:
            generation = int(state["generation"])
            candidates, top_k = list(state["candidates"]), list(state["top_k"])
            records = [dict(r) for r in state["evaluated"]]
            memo = {r["key"]: i for i, r in enumerate(records)}
            stats = dict(state["stats"])
            version, internal, gauss = state["rng_state"]
            self.rng.setstate((version, tuple(internal), gauss))
        except (KeyError, TypeError, ValueError) as err:
            raise SearchStateError(f"malformed search state ({type(err).__name__}: {err})") from None
        if any(k not in memo for k in candidates + top_k):
            raise SearchStateError("malformed search state (candidates or top_k not among the evaluated)")
        self.generation, self.candidates, self.top_k = generation, candidates, top_k
        self.records, self.memo, self.stats = records, memo, stats
