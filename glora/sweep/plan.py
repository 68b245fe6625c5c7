"""The plan of a sweep: tasks x methods x budgets x seeds x protocols, and the flags of the two CLIs.

A plan comes from a YAML file and the command line (the command line wins, flag by flag) and is
checked once, before anything runs: unknown keys, tasks, methods, protocols and flags are one-line
errors. Flags are checked against the CLIs' own argparse parsers, so the sweep accepts exactly what
``glora.run.supernet`` and ``glora.run.evolution`` accept.
"""
from __future__ import annotations

import difflib
import json
import math
import shlex
from argparse import Action, ArgumentParser
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping


from glora.errors import ConfigError
from glora.run import evolution, supernet
from glora.run.config import find_config, shipped_names
from glora.run.yaml_files import load_yaml
from vtab.tasks import DataError, select_tasks

# method -> the flags that make its train job (None: the GLoRA search row, no train job).
TRAIN_METHODS: dict[str, list[str] | None] = {
    "glora": None,                 # supernet + search; the subnet keeps the supernet's weights
    "glora_retrain": ["--init-from"],  # the searched subnet retrained from the supernet's tensors
    "glora_fresh": [],             # the searched subnet retrained from a fresh init
    "lora": ["--subnet", "lora"],
    "linear_probe": ["--subnet", "linear_probe"],
    "bitfit": ["--subnet", "bitfit"],
    "ssf": ["--subnet", "ssf"],
    "full_finetune": ["--full-finetune"],
}
# `<baseline>_long`: the baseline trained for GLoRA's total epochs (supernet + retrain), so that it
# gets the same compute as GLoRA (the rule is `long_epochs`).
LONG = "_long"
GLORA_METHODS = ("glora", "glora_retrain", "glora_fresh")
BASELINES = tuple(m for m in TRAIN_METHODS if m not in GLORA_METHODS)
TRAIN_METHODS.update({m + LONG: TRAIN_METHODS[m] for m in BASELINES})
METHODS = tuple(TRAIN_METHODS)
PROTOCOLS = ("val", "retrain", "paper")
# Flag sections: which CLI parses them (args: both).
SECTIONS = {"args": ("supernet", "evolution"), "supernet_args": ("supernet",),
            "search_args": ("evolution",), "train_args": ("supernet",), "export_args": ("evolution",)}
LIST_KEYS = ("tasks", "methods", "budgets", "seeds", "protocols", "lr_grid")
PLAN_KEYS = ("runs", *LIST_KEYS, *SECTIONS, "method_args")
# Set by the sweep for every job: a plan must not set them.
OWNED = {"dataset": "tasks", "save_path": "runs", "load_path": "the job graph", "protocol": "protocols",
         "seed": "seeds", "param_limits": "budgets", "subnet": "methods", "full_finetune": "methods",
         "init_from": "methods", "resume": "the sweep (--resume auto)",
         "overwrite": "the sweep, which passes --resume auto; delete a job's folder to redo it"}
Flags = dict[str, "str | bool"]  # canonical option string -> value (True: a bare flag)


class PlanError(ConfigError):
    """A wrong plan: unknown key, task, method, protocol or flag (one line)."""


@dataclass
class Plan:
    """Everything a sweep runs, checked."""
    runs: Path = Path("runs/vtab")
    tasks: list[str] = field(default_factory=lambda: ["all"])
    methods: list[str] = field(default_factory=lambda: ["glora"])
    budgets: list[float] = field(default_factory=list)  # empty: evolution.py's --param-limits default
    seeds: list[int] = field(default_factory=list)  # empty: each CLI's own --seed default
    protocols: list[str] = field(default_factory=lambda: ["val"])
    lr_grid: list[float] = field(default_factory=list)  # empty: every train job keeps its --lr
    flags: dict[str, Flags] = field(default_factory=lambda: {s: {} for s in SECTIONS})
    method_flags: dict[str, Flags] = field(default_factory=dict)
    method_grids: dict[str, list[float]] = field(default_factory=dict)  # method_args' own lr_grid

    def grid(self, method: str) -> list[float]:
        """A method's lr grid: its own (method_args), its baseline's (a long variant), or lr_grid."""
        return self.method_grids.get(method) or self.method_grids.get(base_method(method)) or self.lr_grid

    def long_epochs(self) -> int:
        """GLoRA's total epochs: the supernet's plus one retrain's (the compute of `<method>_long`)."""
        def epochs(section: str) -> int:
            flags = {**self.flags["args"], **self.flags[section]}
            return int(flags.get("--epochs", _parser("supernet").get_default("epochs")))
        return epochs("supernet_args") + epochs("train_args")

    def train_flags(self, method: str) -> Flags:
        """The flags of a method's train jobs beyond train_args: its method_args (a long variant:
        its baseline's, then its own) and, for a long variant, the long schedule."""
        base = base_method(method)
        flags = {**self.method_flags.get(base, {}), **self.method_flags.get(method, {})}
        if method != base:
            epochs = str(self.long_epochs())
            flags["--epochs"] = epochs
            if "--eval-every" in {**self.flags["args"], **self.flags["train_args"]}:
                flags["--eval-every"] = epochs
        return flags


