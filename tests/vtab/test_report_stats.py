"""vtab.report_stats through python -m vtab.report: the lr picked on val200, paired differences per
(task, seed) with seeded bootstrap CIs (design and confirmation tasks apart), the long-format CSV and
the note under the demo's table."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vtab.report import main
from vtab.report_stats import CSV_COLUMNS, bootstrap_ci, ci_text, paired

RUNS_LAYOUT = {  # sweep folder -> the results.json fields that make the row
    "lora": {"method": "lora", "weights": "trained", "init": "fresh"},
    "lora_long": {"method": "lora", "weights": "trained", "init": "fresh"},
    "glora_retrain_0.024576M": {"method": "glora", "weights": "trained", "init": "inherited",
                                "param_limit_M": 0.024576},
    "glora_0.024576M": {"method": "glora", "weights": "supernet", "init": "inherited",
                        "param_limit_M": 0.024576},
}


def write_run(runs: Path, task: str, seed: int, protocol: str, folder: str, test: float,
              val: float = 50.0, epochs: int = 20, lr: float | None = None) -> Path:
    """One results.json where the sweep puts it (RUNS/<task>/seed<S>/<protocol>/<folder>), with the
    train folder's resolved config holding the lr."""
    row = RUNS_LAYOUT[folder.split("_lr")[0]]
    out = runs / task / f"seed{seed}" / protocol / folder
    (out / "train").mkdir(parents=True, exist_ok=True)
    if lr is not None:
        (out / "train" / f"{task}_args.yaml").write_text(f"lr: {lr}\nepochs: {epochs}\n")
    (out / "results.json").write_text(json.dumps({
        "dataset": task, "protocol": protocol, "selection_split": "val200", "search_acc1": val,
        "test_acc1": test, "params": 24576, "seed": seed, "supernet_seed": seed,
        "supernet_epochs": epochs, **row}))
    return out


def report(runs: Path, tmp_path: Path) -> tuple[str, list[dict], str]:
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--no-plot"]) == 0
    with open(out / "report.csv", newline="") as f:
        return (out / "report.md").read_text(), list(csv.DictReader(f)), (out / "table.md").read_text()


# ---------------------------------------------------------------- the bootstrap
def test_bootstrap_ci_is_the_seeded_percentile_bootstrap():
    """Fails if the CI is not the 2.5/97.5 percentiles of 10,000 seeded resampled means, if the seed
    is not fixed (a second call must agree), or if resampling is not with replacement."""
    diffs = [1.0, -2.0, 3.5, 0.5, 2.0, -1.0]
    mean, lo, hi = bootstrap_ci(diffs)
    rng = np.random.default_rng(0)
    means = np.asarray(diffs)[rng.integers(0, 6, size=(10_000, 6))].mean(axis=1)
    assert (mean, lo, hi) == (pytest.approx(0.6666666667), *np.percentile(means, [2.5, 97.5]))
    assert (round(lo, 4), round(hi, 4)) == (-0.75, 2.0833)  # pinned: the numbers the report prints
    assert bootstrap_ci(diffs) == (mean, lo, hi)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert ci_text(diffs) == "+0.67 [-0.75, +2.08] (n=6)" and ci_text([]) == "—"


# ---------------------------------------------------------------- pairing and scopes
@pytest.fixture
def study(tmp_path):
    """GLoRA retrained and LoRA on a design task (mini_digits) and a confirmation task (mini_cells),
    seeds 1-3, GLoRA ahead by seed on design and behind by 1 on confirmation; mini_cells seed 3 has
    no LoRA run (one unpaired key)."""
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        write_run(runs, "mini_digits", seed, "val", "glora_retrain_0.024576M", 80.0 + seed, lr=3e-3)
        write_run(runs, "mini_digits", seed, "val", "lora", 80.0, lr=3e-3)
        write_run(runs, "mini_cells", seed, "val", "glora_retrain_0.024576M", 70.0, lr=3e-3)
        if seed != 3:
            write_run(runs, "mini_cells", seed, "val", "lora", 71.0, lr=3e-3)
    return runs


