"""VTAB-1k report: our results.json files side by side with the published rows.

    python -m vtab.report RUNS_DIR [--out DIR] [--methods glora lora ...]

Rows are (method, budget, variant, protocol, selection split), seeds are averaged per task; task order and
groups come from vtab/reference.csv. Where a row ran at several lrs, the lr picked on val200 is kept
(`vtab.report_stats`). The paired comparisons (GLoRA variants − each baseline per (task, seed), mean
and 95 % bootstrap CI over all tasks, design and confirmation tasks apart, and per group) are printed
and written to report.md. Writes report.md, report.csv (long format: one line per results.json),
summary.csv (one line per VTAB-1k row, with group means), table.md and accuracy_vs_params.png.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from glora.errors import GLoRAError, one_line
from glora.io.files import atomic_write, make_folder
from vtab.report_stats import annotate, csv_rows, demo_note, select_lr, verdict_table
from vtab.report_table import default_tasks, method_table

REFERENCE_CSV = Path(__file__).with_name("reference.csv")
MATPLOTLIB_MISSING = "matplotlib is not installed: pip install '.[report]' (or -r requirements-extras.txt)"
REQUIRED_KEYS = ("dataset", "method", "protocol", "selection_split", "test_acc1")
AVERAGES = ("mean_of_groups", "mean_19")
PLOT_FILE = "accuracy_vs_params.png"
TABLE_FILE = "table.md"
SUMMARY_FILE = "summary.csv"  # the VTAB-1k rows with their group means (report.csv: every run)
DASH = "—"
PROTOCOL_NOTES = (
    "`val`: supernet trained on train800, subnet selected on val200, test evaluated once.",
    "`paper`: supernet trained on train800val200, subnet **selected on the test set** "
    "(the original code as first released), so its test numbers are optimistic.",
    "`retrain`: supernet and search as `val`; the chosen subnet and every baseline then train on "
    "train800val200 (VPT/NOAH/SSF practice) and are tested once. GLoRA rows say whether the subnet "
    "kept the supernet's weights, was retrained from them, or was retrained from a fresh init.",
    "published: copied from vtab/reference.csv (sources there); the GLoRA row was most likely "
    "selected on the test set, so compare it with our `paper` rows.")
Groups = Mapping[str, Sequence[str]]


class ReportError(GLoRAError):
    """A problem that stops the report; str(e) is one line."""


@dataclass(frozen=True)
class Cell:
    """Test top-1 (%) of one row on one task: mean over runs, sample std (n > 1), params (M); the
    mean per seed (key: supernet seed, search/export seed) and the mean search-minus-test gap."""
    mean: float
    std: float | None
    n: int
    params_M: float | None
    by_seed: dict = field(default_factory=dict)
    gap: float | None = None


@dataclass(frozen=True)
class Row:
    """One method row: ours (method, budget, protocol, selection split) or a published one."""
    label: str
    method: str
    protocol: str
    selection_split: str
    params_M: float | None  # mean over tasks of the trainable params (M)
    cells: dict[str, Cell]
    budget_M: float | None = None
    variant: str = ""  # how a GLoRA subnet's weights were obtained (see variant())

    def acc(self) -> dict[str, float]:
        """Task -> mean test top-1."""
        return {task: cell.mean for task, cell in self.cells.items()}


@dataclass(frozen=True)
class Reference:
    """The published rows, the task order and the task groups, all from reference.csv."""
    tasks: list[str]
    groups: dict[str, list[str]]
    rows: list[Row]


@dataclass(frozen=True)
class Report:
    """Everything the writers need."""
    ref: Reference
    ours: list[Row]
    published: list[Row]
    errors: list[tuple[str, str]]  # (path relative to runs_dir, one-line reason)
    runs_dir: Path
    n_files: int
    records: list[dict] = field(default_factory=list)  # every result, annotated (report_stats)

    def vtab_rows(self) -> list[Row]:
        """Our rows with at least one of the 19 tasks, then the published rows."""
        return [r for r in self.ours if set(r.cells) & set(self.ref.tasks)] + self.published


def group_means(acc_by_task: Mapping[str, float], groups: Groups | None = None
                ) -> dict[str, float | None]:
    """Mean top-1 of each group; None for a group with any task missing."""
    groups = load_reference().groups if groups is None else groups
    return {g: sum(acc_by_task[t] for t in ts) / len(ts) if all(t in acc_by_task for t in ts)
            else None for g, ts in groups.items()}


def summarize(acc_by_task: Mapping[str, float], groups: Groups | None = None
              ) -> dict[str, float | None]:
    """Group means + mean_of_groups (the papers' "average") + mean_19 (plain mean of all tasks)."""
    groups = load_reference().groups if groups is None else groups
    out = group_means(acc_by_task, groups)
    means = list(out.values())
    out["mean_of_groups"] = None if None in means else sum(means) / len(means)
    tasks = [t for ts in groups.values() for t in ts]
    complete = all(t in acc_by_task for t in tasks)
    out["mean_19"] = sum(acc_by_task[t] for t in tasks) / len(tasks) if complete else None
    return out


def missing_by_group(acc_by_task: Mapping[str, float], groups: Groups) -> dict[str, list[str]]:
    """Group -> its tasks without a result, for the groups with something missing."""
    missing = {g: [t for t in ts if t not in acc_by_task] for g, ts in groups.items()}
    return {g: ts for g, ts in missing.items() if ts}


def _parse_groups(comments: list[str], tasks: list[str]) -> dict[str, list[str]]:
    for line in comments:  # the line that reads "natural(7) | specialized(4) | structured(8)"
        sizes = [(name, int(n)) for name, n in re.findall(r"(\w+)\((\d+)\)", line)]
        if len(sizes) >= 2:
            if sum(n for _, n in sizes) != len(tasks):
                raise ReportError(f"group sizes {sizes} do not add up to {len(tasks)} tasks")
            ends = [sum(n for _, n in sizes[:i + 1]) for i in range(len(sizes))]
            return {name: tasks[end - n:end] for (name, n), end in zip(sizes, ends)}
    raise ReportError("no comment line gives the group sizes, e.g. 'natural(7) | ...'")


def load_reference(path: Path = REFERENCE_CSV) -> Reference:
    """Parse the published-numbers CSV (header: method, params_M, the tasks in paper order)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ReportError(f"cannot read the reference CSV {path}: {e.strerror}") from None
    reader = csv.DictReader([line for line in lines if line.strip() and line[0] != "#"])
    tasks = list(reader.fieldnames or [])[2:]
    groups = _parse_groups([line for line in lines if line.startswith("#")], tasks)
    rows = []
    for rec in reader:
        try:
            params = float(rec["params_M"])
            cells = {t: Cell(float(rec[t]), None, 1, params) for t in tasks}
        except (KeyError, TypeError, ValueError):  # a missing column or a cell that is no number
            raise ReportError(f"{path}: the row of {rec.get('method')!r} (line {reader.line_num} "
                              "without comments) has a missing or non-numeric cell") from None
        rows.append(Row(f"published: {rec['method']}", rec["method"], "published", "n/a",
                        params, cells))
    return Reference(tasks, groups, rows)


def _number(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def read_result(path: Path) -> dict:
    """Parse one results.json; ValueError with a one-line reason if unreadable or incomplete."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable JSON ({e})") from None
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in REQUIRED_KEYS if rec.get(k) in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if _number(rec["test_acc1"]) is None:
        raise ValueError(f"test_acc1 is not a finite number: {rec['test_acc1']!r}")
    return rec