def base_method(method: str) -> str:
    """``lora_long`` -> ``lora``; any other method is its own base."""
    return method[:-len(LONG)] if method.endswith(LONG) and method[:-len(LONG)] in BASELINES else method

CLIS: dict[str, ModuleType] = {"supernet": supernet, "evolution": evolution}


def cli_module(name: str) -> ModuleType:
    """``supernet`` or ``evolution``: the step's command module in ``glora.run``."""
    return CLIS[name]


_PARSERS: dict[str, ArgumentParser] = {}


def _parser(name: str) -> ArgumentParser:
    if name not in _PARSERS:
        _PARSERS[name] = cli_module(name).get_args_parser()
    return _PARSERS[name]


def find_flag(key: str, clis: tuple[str, ...], where: str) -> tuple[str, Action]:
    """The canonical option string and action of ``key`` (``epochs``, ``--m_prob``, ``warmup_epochs``)."""
    bare = str(key).lstrip("-")
    spellings = [f"--{bare}", f"--{bare.replace('_', '-')}", f"--{bare.replace('-', '_')}"]
    found = None
    for cli in clis:
        options = _parser(cli)._option_string_actions
        action = next((options[s] for s in spellings if s in options), None)
        if action is None:
            known = [o for o in options if o.startswith("--")]
            near = difflib.get_close_matches(spellings[0], known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise PlanError(f"{where}: --{bare} is not a flag of {cli}.py{hint}")
        found = found or action
    if found.dest in OWNED:
        raise PlanError(f"{where}: --{bare} is set by the sweep for every job (from {OWNED[found.dest]})")
    return next(o for o in found.option_strings if o.startswith("--")), found


def flag_value(action: Action, option: str, value: Any, where: str) -> str | bool | None:
    """A YAML or command-line value as the CLI will read it; None: leave the flag out."""
    if action.nargs == 0:  # store_true / store_false: present or not
        if value in (True, False, None):
            return True if value else None
        raise PlanError(f"{where}: {option} takes no value (true or false), got {value!r}")
    if value is None:
        return None
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if action.type is not None:
        try:
            typed = action.type(text)
        except Exception:  # noqa: BLE001 - argparse's own types raise ValueError or TypeError
            raise PlanError(f"{where}: {option}: {value!r} is not a valid {action.type.__name__}") from None
        if action.choices is not None and typed not in action.choices:
            raise PlanError(f"{where}: {option}: {value!r} is not one of {list(action.choices)}")
    return text


def check_flags(mapping: Any, clis: tuple[str, ...], where: str) -> Flags:
    """A mapping of flag -> value checked against the CLIs' parsers."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise PlanError(f"{where}: expected a mapping of flag: value, got {mapping!r}")
    flags: Flags = {}
    for key, value in mapping.items():
        option, action = find_flag(key, clis, where)
        checked = flag_value(action, option, value, where)
        if checked is None:
            flags.pop(option, None)
        else:
            flags[option] = checked
    return flags


def parse_flag_string(text: str, clis: tuple[str, ...], where: str) -> dict[str, Any]:
    """``"--epochs 3 --no-progress"`` -> ``{"--epochs": "3", "--no-progress": True}``."""
    tokens, out, i = shlex.split(text), {}, 0
    while i < len(tokens):
        key, eq, value = tokens[i].partition("=")
        if not key.startswith("--"):
            raise PlanError(f"{where}: expected a --flag, got {tokens[i]!r}")
        option, action = find_flag(key, clis, where)
        if action.nargs == 0:
            out[option] = True
        elif eq:
            out[option] = value
        elif i + 1 < len(tokens):
            out[option], i = tokens[i + 1], i + 1
        else:
            raise PlanError(f"{where}: {option} needs a value")
        i += 1
    return out


def as_list(value: Any) -> list:
    """A YAML list, or a scalar / space- or comma-separated string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return str(value).replace(",", " ").split()


def _choose(values: list, valid: tuple[str, ...], what: str) -> list[str]:
    for v in values:
        if v not in valid:
            near = difflib.get_close_matches(str(v), valid, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise PlanError(f"unknown {what} {v!r}; {hint}{what}s: {', '.join(valid)}")
    return list(dict.fromkeys(values))


def _numbers(values: list, kind: type, what: str, ok) -> list:
    out = []
    for v in values:
        try:
            number = kind(v)
        except (TypeError, ValueError):
            number = None
        if number is None or not ok(number) or (kind is int and str(v).strip() != str(number)):
            kind_text = "non-negative integer" if kind is int else "finite positive number" + (" (M)" if what == "budget" else "")
            raise PlanError(f"{what} {v!r} is not a {kind_text}")
        out.append(number)
    return list(dict.fromkeys(out))


def budget_text(budget: float) -> str:
    """A budget as written into folder names and --param-limits: short (``0.5``, ``1``) where that
    is exact, else every digit (``1.0000001``), so two budgets never share a job."""
    short = f"{budget:g}"
    return short if float(short) == budget else repr(budget)


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """The YAML plan (a file, or a shipped plan's name: ``demo``) as a mapping; unknown keys are errors."""
    found = find_config(path)
    if found is None:
        raise PlanError(f"plan file not found: {path} (nor a shipped plan: {', '.join(shipped_names())})")
    path = found
    raw = load_yaml(path) or {}  # a YAML error or an alias bomb: one line naming the file
    if not isinstance(raw, dict):
        raise PlanError(f"{path} must hold a mapping (runs, tasks, methods, ...)")
    for key in raw:
        if key not in PLAN_KEYS:
            near = difflib.get_close_matches(str(key), PLAN_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise PlanError(f"{path}: unknown key {key!r}{hint}; valid keys: {', '.join(PLAN_KEYS)}")
    return raw


def build_plan(raw: Mapping[str, Any], source: str = "plan") -> Plan:
    """Check a raw plan (file values already overridden by the command line) into a Plan."""
    plan = Plan()
    if raw.get("runs"):
        plan.runs = Path(str(raw["runs"]))
    try:
        plan.tasks = select_tasks([str(t) for t in as_list(raw.get("tasks", plan.tasks))])
    except DataError as err:
        raise PlanError(str(err)) from None
    plan.methods = _choose(as_list(raw.get("methods", plan.methods)), METHODS, "method")
    plan.protocols = _choose(as_list(raw.get("protocols", plan.protocols)), PROTOCOLS, "protocol")
    plan.seeds = _numbers(as_list(raw.get("seeds")), int, "seed", lambda s: s >= 0)
    plan.lr_grid = _numbers(as_list(raw.get("lr_grid")), float, "lr_grid value", lambda v: math.isfinite(v) and v > 0)
    plan.budgets = _numbers(as_list(raw.get("budgets")), float, "budget", lambda b: math.isfinite(b) and b > 0) or \
        [_parser("evolution").get_default("param_limits")]
    for what in ("tasks", "methods", "protocols"):
        if not getattr(plan, what):
            raise PlanError(f"{source}: no {what} given")
    plan.flags = {s: check_flags(raw.get(s), clis, f"{source}: {s}") for s, clis in SECTIONS.items()}
    per_method = raw.get("method_args") or {}
    if not isinstance(per_method, Mapping):
        raise PlanError(f"{source}: method_args: expected method: {{flag: value}}")
    for method, mapping in per_method.items():
        _choose([method], tuple(m for m in METHODS if m != "glora"), "method_args method")
        mapping = dict(mapping) if isinstance(mapping, Mapping) else mapping
        if isinstance(mapping, dict) and "lr_grid" in mapping:  # a grid of the method's own scale
            where = f"{source}: method_args: {method}: lr_grid value"
            plan.method_grids[method] = _numbers(as_list(mapping.pop("lr_grid")), float, where, lambda v: v > 0)
        plan.method_flags[method] = check_flags(mapping, ("supernet",), f"{source}: method_args: {method}")
    return plan


def merge(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The plan file's values with the command line's on top (flag sections merge flag by flag)."""
    out = dict(raw)
    for key, value in overrides.items():
        if key in SECTIONS:
            base = check_flags(raw.get(key), SECTIONS[key], f"plan: {key}")
            out[key] = {**base, **value}
        else:
            out[key] = value
    return out
