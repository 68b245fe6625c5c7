"""Paired comparisons for the report: which run each record is, the lr picked on val200, paired
differences per (task, seed) with seeded bootstrap CIs, and the long-format CSV.

A record is one results.json, annotated by `annotate` with ``name`` (the sweep's row name: ``lora``,
``lora_long``, ``glora``, ``glora_retrain``, ``glora_fresh``, ...), ``lr`` and ``run`` (its folder).
Where a row ran at several lrs (the sweep's ``lr_grid``), `select_lr` keeps the lr with the best
val200 accuracy (under `retrain` the val200 accuracy of the same row's `val` run at that lr, since
the retrain trained on val200) and the test accuracy of that run only.

A comparison A − B is the difference of test top-1 per (task, seed) where both exist (pairs with
one side missing are dropped and counted), summarised by the mean and a 95 % percentile bootstrap
CI over resampled (task, seed) pairs (`bootstrap_ci`, seeded, so the report is reproducible).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from vtab.tasks import GROUP_NAMES, TASKS

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
GLORA_NAMES = ("glora_retrain", "glora", "glora_fresh")
BASELINE_ORDER = ("lora", "lora_long", "ssf", "ssf_long", "bitfit", "bitfit_long", "linear_probe",
                  "linear_probe_long", "full_finetune", "full_finetune_long")
LONG = "_long"
SCOPES = ("all", "design", "confirmation", *GROUP_NAMES)
CSV_COLUMNS = ("task", "group", "role", "method", "protocol", "seed", "budget_M", "weights", "init",
               "lr", "lr_selected", "test_acc1", "search_acc1", "selection_split", "params",
               "epochs", "run")
_VARIANT_NAMES = {"": "glora", "retrained from supernet": "glora_retrain", "retrained fresh": "glora_fresh"}


def base_name(rec: Mapping) -> str:
    """The row name a record has by its own fields: a GLoRA variant or the baseline's method."""
    if rec.get("method") != "glora":
        return str(rec["method"])
    if rec.get("weights") != "trained":
        return "glora"
    return "glora_retrain" if rec.get("init") == "inherited" else "glora_fresh"


def run_name(rec: Mapping, folder: str) -> str:
    """The sweep's row name: ``base_name``, or ``<baseline>_long`` when the run's folder says so
    (``lora_long``, ``lora_long_lr0.003``)."""
    base = base_name(rec)
    stem = re.sub(r"_lr[0-9.e+-]+$", "", folder)
    stem = re.sub(r"_[0-9.e+-]+M$", "", stem)
    return base + LONG if stem == base + LONG and base not in _VARIANT_NAMES.values() else base


def _args_lr(folder: Path, dataset: str) -> float | None:
    import yaml

    path = folder / f"{dataset}_args.yaml"
    if not path.is_file():
        return None
    value = (yaml.safe_load(path.read_text()) or {}).get("lr")
    return None if value is None else float(value)


def run_lr(rec: Mapping, result_dir: Path) -> float | None:
    """The lr the run's weights were trained with: its train folder's resolved config (the sweep
    puts it in ``train/`` beside the results), else the loaded checkpoint's folder, else the
    folder name's ``_lr`` suffix; None when nothing says."""
    dataset = str(rec["dataset"])
    for folder in (result_dir / "train", Path(str((rec.get("config") or {}).get("load_path") or ""))):
        if str(folder) and folder.is_dir():
            lr = _args_lr(folder, dataset)
            if lr is not None:
                return lr
    match = re.search(r"_lr([0-9.e+-]+)$", result_dir.name)
    return float(match.group(1)) if match else None


def annotate(rec: dict, path: Path, runs_dir: Path) -> dict:
    """The record with ``name``, ``lr``, ``run`` (its folder relative to runs_dir) and ``role``."""
    folder = Path(path).parent
    info = TASKS.get(str(rec["dataset"]))
    return {**rec, "name": run_name(rec, folder.name), "lr": run_lr(rec, folder),
            "run": folder.relative_to(runs_dir).as_posix() if folder != runs_dir else ".",
            "role": info.role if info is not None else "",
            "group": rec.get("group") or (info.group if info is not None else "")}


def _row_key(rec: Mapping, protocol: str | None = None) -> tuple:
    return (rec["dataset"], rec.get("seed"), rec.get("supernet_seed"), rec["name"],
            protocol or rec["protocol"], rec.get("param_limit_M"))


def select_lr(records: Sequence[dict]) -> list[dict]:
    """Every record with ``lr_selected``: True for the one run per row (task, seed, name, protocol,
    budget) whose lr won on val200 (the best search-split accuracy; ties: the smaller lr)."""
    val_score = {(*_row_key(r), r["lr"]): r.get("search_acc1") for r in records if r["protocol"] == "val"}
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault(_row_key(rec), []).append(rec)

    def score(rec: dict) -> tuple:
        own = rec.get("search_acc1")
        if rec["protocol"] == "retrain":  # trained on val200: its val run at the same lr decides
            own = val_score.get((*_row_key(rec, "val"), rec["lr"]), own)
        return (float("-inf") if own is None else float(own), -(rec["lr"] or 0.0))

    out = []
    for recs in groups.values():
        best = max(recs, key=score)
        out += [{**r, "lr_selected": r is best} for r in recs]
    return out


