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
were unbounded rejection sampling, endless for small budgets; ``glora.budget.random_candidate``
draws uniformly over the subnets within the budget with no rejection loop (the original's
distribution; ``sampling="repair"`` keeps an earlier, biased heuristic), and ``BudgetError`` reports
an infeasible budget.
(3) Resume never loaded; here a run resumed from ``state_dict()`` (plain JSON) repeats an
uninterrupted one call for call. (4) Crossover parents are distinct.

State dict, exported after every generation::

    {"format": "glora-search/1", "generation": next generation to evaluate (= generations done),
     "config": {"shapes": [[in, out], ...], "rank", "population_num", "select_num", "mutation_num",
                "m_prob", "crossover_num", "max_epochs", "min_params", "max_params", "seed",
                "plain_tries", "sampling"},
     "candidates": [keys of the last generation], "top_k": [keys, best first],
     "evaluated": [{"key", "params", "fitness", "generation"}, ...]  (evaluation order; the memo),
     "stats": {name: count}, "rng_state": [version, [625 ints], gauss_next]}
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

# The budget half (feasible range, exact sampling, repair, random candidates) lives in
# glora.budget; its names are re-exported here, where callers have always found them.
from glora.budget import (PLAIN_TRIES, SAMPLING, BudgetError, Subnet, _shapes,  # noqa: F401
                          check_budget, feasible_range, random_candidate)
from glora.errors import CheckpointError, ConfigError
from glora.space import SUPPORTS, subnet_params, support_options

STATE_FORMAT = "glora-search/1"


class SearchStateError(CheckpointError, ValueError):
    """A search state of another format or other settings, or malformed (a ValueError as before)."""


STALL = 1000  # random draws in a row that found no new subnet before a refill stops short
STAT_KEYS = ("exact", "plain_draws", "plain_accepted", "repaired", "constructed", "mutation_tries",
             "mutations", "crossover_tries", "crossovers", "random_tries", "randoms", "duplicates")


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
                 plain_tries: int = PLAIN_TRIES, sampling: str = "exact"):
        counts = dict(population_num=population_num, select_num=select_num,
                      mutation_num=mutation_num, crossover_num=crossover_num,
                      max_epochs=max_epochs, plain_tries=plain_tries)
        bad = [f"{k}={v!r}" for k, v in counts.items() if not isinstance(v, int) or v < 0]
        bad += [f"{k}=0" for k in ("population_num", "select_num") if counts[k] == 0]
        bad += [] if 0 <= m_prob <= 1 else [f"m_prob={m_prob!r} (needs 0..1)"]
        bad += [] if sampling in SAMPLING else [f"sampling={sampling!r} (needs {' or '.join(SAMPLING)})"]
        bad += [] if shapes and all(min(s) > 0 for s in _shapes(shapes)) else [f"shapes={shapes!r}"]
        if bad:
            raise ConfigError(f"invalid search settings: {', '.join(bad)}")
        self.evaluate_fn = evaluate_fn
        self.config = dict(shapes=[list(s) for s in _shapes(shapes)], rank=rank, m_prob=m_prob,
                           min_params=min_params, max_params=max_params, seed=seed,
                           sampling=sampling, **counts)
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
        # The original looped until full; bounded here so a small, exhausted space cannot hang: at
        # most 10 draws per place, and it stops after STALL draws in a row that found nothing new
        # (a population larger than the space ends with the count it reached).
        cfg = self.config
        stalled = 0
        for _ in range(10 * cfg["population_num"]):
            if len(pending) >= cfg["population_num"] or stalled >= STALL:
                break
            child = random_candidate(self.rng, cfg["rank"], self._shapes, self._lo, self._hi,
                                     sampling=cfg["sampling"], plain_tries=cfg["plain_tries"],
                                     stats=self.stats)
            before = len(pending)
            self._offer(pending, child, "random")
            stalled = 0 if len(pending) > before else stalled + 1
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
        # States written before the exact sampler existed drew with the repair heuristic.
        saved = {"sampling": "repair", **saved}
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
