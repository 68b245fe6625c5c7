"""A plan expanded into jobs: each job is one call of ``glora.run.supernet`` or ``glora.run.evolution``.

Output tree (``S``: a seed; without --seeds that level is left out and each CLI keeps its default):

    RUNS/<task>/seed<S>/val/supernet/             GLoRA supernet (shared by `val` and `retrain`)
    RUNS/<task>/seed<S>/val/glora_<B>M/           its search under budget B: the GLoRA row
    RUNS/<task>/seed<S>/paper/supernet/, paper/glora_<B>M/     the same under `paper`
    RUNS/<task>/seed<S>/<protocol>/<method>/train/             a baseline trained (supernet.py)
    RUNS/<task>/seed<S>/<protocol>/<method>/                   ... exported and tested (evolution.py)
    RUNS/<task>/seed<S>/<protocol>/glora_retrain_<B>M/train/   the searched subnet retrained, and
    RUNS/<task>/seed<S>/<protocol>/glora_retrain_<B>M/         exported (glora_fresh_<B>M likewise)

Every job's log is its output folder's name + ``.log`` (``val/supernet.log``, ``lora/train.log``).
`val` and `retrain` share the supernet and the search (both train on train800 and score on val200;
nothing is retrained for the GLoRA row), so they run once, under `val`.

With an ``lr_grid``, every trained row (baselines, their ``_long`` variants, GLoRA retrained; not the
supernet) runs once per lr under `val` and `paper`, in ``<row>_lr<LR>/``; the report keeps the lr
with the best search-split accuracy. Under `retrain` the row runs once, in ``<row>/``: its train job
waits for the `val` grid of the same row and takes the lr that won on val200 there (``glora.sweep.pick``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import glora
from glora.sweep.chain import check_inputs
from glora.sweep.pick import chosen_lr, pick_command
from glora.sweep.plan import GLORA_METHODS, TRAIN_METHODS, Plan, base_method, budget_text, cli_module

KINDS = ("supernet", "search", "train", "export")
SCRIPTS = {"supernet": "supernet", "search": "evolution", "train": "supernet", "export": "evolution"}
# States: waiting -> running -> done | failed | interrupted; skipped: a dependency did not finish;
# unneeded: not finished, but everything that needs it is; queued: in Slurm's queue from an earlier sweep.
STATES = ("done", "running", "queued", "failed", "interrupted", "skipped", "waiting", "unneeded")
# Where this process imports glora from (a checkout or site-packages): jobs import the same code.
IMPORT_ROOT = Path(glora.__file__).resolve().parents[1]


def job_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` with :data:`IMPORT_ROOT` first on ``PYTHONPATH``, so a job runs this very package."""
    rest = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": str(IMPORT_ROOT) + (os.pathsep + rest if rest else "")}


@dataclass
class Job:
    """One CLI call, with its place in the graph and its state in this sweep."""
    name: str                 # its output folder relative to RUNS: unique
    kind: str                 # supernet | search | train | export
    argv: list[str]
    out: Path
    task: str
    seed: int | None
    protocol: str
    method: str | None = None
    deps: list[str] = field(default_factory=list)
    state: str = "waiting"
    note: str = ""            # why it is in its state (already finished, exit code, ...)
    pick: dict[float, Path] = field(default_factory=dict)  # lr -> the val run that scores it

    def resolved_argv(self) -> list[str] | None:
        """The argv with the picked ``--lr`` (a job with ``pick``; None until every candidate has
        finished), or the argv itself."""
        if not self.pick:
            return self.argv
        lr = chosen_lr(self.pick)
        return None if lr is None else [*self.argv, "--lr", f"{lr:g}"]

    @property
    def script(self) -> str:
        return SCRIPTS[self.kind]

    @property
    def log(self) -> Path:
        return self.out.with_name(self.out.name + ".log")

    def command(self) -> list[str]:
        """The command line: the same interpreter, the step's module (a job with ``pick`` through
        ``python -m glora.sweep.pick``, which adds the lr that won on val200)."""
        step = [sys.executable, "-m", f"glora.run.{self.script}"]
        return pick_command(self.pick, step, self.argv) if self.pick else [*step, *self.argv]


def _flags(*sections: dict) -> list[str]:
    """Flag sections merged (a later one overrides an earlier one's flag), as argv."""
    merged = {option: value for flags in sections for option, value in flags.items()}
    return [a for option, value in merged.items() for a in ([option] if value is True else [option, str(value)])]