def bootstrap_ci(diffs: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Mean and 95 % percentile bootstrap CI of the mean, resampling the values with replacement."""
    x = np.asarray(diffs, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no paired differences")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def paired(records: Iterable[dict], a: str, b: str, protocol: str
           ) -> tuple[dict[tuple[str, object], float], int]:
    """Test top-1 differences a − b per (task, seed) under one protocol (selected lrs only), and
    the number of (task, seed) keys that have only one of the two (dropped)."""
    acc: dict[str, dict[tuple, float]] = {a: {}, b: {}}
    for rec in records:
        if rec["protocol"] == protocol and rec["name"] in acc and rec.get("lr_selected", True):
            acc[rec["name"]][(rec["dataset"], rec.get("seed"))] = float(rec["test_acc1"])
    both = acc[a].keys() & acc[b].keys()
    diffs = {k: acc[a][k] - acc[b][k] for k in sorted(both, key=str)}
    return diffs, len(acc[a].keys() ^ acc[b].keys())


def in_scope(task: str, scope: str) -> bool:
    """Whether a task counts in a scope: all, design, confirmation, or a VTAB group."""
    info = TASKS.get(task)
    if scope == "all":
        return True
    if info is None:
        return False
    return info.role == scope if scope in ("design", "confirmation") else info.group == scope


def comparisons(records: Sequence[dict]) -> list[tuple[str, str, str]]:
    """(protocol, a, b): each GLoRA variant against each baseline present under that protocol."""
    out = []
    for protocol in ("val", "retrain", "paper"):
        names = {r["name"] for r in records if r["protocol"] == protocol}
        glora = [n for n in GLORA_NAMES if n in names]
        others = [n for n in BASELINE_ORDER if n in names] + sorted(
            names - set(BASELINE_ORDER) - set(GLORA_NAMES))
        out += [(protocol, a, b) for a in glora for b in others]
    return out


def ci_text(diffs: Sequence[float], seed: int = BOOTSTRAP_SEED) -> str:
    """``+0.40 [-1.21, +2.03] (n=12)``, or a dash without pairs."""
    if not diffs:
        return "—"
    mean, lo, hi = bootstrap_ci(diffs, seed=seed)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(diffs)})"


def verdict_table(records: Sequence[dict]) -> list[str]:
    """Markdown: one line per (protocol, A, B), one column per scope; empty without comparisons."""
    pairs = comparisons(records)
    if not pairs:
        return []
    scopes = [s for s in SCOPES if s == "all" or any(in_scope(str(r["dataset"]), s) for r in records)]
    lines = ["| protocol | A − B | " + " | ".join(scopes) + " | unpaired |",
             "|" + "---|" * (len(scopes) + 3)]
    for protocol, a, b in pairs:
        diffs, dropped = paired(records, a, b, protocol)
        cells = [ci_text([d for (task, _), d in diffs.items() if in_scope(task, scope)]) for scope in scopes]
        lines.append(f"| {protocol} | {a} − {b} | " + " | ".join(cells) + f" | {dropped} |")
    return lines + ["", "Test top-1 difference (points), mean over (task, seed) pairs with a 95 % "
                    f"percentile bootstrap CI ({BOOTSTRAP_RESAMPLES:,} resamples of the pairs, seed "
                    f"{BOOTSTRAP_SEED}); n: pairs; unpaired: (task, seed) keys with only one of A, B "
                    "(dropped). Rows with an lr grid use the lr picked on val200. A CI that contains "
                    "0 does not show a difference.", ""]


def demo_note(records: Sequence[dict]) -> list[str]:
    """The line under the demo's table: a paired CI where several seeds ran, a pointer otherwise."""
    seeds = {r.get("seed") for r in records}
    if len(seeds) > 1:
        lines = []
        for protocol, a, b in comparisons(records):
            if b == "lora":
                diffs, _ = paired(records, a, b, protocol)
                lines.append(f"{a} − {b} [{protocol}]: {ci_text(list(diffs.values()))}")
        return ["Paired test top-1 differences over (task, seed), 95 % bootstrap CI: "
                + "; ".join(lines) + ".", ""] if lines else []
    return ["One seed per task: this table is no verdict (another seed or CPU moves single rows by "
            "a point or more). The paired 95 % CIs over tasks and seeds come from the seeded study "
            "(the plan verdict, glora/configs/verdict.yaml; README, section 'Verdict').", ""]


def csv_rows(records: Sequence[dict]) -> list[list[str]]:
    """The long-format CSV: the header, then one line per results.json."""
    def text(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return repr(round(value, 6))
        return str(value)

    rows = [list(CSV_COLUMNS)]
    for r in sorted(records, key=lambda r: (str(r["dataset"]), str(r["name"]), str(r["protocol"]),
                                            str(r.get("seed")), r.get("lr") or 0.0)):
        rows.append([text(v) for v in (
            r["dataset"], r.get("group"), r.get("role"), r["name"], r["protocol"], r.get("seed"),
            r.get("param_limit_M"), r.get("weights"), r.get("init"), r.get("lr"),
            int(bool(r.get("lr_selected", True))), float(r["test_acc1"]), r.get("search_acc1"),
            r.get("selection_split"), r.get("params"), r.get("supernet_epochs"), r.get("run"))])
    return rows
