"""Verify a VTAB-1k data tree in the NOAH layout: list files, label ranges, readable images.

    python -m vtab.check [--data-path data/vtab-1k] [--quick] [--strict] [task|selection ...]

With no task names, every task folder present under --data-path is checked. Prints one row per
task (samples per split) and then every problem and warning, one per line.
Exit status: 0 clean, 1 problems found (or warnings with --strict), 2 unusable arguments or tree.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from glora.io.progress import progress as progress_bar

from .dataset import README_HINT, SPLITS, read_list, task_dir
from .images import not_regular, open_rgb
from glora.errors import GLoRAError, one_line

from .tasks import TASKS, DataError, TaskInfo, resolve_task, select_tasks

# VTAB-1k sizes; the test split differs per task, so it has no expected size.
EXPECTED_COUNTS = {"train800": 800, "val200": 200, "train800val200": 1000}
MAX_LISTED = 20  # unreadable (or clipped) images listed by name per task; the rest counted


@dataclass
class TaskReport:
    """What the check found for one task."""

    task: TaskInfo
    counts: dict[str, "int | None"] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """'ok', 'WARN' or 'FAIL' for the table."""
        return "FAIL" if self.problems else "WARN" if self.warnings else "ok"


def _image_problem(path: Path, quick: bool) -> tuple["str | None", "list[str]"]:
    """A one-line problem (or None) and the conversion notes of one listed image."""
    notes: list[str] = []
    if quick:
        kind = not_regular(path)
        if kind is not None:
            return f"cannot read image {path}: {kind}, not a regular file", notes
        return (None if path.is_file() else f"cannot read image {path}: no such file"), notes
    try:
        open_rgb(path, notes)
    except DataError as error:
        return str(error), notes
    return None, notes


def _check_images(folder: Path, paths: Sequence[str], quick: bool, workers: int,
                  progress: bool) -> tuple[list[str], list[str]]:
    """One-line problems for the images that are missing or do not decode, and notes on those
    converted with clipping (at most MAX_LISTED of each, then a count)."""
    files = [folder / p for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(progress_bar(pool.map(lambda f: _image_problem(f, quick), files),
                                  f"check {folder.name}", len(files), enabled=progress,
                                  unit="img"))
    bad = [problem for problem, _ in found if problem is not None]
    notes = [note for _, image_notes in found for note in image_notes]
    return _capped(bad, "unreadable images"), _capped(notes, "images converted with clipping")


def _capped(messages: list[str], what: str) -> list[str]:
    if len(messages) <= MAX_LISTED:
        return messages
    return messages[:MAX_LISTED] + [f"... and {len(messages) - MAX_LISTED} more {what}"]


def check_task(data_path: Path, info: TaskInfo, quick: bool = False, workers: int = 8,
               progress: bool = False) -> TaskReport:
    """Check every split of one task; problems and warnings are collected, not raised."""
    report = TaskReport(info)
    folder = task_dir(data_path, info)
    lines: dict[str, Counter] = {}
    paths: dict[str, None] = {}  # every image once, in list order, across splits
    for split in SPLITS:
        try:
            entries = read_list(data_path, info, split)
        except DataError as error:
            report.counts[split] = None
            report.problems.append(str(error))
            continue
        report.counts[split] = len(entries)
        lines[split] = Counter((e.path, e.label) for e in entries)
        paths.update(dict.fromkeys(e.path for e in entries))
        expected = EXPECTED_COUNTS.get(split)
        if expected is not None and len(entries) != expected:
            report.warnings.append(f"{info.name}/{split}: {len(entries)} samples, "
                                   f"VTAB-1k has {expected}")
    if all(s in lines for s in ("train800", "val200", "train800val200")):
        if lines["train800"] + lines["val200"] != lines["train800val200"]:
            report.warnings.append(f"{info.name}: train800val200 is not train800 + val200")
    problems, notes = _check_images(folder, list(paths), quick, workers, progress)
    report.problems += problems
    report.warnings += notes
    return report


def find_tasks(data_path: Path) -> tuple[list[TaskInfo], list[str]]:
    """Known task folders under ``data_path`` (registry order) and notes on other folders."""
    if not data_path.is_dir():
        raise DataError(f"data path {data_path} not found; {README_HINT}")
    names = sorted(p.name for p in data_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    notes = []
    for name in names:
        if name in TASKS:
            continue
        try:
            notes.append(f"folder {data_path / name} is task {resolve_task(name).name!r} under "
                         f"another name; rename it to {resolve_task(name).name}")
        except DataError:
            notes.append(f"folder {data_path / name} is not a known task; skipped")
    tasks = [info for info in TASKS.values() if info.name in names]
    if not tasks:
        raise DataError(f"no task folders under {data_path}; {README_HINT}")
    return tasks, notes


def format_table(reports: Sequence[TaskReport]) -> str:
    """A fixed-width table: task, classes, samples per split, status."""
    header = ["task", "group", "classes", *SPLITS, "status"]
    rows = [[r.task.name, r.task.group, str(r.task.num_classes),
             *("-" if r.counts.get(s) is None else str(r.counts[s]) for s in SPLITS), r.status]
            for r in reports]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:  # names left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``python -m vtab.check``."""
    p = argparse.ArgumentParser(prog="python -m vtab.check", description=__doc__.split("\n")[0])
    p.add_argument("tasks", nargs="*", type=str, help="task names, aliases or all, natural, specialized, structured, mini (default: all found)")
    p.add_argument("--data-path", type=Path, default=Path("data/vtab-1k"))
    p.add_argument("--quick", action="store_true", help="only check that image files exist")
    p.add_argument("--strict", action="store_true", help="treat warnings as problems")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: "Sequence[str] | None" = None) -> int:
    """Run the check and return the exit status."""
    args = get_args_parser().parse_args(argv)
    try:
        if args.tasks:
            # the sweep's own task selection: names, aliases and all, natural, ..., mini
            tasks, notes = [resolve_task(t) for t in select_tasks(args.tasks)], []
        else:
            tasks, notes = find_tasks(args.data_path)
        reports = [check_task(args.data_path, info, args.quick, args.workers,
                              progress=not args.no_progress) for info in tasks]
    except GLoRAError as error:  # DataError above all
        print(f"vtab.check: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(format_table(reports))
    problems = [p for r in reports for p in r.problems]
    warnings = notes + [w for r in reports for w in r.warnings]
    for message in problems:
        print(f"problem: {message}")
    for message in warnings:
        print(f"warning: {message}")
    failed = bool(problems) or (args.strict and bool(warnings))
    print(f"{len(reports)} task(s) checked in {args.data_path}: {len(problems)} problem(s), "
          f"{len(warnings)} warning(s) -> {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