def budget_label(method: str, limit: float | None) -> str:
    """'glora@1.0M' for a run with a parameter budget, the bare method name otherwise."""
    text = f"{limit:g}" if limit is not None else ""
    return f"{method}@{text if '.' in text or 'e' in text else text + '.0'}M" if text else method


def variant(rec: dict) -> str:
    """How a GLoRA subnet's weights were obtained: '' (the supernet's, as the paper), 'retrained
    from supernet' or 'retrained fresh'; '' for baselines (always trained on their own)."""
    if rec.get("weights") != "trained" or rec.get("method") != "glora":
        return ""
    return "retrained from supernet" if rec.get("init") == "inherited" else "retrained fresh"


def _params_M(rec: dict) -> float | None:
    params_M, params = _number(rec.get("params_M")), _number(rec.get("params"))
    return params_M if params_M is not None else None if params is None else params / 1e6


def _cell(recs: list[dict]) -> Cell:
    accs = [float(r["test_acc1"]) for r in recs]
    params = [p for p in map(_params_M, recs) if p is not None]
    seeds: dict[tuple, list[float]] = {}
    for r in recs:
        seeds.setdefault((r.get("supernet_seed"), r.get("seed")), []).append(float(r["test_acc1"]))
    # The search-minus-test gap, where the search split was not trained on (under `retrain` it was).
    gaps = [_number(r.get("search_acc1")) - float(r["test_acc1"]) for r in recs
            if _number(r.get("search_acc1")) is not None and not r.get("search_split_in_training")]
    return Cell(statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else None,
                len(accs), statistics.fmean(params) if params else None,
                {k: statistics.fmean(v) for k, v in seeds.items()}, statistics.fmean(gaps) if gaps else None)


