"""``python -m glora.sweep [PLAN.yaml] [options]``: expand a plan into CLI calls, skip what is
finished, run the rest locally (GPU slots or CPU processes) or on Slurm, then write the report."""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from glora.errors import one_line_errors
from glora.io.files import atomic_write
from glora.sweep.jobs import build_jobs, job_environment, mark_finished
from glora.sweep.local import LocalBackend, slots_for
from glora.sweep.slurm import SlurmBackend, describe
from glora.sweep.plan import (LIST_KEYS, SECTIONS, PlanError, build_plan, merge, parse_flag_string,
                              read_plan_file)
from glora.sweep.status import Board, elapsed, status_lines, summary

BACKENDS = ("local", "slurm")
# What writing on a full, read-only or otherwise refusing disk raises.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
SLURM_OPTIONS = ("partition", "time", "gpus", "cpus", "mem", "parallelism", "account", "no_wait")


def get_args_parser(prog: str = "python -m glora.sweep") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Expand a plan into calls of supernet.py and evolution.py, skip what is finished,\n"
                    "run the rest locally or on Slurm, then write the report.",
        epilog="examples:\n  python -m glora.sweep configs/vtab.yaml --gpus 0,1 --jobs-per-gpu 3\n"
               "  python -m glora.sweep configs/vtab.yaml --tasks natural --methods glora lora --seeds 1 2 3\n"
               "  python -m glora.sweep configs/vtab.yaml --backend slurm --slurm-gpus 1 --dry-run\n"
               "  python -m glora.sweep status configs/vtab.yaml   (per job: done, running, queued, failed, todo)")
    p.add_argument("plan", nargs="?", default=None, help="YAML plan (configs/*.yaml); options override it")
    what = p.add_argument_group("what to run (override the plan)")
    what.add_argument("--runs", default=None, metavar="DIR", help="output root (default runs/vtab)")
    what.add_argument("--tasks", nargs="+", metavar="TASK", help="task names or all, natural, specialized, structured, mini")
    what.add_argument("--methods", nargs="+", metavar="METHOD", help="glora glora_retrain glora_fresh lora linear_probe bitfit "
                                                   "ssf full_finetune, and <baseline>_long (GLoRA's total epochs)")
    what.add_argument("--budgets", nargs="+", metavar="M", help="GLoRA parameter budgets in M (--param-limits)")
    what.add_argument("--seeds", nargs="+", metavar="S", help="each seed S runs every job with --seed S")
    what.add_argument("--protocols", nargs="+", metavar="PROTOCOL", help="val retrain paper")
    what.add_argument("--lr-grid", dest="lr_grid", nargs="+", metavar="LR",
                      help="train every trained method at each lr; val200 picks one (the retrain reuses it)")
    for section in SECTIONS:
        what.add_argument(f"--{section.replace('_', '-')}", dest=section, action="append", metavar="'--flag V ...'",
                          help=f"flags added to {_section_help(section)} (override the plan's {section}; "
                               "may be repeated)")
    how = p.add_argument_group("how to run")
    how.add_argument("--backend", default="local", metavar="NAME", help="local (default) or slurm")
    how.add_argument("--jobs", type=int, metavar="N", default=1, help="local: concurrent CPU jobs (default 1)")
    how.add_argument("--gpus", default=None, metavar="IDS", help="local: GPU ids, e.g. 0,1; each job pinned to one")
    how.add_argument("--jobs-per-gpu", type=int, metavar="N", default=1, help="local: concurrent jobs per GPU")
    how.add_argument("--dry-run", action="store_true", help="print the jobs (and Slurm arrays); run nothing")
    how.add_argument("--no-report", action="store_true", help="do not run python -m vtab.report at the end")
    slurm = p.add_argument_group("slurm (with --backend slurm; through submitit)")
    slurm.add_argument("--slurm-partition", metavar="NAME", default=None)
    slurm.add_argument("--slurm-time", metavar="MIN", type=int, default=None, help="minutes per job (default 1440)")
    slurm.add_argument("--slurm-gpus", metavar="N", type=int, default=None, help="GPUs per job")
    slurm.add_argument("--slurm-cpus", metavar="N", type=int, default=None, help="CPUs per job")
    slurm.add_argument("--slurm-mem", metavar="GB", type=float, default=None, help="memory per job in GB")
    slurm.add_argument("--slurm-parallelism", metavar="N", type=int, default=None, help="max running tasks per array")
    slurm.add_argument("--slurm-account", metavar="NAME", default=None)
    slurm.add_argument("--slurm-no-wait", dest="slurm_no_wait", action="store_true",
                       help="submit and exit (default: wait, show the status, write the report)")
    return p


def _section_help(section: str) -> str:
    return {"args": "every call", "supernet_args": "the GLoRA supernet (supernet.py)",
            "search_args": "each search (evolution.py)", "train_args": "each baseline / retrain (supernet.py)",
            "export_args": "each export of a trained model (evolution.py)"}[section]