def test_pairs_per_task_and_seed_with_design_and_confirmation_apart(study, tmp_path):
    """Fails if differences are not paired by (task, seed), if a missing partner is not dropped and
    counted, or if design and confirmation tasks (and the groups) are mixed up."""
    md, _, _ = report(study, tmp_path)
    design = [1.0, 2.0, 3.0]
    confirmation = [-1.0, -1.0]
    line = next(x for x in md.splitlines() if x.startswith("| val | glora_retrain − lora |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(x for x in md.splitlines() if x.startswith("| protocol | A − B |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    by = dict(zip(columns, cells))
    assert by["all"] == ci_text(design + confirmation)
    assert by["design"] == ci_text(design) == "+2.00 [+1.00, +3.00] (n=3)"
    assert by["confirmation"] == "-1.00 [-1.00, -1.00] (n=2)"
    assert by["natural"] == ci_text(design) and by["specialized"] == ci_text(confirmation)
    assert by["unpaired"] == "1"
    assert "structured" not in columns  # no task of that group ran


def test_paired_drops_unmatched_keys():
    recs = [{"dataset": "mini_loc", "seed": s, "protocol": "val", "name": n, "test_acc1": a}
            for s, n, a in ((1, "glora", 60.0), (1, "lora", 58.0), (2, "glora", 61.0), (3, "lora", 50.0))]
    diffs, dropped = paired(recs, "glora", "lora", "val")
    assert diffs == {("mini_loc", 1): 2.0} and dropped == 2


# ---------------------------------------------------------------- lr grid and compute-matched rows
def test_lr_is_picked_on_val200_and_only_its_test_counts(tmp_path):
    """Fails if the report keeps the lr with the best test accuracy (or averages the grid), if the
    retrain row is not judged by its val run at the same lr, or if lora_long merges into lora."""
    runs = tmp_path / "runs"
    write_run(runs, "mini_ori", 1, "val", "lora_lr0.001", test=90.0, val=60.0, lr=1e-3)
    write_run(runs, "mini_ori", 1, "val", "lora_lr0.003", test=70.0, val=65.0, lr=3e-3)
    write_run(runs, "mini_ori", 1, "val", "lora_long_lr0.003", test=75.0, val=66.0, epochs=120, lr=3e-3)
    write_run(runs, "mini_ori", 1, "val", "glora_retrain_0.024576M_lr0.003", test=72.0, val=64.0, lr=3e-3)
    write_run(runs, "mini_ori", 1, "val", "glora_0.024576M", test=71.0, val=69.0, epochs=100)
    _, rows, _ = report(runs, tmp_path)
    chosen = {(r["method"], r["lr"]): r["lr_selected"] for r in rows}
    assert chosen[("lora", "0.001")] == "0" and chosen[("lora", "0.003")] == "1"
    assert {r["method"] for r in rows} == {"lora", "lora_long", "glora_retrain", "glora"}
    long = next(r for r in rows if r["method"] == "lora_long")
    assert (long["epochs"], long["lr_selected"], long["test_acc1"]) == ("120", "1", "75.0")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| val | glora_retrain − lora | +2.00 [+2.00, +2.00] (n=1)" in md  # 72 - 70, not 72 - 90
    assert "| val | glora_retrain − lora_long | -3.00" in md and "| val | glora − lora | +1.00" in md


def test_long_format_csv_has_every_run_and_its_columns(study, tmp_path):
    _, rows, _ = report(study, tmp_path)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 11  # 3 + 3 + 3 + 2 results.json
    row = next(r for r in rows if r["task"] == "mini_cells" and r["method"] == "lora" and r["seed"] == "2")
    assert row == {"task": "mini_cells", "group": "specialized", "role": "confirmation", "method": "lora",
                   "protocol": "val", "seed": "2", "budget_M": "", "weights": "trained", "init": "fresh",
                   "lr": "0.003", "lr_selected": "1", "test_acc1": "71.0", "search_acc1": "50.0",
                   "selection_split": "val200", "params": "24576", "epochs": "20",
                   "run": "mini_cells/seed2/val/lora"}


def test_demo_table_points_to_the_study_with_one_seed_and_gives_a_ci_with_several(study, tmp_path):
    """Fails if the demo's table reads as a verdict from one seed."""
    _, _, table = report(study, tmp_path)
    assert "glora_retrain − lora [val]: +0.80 [" in table and "(n=5)" in table
    one = tmp_path / "one"
    write_run(one, "mini_digits", 1, "val", "lora", 80.0, lr=3e-3)
    write_run(one, "mini_digits", 1, "val", "glora_retrain_0.024576M", 81.0, lr=3e-3)
    _, _, table = report(one, tmp_path / "b")
    assert "One seed per task: this table is no verdict" in table and "glora/configs/verdict.yaml" in table