def build_rows(records: Sequence[dict]) -> list[Row]:
    """Group runs by (method, budget, variant, protocol, selection split) and task; average seeds."""
    runs: dict[tuple, dict[str, list[dict]]] = {}
    for rec in records:
        # A compute-matched baseline (`lora_long`) is a row of its own, not more seeds of `lora`.
        method = str(rec["name"]) if str(rec.get("name", "")).endswith("_long") else str(rec["method"])
        key = (method, _number(rec.get("param_limit_M")), variant(rec),
               str(rec["protocol"]), str(rec["selection_split"]))
        runs.setdefault(key, {}).setdefault(str(rec["dataset"]), []).append(rec)
    rows = []
    for key in sorted(runs, key=lambda k: (k[0], k[1] is None, k[1] or 0.0, k[2], k[3], k[4])):
        method, limit, how, protocol, split = key
        cells = {task: _cell(recs) for task, recs in sorted(runs[key].items())}
        params = [c.params_M for c in cells.values() if c.params_M is not None]
        name = budget_label(method, limit) + (f" {how}" if how else "")
        label = f"ours: {name} [{protocol}, selected on {split}]"
        rows.append(Row(label, method, protocol, split,
                        statistics.fmean(params) if params else None, cells, limit, how))
    return rows


def collect(runs_dir: Path, methods: Sequence[str] | None = None,
            ref: Reference | None = None) -> Report:
    """Read every results.json under runs_dir into a Report; ReportError if nothing is usable."""
    ref, runs_dir = load_reference() if ref is None else ref, Path(runs_dir)
    if not runs_dir.is_dir():
        raise ReportError(f"RUNS_DIR {runs_dir} does not exist or is not a directory")
    paths = sorted(runs_dir.rglob("results.json"))
    if not paths:
        raise ReportError(f"no results.json files under {runs_dir}")
    records, errors = [], []
    for path in paths:
        try:
            records.append(annotate(read_result(path), path, runs_dir))
        except ValueError as e:
            errors.append((str(path.relative_to(runs_dir)), str(e)))
    if not records:
        raise ReportError(f"none of the {len(paths)} results.json files under {runs_dir} is "
                          f"usable (first: {errors[0][0]}: {errors[0][1]})")
    keep = (lambda m: m in methods) if methods else (lambda m: True)
    records = select_lr(records)
    ours = [r for r in build_rows([r for r in records if r["lr_selected"]]) if keep(r.method)]
    if not ours:
        found = sorted({str(r["method"]) for r in records})
        raise ReportError(f"no results for methods {list(methods or [])}; found {found}")
    kept = [r for r in records if keep(r["method"]) or keep(r["name"])]
    return Report(ref, ours, [r for r in ref.rows if keep(r.method)], errors, runs_dir, len(paths), kept)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return DASH if x is None else format(x, spec)  # params use ".3g": 0.86, 0.069, 0.0095


def _cell_text(cell: Cell | None) -> str:
    spread = f" ±{cell.std:.2f} (n={cell.n})" if cell is not None and cell.n > 1 else ""
    return (DASH if cell is None else _fmt(cell.mean)) + spread


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body] + [""]