def plan_from(args: argparse.Namespace):
    """The plan file with the command line's values on top, checked."""
    raw = read_plan_file(args.plan) if args.plan else {}
    overrides = {k: getattr(args, k) for k in LIST_KEYS if getattr(args, k) is not None}
    if args.runs:
        overrides["runs"] = args.runs
    for section, clis in SECTIONS.items():
        for text in getattr(args, section) or []:  # repeated: later strings override earlier ones
            flags = parse_flag_string(text, clis, f"--{section.replace('_', '-')}")
            overrides[section] = {**overrides.get(section, {}), **flags}
    return build_plan(merge(raw, overrides), source=args.plan or "plan")


def check_options(args: argparse.Namespace) -> None:
    """One-line errors for options that do not fit together."""
    if args.backend not in BACKENDS:
        raise PlanError(f"unknown backend {args.backend!r}; backends: {', '.join(BACKENDS)}")
    given = [f"--slurm-{o.replace('_', '-')}" for o in SLURM_OPTIONS if getattr(args, f"slurm_{o}") not in (None, False)]
    if given and args.backend != "slurm":
        raise PlanError(f"{', '.join(given)}: only with --backend slurm")
    if args.backend == "slurm" and (args.gpus or args.jobs != 1 or args.jobs_per_gpu != 1):
        raise PlanError("--gpus, --jobs and --jobs-per-gpu are for the local backend; with Slurm use "
                        "--slurm-gpus and --slurm-parallelism")
    if args.gpus and args.jobs != 1:
        raise PlanError("--jobs counts CPU processes; with --gpus use --jobs-per-gpu")
    if args.jobs < 1 or args.jobs_per_gpu < 1:
        raise PlanError("--jobs and --jobs-per-gpu must be at least 1")


def dry_run(jobs, targets) -> None:
    """Print every job: its state (todo, or why not) and its command."""
    for job in jobs.values():
        state = "todo" if job.state == "waiting" else job.state
        deps = f"  after {', '.join(job.deps)}" if job.deps else ""
        print(f"[{state}] {job.name}{deps}\n    {shlex.join(job.command())}")
    todo = sum(j.state == "waiting" for j in jobs.values())
    print(f"{len(jobs)} jobs ({len(targets)} results), {todo} to run")


def report(runs: Path, tasks: list[str]) -> None:
    """python -m vtab.report RUNS: report.md, report.csv, the plot, and the method table printed."""
    if not runs.is_dir() or next(runs.rglob("results.json"), None) is None:
        print(f"report: skipped (no results.json under {runs})")
        return
    log = runs / "report.log"
    done = subprocess.run([sys.executable, "-m", "vtab.report", str(runs), "--tasks", *tasks],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=job_environment(dict(os.environ)))
    atomic_write(log, done.stdout)
    rc = done.returncode
    if rc != 0:
        print(f"report: FAILED (log {log})")
        return
    table = runs / "table.md"
    if table.is_file():
        print(table.read_text().rstrip())
    print(f"report: {runs / 'report.md'}, {runs / 'report.csv'}, {table}")


def main(args: argparse.Namespace) -> int:
    check_options(args)
    plan = plan_from(args)
    jobs, targets = build_jobs(plan)
    mark_finished(jobs, targets)
    if args.dry_run:
        dry_run(jobs, targets)
        if args.backend == "slurm":
            describe(jobs, args)
        return 0
    start = time.time()
    done = sum(j.state == "done" for j in jobs.values())
    print(f"sweep: {len(jobs)} jobs under {plan.runs}; {done} already finished")
    if args.backend == "slurm":
        completed = SlurmBackend(args, plan.runs).run(jobs)
        if args.slurm_no_wait:
            print("slurm: submitted; `python -m glora.sweep status` with the same plan and options shows where each "
                  "job is; run the same command again to see what finished and write the report")
            return 0
    else:
        board = Board(jobs)
        gpus = [g for g in (args.gpus or "").replace(" ", ",").split(",") if g]
        completed = LocalBackend(slots_for(gpus, args.jobs_per_gpu, args.jobs), board).run(jobs)
        board.close()
    print("\n".join(summary(jobs)) + f"\nsweep: {elapsed(time.time() - start)} in all")
    if not args.no_report:  # also after an interruption: the report of what finished
        report(plan.runs, plan.tasks)
    if not completed:
        print("sweep: interrupted; run the same command again to continue")
        return 130
    return 1 if any(j.state in ("failed", "skipped") for j in jobs.values()) else 0


def status(args: argparse.Namespace) -> int:
    """``status PLAN [options]``: where each job of the plan is (done, running, queued, failed, todo)."""
    plan = plan_from(args)
    jobs, targets = build_jobs(plan)
    mark_finished(jobs, targets)
    print("\n".join(status_lines(jobs, plan.runs)))
    return 0


def cli(argv: Sequence[str] | None = None) -> None:
    """Parse, run (or show the status: ``status PLAN ...``), and turn the expected failures (a bad
    plan, ...) into one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = main
    if argv[:1] == ["status"]:
        command, argv = status, argv[1:]
    args = get_args_parser("python -m glora.sweep status" if command is status else "python -m glora.sweep"
                           ).parse_args(argv)
    try:
        with one_line_errors():
            code = command(args)
            sys.stdout.flush()
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        # The sweep's own output (its standard output, a file it writes) on a full or read-only disk.
        # What stdout still holds cannot be written either: drop it, so that exiting does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = err.filename or "its output (standard output)"
        raise SystemExit(f"error: the sweep cannot write {where}: {err.strerror or err}") from None
    sys.exit(code)
