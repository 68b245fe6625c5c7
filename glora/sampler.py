"""Choices parsed once into plans, and the seeded sampler that draws a subnet per forward."""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Mapping, NamedTuple, Sequence

from torch import nn

from glora.space import SUPPORTS, parse_option, support_options


class Plan(NamedTuple):
    """One choice with its options parsed once: ``(kind, k)`` per support, and the choice dict."""

    A: tuple[str, int]
    B: tuple[str, int]
    C: tuple[str, int]
    D: tuple[str, int]
    E: tuple[str, int]
    choice: dict


@lru_cache(maxsize=8192)
def _plan(options: tuple[str, ...], rank: int) -> Plan:
    # Parsed once per distinct (choice, rank); the hot path only looks plans up.
    parsed = [parse_option(s, option, rank) for s, option in zip(SUPPORTS, options)]
    return Plan(*parsed, choice=dict(zip(SUPPORTS, options)))


def plan_of(choice: Mapping[str, str], rank: int) -> Plan:
    """The parsed plan of a choice dict (raises ValueError on an invalid option)."""
    return _plan(tuple(choice[s] for s in SUPPORTS), rank)


class ChoiceSampler:
    """Seeded source of per-layer choices for supernet mode.

    It owns a private ``random.Random``, so neither Python's global ``random`` nor torch's RNG
    is touched, and its state can be checkpointed for an exact resume.

    Layers bound with :meth:`bind` (``set_subnet`` does it, in injection order) get their
    choices from one draw of the whole subnet, made when the first of them asks in a forward:
    layer after layer, 5 ``rng.choice`` calls each, exactly the stream of one :meth:`draw` per
    layer in injection order, but drawn straight into parsed plans.
    """

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self._layers: list = []  # bound layers, injection order
        self._slots: dict[int, int] = {}  # id(layer) -> its position among the bound layers
        self._pending: list[Plan | None] = []  # this forward's plans not yet taken, per layer
        self._options: dict[int, tuple] = {}  # rank -> the five option tuples (draw order)

    def draw(self, rank: int) -> dict:
        """A uniform choice from the default space of the given rank."""
        return dict(self._draw_plan(rank).choice)

    def _draw_plan(self, rank: int) -> Plan:
        options = self._options.get(rank)
        if options is None:
            options = self._options[rank] = tuple(support_options(s, rank) for s in SUPPORTS)
        choose = self.rng.choice  # as sample_choice: one rng.choice per support, in order
        return _plan(tuple(choose(opts) for opts in options), rank)

    def bind(self, layers: Sequence[nn.Module]) -> None:
        """Serve these GLoRA layers (in forward order) from one subnet draw per forward."""
        if [id(m) for m in layers] != [id(m) for m in self._layers]:
            self._layers, self._pending = list(layers), [None] * len(layers)
            self._slots = {id(layer): slot for slot, layer in enumerate(layers)}

    def next_plan(self, layer: nn.Module) -> Plan:
        """The plan GLoRA layer ``layer`` uses in this forward; a new subnet draw when none is pending."""
        slot = self._slots.get(id(layer))
        if slot is None or self._layers[slot] is not layer:
            return self._draw_plan(layer.rank)  # a layer this sampler does not serve in order
        plan = self._pending[slot]
        if plan is None:  # first layer of a new forward: draw every bound layer's plan
            self._pending = [self._draw_plan(m.rank) for m in self._layers]
            plan = self._pending[slot]
        self._pending[slot] = None
        return plan

    def state_dict(self) -> dict:
        """Plain-typed state (lists and ints) for a ``weights_only`` checkpoint."""
        version, internal, gauss = self.rng.getstate()
        state = {"version": version, "internal": list(internal), "gauss": gauss}
        if any(p is not None for p in self._pending):  # only mid-forward: draws not yet used
            state["pending"] = [None if p is None else dict(p.choice) for p in self._pending]
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state written by :meth:`state_dict`."""
        self.rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))
        pending = list(state.get("pending") or [])
        pending += [None] * (len(self._layers) - len(pending))
        self._pending = [None if c is None else plan_of(c, m.rank)
                         for c, m in zip(pending, self._layers)]