def _vtab_sections(rep: Report) -> list[str]:
    ref, rows = rep.ref, rep.vtab_rows()
    count = lambda r: f"{len(set(r.cells) & set(ref.tasks))}/{len(ref.tasks)}"  # noqa: E731
    body = [[r.label, _fmt(r.params_M, ".3g"), count(r)]
            + [_fmt(v) for v in summarize(r.acc(), ref.groups).values()] for r in rows]
    out = ["## Summary (test top-1 %)", ""] + _table(
        ["row", "params (M)", "tasks", *ref.groups, "mean of groups", "mean of 19"], body)
    out += ["mean of groups: the mean of the group means (the papers' average); mean of 19: the "
            "plain mean over tasks; params: mean over tasks, head not counted.", ""]
    out += ["## Per task (mean over seeds; ± sample std and n when n > 1)", ""] + _table(
        ["row", *ref.tasks], [[r.label] + [_cell_text(r.cells.get(t)) for t in ref.tasks]
                              for r in rows])
    gaps = [(r.label, missing_by_group(r.acc(), ref.groups)) for r in rows]
    notes = [f"- {label}: " + "; ".join(f"{g} missing {', '.join(ts)}" for g, ts in gap.items())
             for label, gap in gaps if gap]
    if notes:
        out += [f"Group means only over complete groups ({DASH} otherwise):", "", *notes, ""]
    done = {t for r in rep.ours for t in r.cells}
    absent = [t for t in ref.tasks if t not in done]
    return out + ["## Missing", "", f"No results for {len(absent)} of the {len(ref.tasks)} tasks: "
                  f"{', '.join(absent)}" if absent else "Every task has results.", ""]


def render_markdown(rep: Report, plot_file: str | None = None,
                    skipped: str = MATPLOTLIB_MISSING, tasks: Sequence[str] = ()) -> str:
    """The whole report as markdown."""
    out = ["# VTAB-1k report", "", f"Runs: `{rep.runs_dir}` ({rep.n_files} results.json files, "
           f"{len(rep.errors)} unreadable). Protocols:", ""]
    out += [f"- {note}" for note in PROTOCOL_NOTES] + [""]
    out += _vtab_sections(rep) if rep.vtab_rows() else []
    other = sorted(((t, r, c) for r in rep.ours for t, c in r.cells.items()
                    if t not in rep.ref.tasks), key=lambda x: x[0])
    if other:
        out += ["## Other tasks (not among the 19 VTAB-1k tasks; no group means)", ""]
        out += _table(["task", "method", "row", "test top-1", "params (M)"],
                      [[t, r.method, r.label, _cell_text(c), _fmt(c.params_M, ".3g")]
                       for t, r, c in other])
    if rep.errors:
        out += ["## Unreadable results files", ""]
        out += [f"- `{path}`: {why}" for path, why in rep.errors] + [""]
    out += ["## By method (mean ± std over seeds)", ""] + method_table(rep.ours, tasks or default_tasks(
        rep.ours, rep.ref.tasks))
    verdict = verdict_table(rep.records)
    if verdict:
        out += ["## Paired comparisons (A − B per task and seed, 95 % bootstrap CI)", "", *verdict]
    out += [f"![accuracy vs params]({plot_file})" if plot_file
            else f"Plot skipped: {skipped}.", ""]
    return "\n".join(out)


