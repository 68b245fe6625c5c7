"""The by-method view of a report: one row per (method, budget, weights, protocol), one column per
task, seeds as mean ± sample std, then the mean over the tasks (± std of the per-seed means).

    python -m vtab.report RUNS --tasks mini_digits mini_count     # also writes RUNS/table.md
"""
from __future__ import annotations

import statistics
from typing import Sequence

DASH = "—"
# Rows from the cheapest method to the most expensive, each compute-matched `_long` variant after
# its baseline; GLoRA's variants and the protocols in the order a reader compares them.
METHOD_ORDER = ("linear_probe", "linear_probe_long", "bitfit", "bitfit_long", "ssf", "ssf_long", "lora",
                "lora_long", "glora", "full_finetune", "full_finetune_long")
VARIANT_ORDER = ("", "retrained from supernet", "retrained fresh")
PROTOCOL_ORDER = ("val", "retrain", "paper")


def _rank(values: tuple[str, ...], value: str) -> int:
    return values.index(value) if value in values else len(values)


def row_order(row) -> tuple:
    """Sort key: method, budget, variant, protocol (unknown names after the known ones)."""
    return (_rank(METHOD_ORDER, row.method), row.method, row.budget_M or 0.0,
            _rank(VARIANT_ORDER, row.variant), _rank(PROTOCOL_ORDER, row.protocol), row.protocol)


def weights_label(method: str, variant: str) -> str:
    """How the row's weights were obtained: a GLoRA subnet inherited from the supernet (the paper's
    way), retrained from it or from a fresh init; every baseline is trained on its own."""
    if variant:
        return variant
    return "inherited from supernet" if method == "glora" else "trained"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return DASH
    return f"{mean:.2f}" + (f" ±{std:.2f}" if std is not None else "")


def row_mean(row, tasks: Sequence[str]) -> tuple[float | None, float | None]:
    """Mean top-1 over ``tasks`` (None if one is missing) and the sample std over the seeds that
    have every task (None with fewer than two)."""
    if not tasks or any(t not in row.cells for t in tasks):
        return None, None
    mean = statistics.fmean(row.cells[t].mean for t in tasks)
    common = set.intersection(*(set(row.cells[t].by_seed) for t in tasks))
    per_seed = [statistics.fmean(row.cells[t].by_seed[s] for t in tasks) for s in common]
    return mean, statistics.stdev(per_seed) if len(per_seed) > 1 else None


def default_tasks(rows, vtab_tasks: Sequence[str]) -> list[str]:
    """Every task with a result: the VTAB-1k order first, then the others by name."""
    seen = {t for r in rows for t in r.cells}
    return [t for t in vtab_tasks if t in seen] + sorted(seen - set(vtab_tasks))


def method_table(rows, tasks: Sequence[str]) -> list[str]:
    """Markdown lines: the header, one line per row with any of ``tasks``, and a note."""
    header = ["method", "budget (M)", "weights", "protocol", "seeds", *tasks, "mean", "params (M)",
              "search − test"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=row_order):
        cells = [row.cells[t] for t in tasks if t in row.cells]
        if not cells:
            continue
        counts = sorted({c.n for c in cells})
        seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        gaps = [c.gap for c in cells if c.gap is not None]
        protocol = row.protocol if row.selection_split != "test" else f"{row.protocol} (selected on test)"
        params = DASH if row.params_M is None else f"{row.params_M:.4f}"
        lines.append("| " + " | ".join([
            row.method, DASH if row.budget_M is None else f"{row.budget_M:g}",
            weights_label(row.method, row.variant), protocol, seeds,
            *(_pm(row.cells[t].mean, row.cells[t].std) if t in row.cells else DASH for t in tasks),
            _pm(*row_mean(row, tasks)), params,
            DASH if not gaps else f"{statistics.fmean(gaps):+.2f}"]) + " |")
    lines += ["", "Test top-1 (%), mean ± sample std over seeds; mean: over the tasks (± std of the "
              "per-seed means); params: trainable adapter parameters without the head, mean over tasks; "
              "search − test: the mean gap between the selection split's and the test accuracy "
              f"({DASH} where the selection split was trained on).", ""]
    return lines