class _Builder:
    """Adds jobs once each (the supernet and search are shared by several rows)."""

    def __init__(self, plan: Plan):
        self.plan, self.jobs, self.targets = plan, {}, []

    def add(self, kind: str, out: Path, task: str, seed, protocol: str, extra: list[str],
            deps: list[Job], method: str | None = None, last: dict | None = None) -> Job:
        name = out.relative_to(self.plan.runs).as_posix()
        if name not in self.jobs:
            section = {"supernet": "supernet_args", "search": "search_args", "train": "train_args",
                       "export": "export_args"}[kind]
            own = ["--dataset", task, "--protocol", protocol, "--save_path", str(out), "--resume", "auto"]
            own += ["--seed", str(seed)] if seed is not None else []
            flags = _flags(self.plan.flags["args"], self.plan.flags[section],
                           self.plan.train_flags(method) if kind == "train" else {}, last or {})
            self.jobs[name] = Job(name, kind, own + extra + flags, out, task, seed, protocol, method,
                                  [d.name for d in deps])
        return self.jobs[name]

    def glora(self, base: Path, task: str, seed, protocol: str, budget: float) -> tuple[Job, Job]:
        shared = "paper" if protocol == "paper" else "val"
        supernet = self.add("supernet", base / shared / "supernet", task, seed, shared, [], [], "glora")
        search = self.add("search", base / shared / f"glora_{budget_text(budget)}M", task, seed, shared,
                          ["--load_path", str(supernet.out), "--param-limits", budget_text(budget)], [supernet],
                          "glora")
        return supernet, search

    def trained_rows(self, base: Path, task: str, seed, protocol: str, method: str,
                     budget: float | None) -> list[Job]:
        """The export jobs of one trained row: one per lr of the grid (none: one), or under
        `retrain` with a grid, one whose lr is picked from the `val` grid."""
        grid = self.plan.grid(method)
        if not grid:
            return [self.trained(base, task, seed, protocol, method, budget)]
        if protocol != "retrain":
            return [self.trained(base, task, seed, protocol, method, budget, lr) for lr in grid]
        candidates = {lr: self.trained(base, task, seed, "val", method, budget, lr) for lr in grid}
        return [self.trained(base, task, seed, protocol, method, budget, picked_from=candidates)]

    def trained(self, base: Path, task: str, seed, protocol: str, method: str, budget: float | None,
                lr: float | None = None, picked_from: dict[float, Job] | None = None) -> Job:
        name = method if budget is None else f"{method}_{budget_text(budget)}M"
        folder = base / protocol / (name if lr is None else f"{name}_lr{lr:g}")
        extra, deps = list(TRAIN_METHODS[base_method(method)]), list((picked_from or {}).values())
        if method in GLORA_METHODS:
            supernet, search = self.glora(base, task, seed, protocol, budget)
            extra = ["--subnet", str(search.out / "subnet.yaml")]
            deps.append(search)
            if method == "glora_retrain":
                extra += ["--init-from", str(supernet.out)]
                deps.append(supernet)
        last = {} if lr is None else {"--lr": f"{lr:g}"}  # the grid's lr beats method_args' lr
        train = self.add("train", folder / "train", task, seed, protocol, extra, deps, method, last)
        if picked_from:
            train.pick = {lr: job.out for lr, job in picked_from.items()}
        return self.add("export", folder, task, seed, protocol, ["--load_path", str(train.out)], [train], method)


def build_jobs(plan: Plan) -> tuple[dict[str, Job], list[str]]:
    """All jobs of a plan (name -> Job, in run order) and the targets (jobs that give a table row)."""
    b = _Builder(plan)
    for task in plan.tasks:
        for seed in plan.seeds or [None]:
            base = plan.runs / task / (f"seed{seed}" if seed is not None else "")
            for protocol in plan.protocols:
                for method in plan.methods:
                    if method == "glora":
                        b.targets += [b.glora(base, task, seed, protocol, budget)[1].name for budget in plan.budgets]
                    else:
                        budgets = plan.budgets if method in GLORA_METHODS else [None]
                        b.targets += [job.name for budget in budgets
                                      for job in b.trained_rows(base, task, seed, protocol, method, budget)]
    order = sorted(b.jobs.values(), key=lambda j: KINDS.index(j.kind))  # stable: plan order per kind
    return {j.name: j for j in order}, list(dict.fromkeys(b.targets))


def finished(job: Job) -> str | None:
    """The CLI's own answer (``completed``, what ``--resume auto`` checks): a line if done, once the
    output is also checked against what it was made from (StaleError if that changed)."""
    argv = job.resolved_argv()
    if argv is None:  # its lr is not picked yet: it cannot have run
        return None
    module = cli_module(job.script)
    settings = module.settings_from(argv)
    note = module.completed(settings)
    if note:
        check_inputs(job.script, settings)
    return note


def in_use_by(job: Job) -> str | None:
    """The pid of a run holding the job's output folder (its CLI's own lock), or None."""
    module = cli_module(job.script)
    return module.output_folder(module.settings_from(job.argv)).holder()


def has_outputs(job: Job) -> bool:
    """Does the job's folder hold any output of its CLI (finished or not)?"""
    module = cli_module(job.script)
    return bool(module.output_folder(module.settings_from(job.argv)).held_outputs())


def mark_finished(jobs: dict[str, Job], targets: list[str]) -> None:
    """Mark finished jobs done, then jobs that nothing unfinished needs as unneeded."""
    notes: dict[str, str] = {}
    for job in jobs.values():
        try:
            note = finished(job)
        except SystemExit as err:  # the CLI's own one-line refusal (e.g. a bad --config file)
            job.state, job.note = "failed", str(err.code)
            continue
        except Exception as err:  # noqa: BLE001 - e.g. "finished with other settings": a job failure
            job.state, job.note = "failed", f"{type(err).__name__}: {err}"
            continue
        if note:
            notes[job.name] = note
    # Not done while an input is still to be finished over what it holds (or failed): once it is
    # finished, the output is checked against it (finished() raises StaleError if it changed). An
    # input that is simply gone (deleted to save space) is not made again for it. Inputs are
    # settled first, whatever order the jobs come in (a retrain's inputs are exports).
    settled = True
    while settled:
        settled = False
        for job in jobs.values():
            if job.state == "waiting" and job.name in notes and \
                    not any(jobs[d].state != "done" and has_outputs(jobs[d]) for d in job.deps):
                job.state, job.note, settled = "done", notes[job.name], True
    needed: set[str] = set()
    stack = [t for t in targets if jobs[t].state != "done"]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack += [d for d in jobs[name].deps if jobs[d].state != "done"]
    for job in jobs.values():
        if job.state == "waiting" and job.name not in needed:
            job.state, job.note = "unneeded", "everything that needs it is finished"