def write_csv(rep: Report, path: Path) -> None:
    """Long format: one line per results.json (columns: `report_stats.CSV_COLUMNS`)."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(csv_rows(rep.records))
    atomic_write(path, text.getvalue())


def write_summary_csv(rep: Report, path: Path) -> None:
    """One line per VTAB method row: label, protocol, selection_split, params_M, tasks, means."""
    ref = rep.ref
    num = lambda x: "" if x is None else repr(round(x, 4))  # noqa: E731
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["label", "protocol", "selection_split", "params_M", *ref.tasks,
                     *ref.groups, *AVERAGES])
    for r in rep.vtab_rows():
        acc = r.acc()
        writer.writerow([r.label, r.protocol, r.selection_split, num(r.params_M)]
                        + [num(acc.get(t)) for t in ref.tasks]
                        + [num(v) for v in summarize(acc, ref.groups).values()])
    atomic_write(path, text.getvalue())


def _panels(rep: Report) -> list[tuple[str, list[tuple[Row, float]]]]:
    rows = rep.ours + rep.published
    means = [(r, summarize(r.acc(), rep.ref.groups)["mean_of_groups"]) for r in rows]
    panels = [("mean of group means", [(r, m) for r, m in means if m is not None])]
    tasks = rep.ref.tasks + sorted({t for r in rep.ours for t in r.cells} - set(rep.ref.tasks))
    panels += [(t, [(r, r.cells[t].mean) for r in rows if t in r.cells])
               for t in tasks if any(t in r.cells for r in rep.ours)]
    return [(title, points) for title, points in panels if points]


def plot(rep: Report, path: Path) -> bool:
    """Top-1 vs trainable params (M), the average then one panel per task; False: no matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels = _panels(rep)
    ncols, nrows = min(4, len(panels)), math.ceil(len(panels) / 4)
    fig = Figure(figsize=(4 * ncols, 3.2 * nrows + 0.25 * len(rep.ours)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    colours = {r.label: f"C{i % 10}" for i, r in enumerate(rep.ours)}
    for i, (title, points) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for row, acc in ((row, acc) for row, acc in points if row.params_M is not None):
            if row.label in colours:
                ax.scatter(row.params_M, acc, c=colours[row.label], s=36, label=row.label)
            else:
                ax.scatter(row.params_M, acc, c="0.6", marker="s", s=18)
                ax.annotate(row.method, (row.params_M, acc), xytext=(3, 2), fontsize=6,
                            textcoords="offset points", color="0.4")
        ax.set_xscale("symlog", linthresh=0.01)  # linear probing has 0 params
        ax.set(title=title, xlabel="trainable params (M)", ylabel="top-1 (%)")
        counts = sorted({round(row.params_M, 4) for row, _ in points if row.params_M is not None})
        if 0 < len(counts) <= 6:  # few models (the mini tasks): tick each count, symlog gives none there
            ax.set_xticks(counts, [f"{c:g}" for c in counts], fontsize=7, rotation=30)
    handles = {h.get_label(): h for ax in fig.axes for h in ax.get_legend_handles_labels()[0]}
    labels = [label for label in colours if label in handles]  # in row order
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center", fontsize=7)
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format=Path(path).suffix[1:]))
    return True


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``python -m vtab.report``."""
    p = argparse.ArgumentParser(prog="python -m vtab.report", description=__doc__.split("\n")[0])
    p.add_argument("runs_dir", type=Path, help="folder searched recursively for results.json")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUNS_DIR)")
    p.add_argument("--methods", nargs="+", type=str, default=None,
                   help="keep only these methods (ours and published), e.g. glora lora")
    p.add_argument("--reference", type=Path, default=REFERENCE_CSV, help="published numbers CSV")
    p.add_argument("--no-plot", action="store_true", help=f"do not draw {PLOT_FILE}")
    p.add_argument("--tasks", nargs="+", default=None,
                   help=f"the columns of the by-method table ({TABLE_FILE}); default: every task with results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write report.md, report.csv and the plot; exit code 2 and one error line if nothing to do."""
    args = get_args_parser().parse_args(argv)
    try:
        rep = collect(args.runs_dir, args.methods, load_reference(args.reference))
    except GLoRAError as e:  # ReportError, or a data problem naming its file
        print(f"vtab.report: error: {one_line(e)}", file=sys.stderr)
        return 2
    for path, why in rep.errors:
        print(f"vtab.report: warning: skipped {path}: {why}", file=sys.stderr)
    out = args.runs_dir if args.out is None else args.out
    try:
        make_folder(out, "--out")
    except GLoRAError as e:
        print(f"vtab.report: error: {one_line(e)}", file=sys.stderr)
        return 2
    plotted = not args.no_plot and plot(rep, out / PLOT_FILE)
    skipped = "--no-plot" if args.no_plot else MATPLOTLIB_MISSING
    tasks = args.tasks or default_tasks(rep.ours, rep.ref.tasks)
    markdown = render_markdown(rep, PLOT_FILE if plotted else None, skipped, tasks)
    atomic_write(out / "report.md", markdown)
    write_csv(rep, out / "report.csv")
    write_summary_csv(rep, out / SUMMARY_FILE)
    atomic_write(out / TABLE_FILE, "\n".join(method_table(rep.ours, tasks) + demo_note(rep.records)))
    print(markdown)
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / SUMMARY_FILE}, {out / TABLE_FILE}, "
          + (f"and {out / PLOT_FILE}" if plotted else f"skipped the plot ({skipped})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
