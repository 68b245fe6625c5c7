"""vtab.report: published-row arithmetic, sweeps in tmp_path, robustness, and the written files."""
import csv
import json
import math
import sys
from pathlib import Path

import pytest

from tests.helpers import write_result
from vtab.report import (AVERAGES, collect, group_means, load_reference, main, read_result,
                         summarize)

NATURAL = ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"]
SPECIALIZED = ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
STRUCTURED = ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
              "smallnorb_azi", "smallnorb_ele"]
TASKS = NATURAL + SPECIALIZED + STRUCTURED
CSV_HEADER = (["label", "protocol", "selection_split", "params_M"] + TASKS
              + ["natural", "specialized", "structured", "mean_of_groups", "mean_19"])
GLORA_1M = "ours: glora@1.0M [val, selected on val200]"


def run_report(runs: Path, out: Path, *extra: str) -> tuple[str, list[dict]]:
    """Run the CLI without the (slow) plot; return report.md and the parsed summary.csv rows."""
    assert main([str(runs), "--out", str(out), "--no-plot", *extra]) == 0
    with open(out / "summary.csv", newline="") as f:
        return (out / "report.md").read_text(), list(csv.DictReader(f))


def by_label(rows: list[dict], label: str) -> dict:
    (row,) = [r for r in rows if r["label"] == label]
    return row


# ---------------------------------------------------------------- the published rows
def test_reference_task_order_and_groups():
    ref = load_reference()
    assert ref.tasks == TASKS
    assert ref.groups == {"natural": NATURAL, "specialized": SPECIALIZED,
                          "structured": STRUCTURED}
    assert [r.method for r in ref.rows][-1] == "glora" and len(ref.rows) == 10


def test_reference_glora_row_matches_the_papers_means():
    glora = [r for r in load_reference().rows if r.method == "glora"][0]
    s = summarize(glora.acc())
    assert (round(s["natural"], 2), round(s["specialized"], 2), round(s["structured"], 2)) \
        == (83.61, 87.03, 63.27)
    assert round(s["mean_of_groups"], 2) == 77.97
    assert s["mean_19"] == pytest.approx(1439.6 / 19)  # 585.3 + 348.1 + 506.2 over 19 tasks
    assert round(s["mean_19"], 2) == 75.77


def test_reference_lora_row_by_hand():
    lora = [r for r in load_reference().rows if r.method == "lora"][0]
    assert lora.params_M == 0.29
    natural = (67.1 + 91.4 + 69.4 + 98.8 + 90.4 + 85.3 + 54.0) / 7       # 556.4 / 7
    specialized = (84.9 + 95.3 + 84.4 + 73.6) / 4                          # 338.2 / 4
    structured = (82.9 + 69.2 + 49.8 + 78.5 + 75.7 + 47.1 + 31.0 + 44.0) / 8  # 478.2 / 8
    s = summarize(lora.acc())
    assert s["natural"] == pytest.approx(natural) and s["specialized"] == pytest.approx(specialized) == pytest.approx(84.55)
    assert s["structured"] == pytest.approx(structured)
    assert s["mean_of_groups"] == pytest.approx((natural + 84.55 + structured) / 3)
    assert round(s["mean_of_groups"], 2) == 74.60
    assert s["mean_19"] == pytest.approx((556.4 + 338.2 + 478.2) / 19)


def test_reference_copy_keeps_sources_and_matches_the_upstream_file_if_present():
    """Fails if vtab/reference.csv is missing or loses its sources, or (where the upstream copy
    sits next to this checkout) its rows drift from it. Without the upstream file only the repo's
    own copy is checked: nothing is skipped."""
    ours = Path(__file__).resolve().parents[2] / "vtab" / "reference.csv"
    text = ours.read_text()
    assert "Sources:" in text and "2026-11-28" in text
    data = lambda t: [l for l in t.splitlines() if l.strip() and not l.startswith("#")]  # noqa
    assert len(data(text)) == 1 + len(load_reference().rows)  # header + the published rows
    upstream = Path(__file__).resolve().parents[3] / "shared" / "reference" / "vtab1k_reference.csv"
    if upstream.exists():
        assert data(text) == data(upstream.read_text())


def test_group_means_of_an_incomplete_group_is_none():
    acc = {t: 50.0 for t in NATURAL}
    assert group_means(acc) == {"natural": 50.0, "specialized": None, "structured": None}
    assert summarize(acc)["mean_of_groups"] is None and summarize(acc)["mean_19"] is None


def test_task_order_agrees_with_the_task_registry():
    """Fails if the report's task order or groups drift from vtab/tasks.py (or it cannot be imported)."""
    from vtab import tasks
    assert list(tasks.VTAB_TASKS) == TASKS
    groups = load_reference().groups
    assert all(tasks.TASKS[t].group == g for g, names in groups.items() for t in names)


# ---------------------------------------------------------------- sweeps
def test_two_task_sweep_means_and_missing_tasks(tmp_path):
    runs = tmp_path / "runs"
    for task, accs in {"cifar": (70.0, 72.0), "dtd": (60.0, 65.0)}.items():
        for seed, acc in enumerate(accs, start=1):
            write_result(runs, task, acc, seed=seed)
    md, rows = run_report(runs, tmp_path / "out")
    row = by_label(rows, GLORA_1M)
    assert (row["protocol"], row["selection_split"]) == ("val", "val200")
    assert float(row["cifar"]) == 71.0 and float(row["dtd"]) == 62.5
    assert float(row["params_M"]) == pytest.approx(0.8)
    assert all(row[k] == "" for k in ["caltech101", "natural", "specialized", *AVERAGES])
    assert f"71.00 ±{math.sqrt(2):.2f} (n=2)" in md  # sample std of 70, 72
    assert f"62.50 ±{math.sqrt(12.5):.2f} (n=2)" in md  # sample std of 60, 65
    natural_gap = "natural missing " + ", ".join(t for t in NATURAL if t not in ("cifar", "dtd"))
    assert f"- {GLORA_1M}: {natural_gap}; specialized missing {', '.join(SPECIALIZED)}" in md
    assert "No results for 17 of the 19 tasks: caltech101, oxford_flowers102" in md
    assert "selected on the test set" in md


def test_full_sweep_group_means_and_averages(tmp_path):
    runs = tmp_path / "runs"
    for i, task in enumerate(TASKS):  # two seeds 50+i -/+ 1: mean 50 + i
        write_result(runs, task, 49.0 + i, seed=1)
        write_result(runs, task, 51.0 + i, seed=2)
    md, rows = run_report(runs, tmp_path / "out")
    row = by_label(rows, GLORA_1M)
    natural, specialized, structured = 53.0, 58.5, 64.5  # 50 + mean(0..6), (7..10), (11..18)
    assert float(row["natural"]) == natural and float(row["specialized"]) == specialized
    assert float(row["structured"]) == structured
    assert float(row["mean_of_groups"]) == pytest.approx((53.0 + 58.5 + 64.5) / 3, abs=1e-4)
    assert float(row["mean_19"]) == 59.0
    assert f"| {GLORA_1M} | 0.8 | 19/19 | 53.00 | 58.50 | 64.50 | 58.67 | 59.00 |" in md
    assert "Every task has results." in md and "missing" not in md.split("## Missing")[0]


def test_budgets_protocols_and_method_filter(tmp_path):
    runs = tmp_path / "runs"
    write_result(runs, "cifar", 70.0, budget=1.0)
    write_result(runs, "cifar", 60.0, budget=0.5)
    write_result(runs / "paper", "cifar", 75.0, budget=1.0, protocol="paper", split="test")
    write_result(runs / "lora", "cifar", 65.0, budget=0.29, method="lora")
    _, rows = run_report(runs, tmp_path / "out")
    assert {r["label"]: float(r["cifar"]) for r in rows if r["label"].startswith("ours")} == {
        "ours: glora@0.5M [val, selected on val200]": 60.0, GLORA_1M: 70.0,
        "ours: glora@1.0M [paper, selected on test]": 75.0,
        "ours: lora@0.29M [val, selected on val200]": 65.0}
    _, rows = run_report(runs, tmp_path / "only_lora", "--methods", "lora")
    assert [r["label"] for r in rows] == ["ours: lora@0.29M [val, selected on val200]",
                                          "published: lora"]


def test_unreadable_results_are_named_not_fatal(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_result(runs, "cifar", 70.0)
    (runs / "dtd" / "bad").mkdir(parents=True)
    (runs / "dtd" / "bad" / "results.json").write_text('{"dataset": "dtd", "test_')
    nan = write_result(runs, "svhn", 1.0)
    nan.write_text(nan.read_text().replace('"test_acc1": 1.0', '"test_acc1": NaN'))
    partial = write_result(runs, "eurosat", 1.0)
    partial.write_text(json.dumps({"dataset": "eurosat", "method": "glora"}))
    md, rows = run_report(runs, tmp_path / "out")
    assert "`dtd/bad/results.json`: not readable JSON" in md
    assert "`svhn/1.0M_seed1/results.json`: test_acc1 is not a finite number: nan" in md
    assert "`eurosat/1.0M_seed1/results.json`: missing protocol, selection_split, test_acc1" in md
    assert "warning: skipped dtd/bad/results.json" in capsys.readouterr().err
    assert by_label(rows, GLORA_1M)["svhn"] == "" and float(by_label(rows, GLORA_1M)["cifar"]) == 70
    with pytest.raises(ValueError, match="not a JSON object"):
        (tmp_path / "list.json").write_text("[1, 2]")
        read_result(tmp_path / "list.json")


def test_mini_tasks_go_to_the_separate_table(tmp_path):
    runs = tmp_path / "runs"
    write_result(runs, "cifar", 70.0)
    for seed, acc in ((1, 90.0), (2, 94.0)):
        write_result(runs, "mini_digits", acc, seed=seed, params=12_000)
    write_result(runs, "mini_count", 55.5, params=12_000)
    md, rows = run_report(runs, tmp_path / "out")
    other = md.split("## Other tasks")[1]
    assert f"| mini_count | glora | {GLORA_1M} | 55.50 | 0.012 |" in other
    assert f"| mini_digits | glora | {GLORA_1M} | 92.00 ±2.83 (n=2) | 0.012 |" in other
    assert "mini_digits" not in md.split("## Other tasks")[0]
    assert list(rows[0]) == CSV_HEADER and "mini_digits" not in rows[0]


def test_mini_only_sweep_still_reports(tmp_path):
    runs = tmp_path / "runs"
    write_result(runs, "mini_loc", 80.0)
    md, rows = run_report(runs, tmp_path / "out")
    assert "No results for 19 of the 19 tasks" in md and "| mini_loc |" in md
    assert [r["label"] for r in rows][0] == "published: full_finetune"


# ---------------------------------------------------------------- files and CLI
def test_csv_parses_back_with_published_rows(tmp_path):
    runs = tmp_path / "runs"
    write_result(runs, "cifar", 70.0)
    _, rows = run_report(runs, runs)  # --out defaults aside, writing into RUNS_DIR works
    assert list(rows[0]) == CSV_HEADER and len(rows) == 1 + 10
    glora = by_label(rows, "published: glora")
    assert (glora["protocol"], float(glora["params_M"]), float(glora["cifar"])) == \
        ("published", 0.86, 76.4)
    assert round(float(glora["mean_of_groups"]), 2) == 77.97
    assert (runs / "report.md").exists()


def test_out_defaults_to_runs_dir_and_png_is_written(tmp_path):
    runs = tmp_path / "runs"
    write_result(runs, "cifar", 70.0)
    write_result(runs, "mini_digits", 90.0)
    assert main([str(runs)]) == 0
    png = runs / "accuracy_vs_params.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![accuracy vs params](accuracy_vs_params.png)" in (runs / "report.md").read_text()


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import raise ImportError
    runs = tmp_path / "runs"
    write_result(runs, "cifar", 70.0)
    assert main([str(runs), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Plot skipped: matplotlib is not installed: pip install '.[report]' (or -r requirements-extras.txt)." in md
    assert not (tmp_path / "out" / "accuracy_vs_params.png").exists()
    assert "skipped the plot (matplotlib is not installed: pip install '.[report]'" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["missing", "empty", "only_corrupt"])
def test_nothing_to_report_is_a_one_line_error(tmp_path, capsys, make):
    runs = tmp_path / "runs"
    if make != "missing":
        runs.mkdir()
    if make == "only_corrupt":
        (runs / "results.json").write_text("{")
    assert main([str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtab.report: error: ") and err.count("\n") == 1
    assert str(runs) in err


def test_collect_without_the_cli(tmp_path):
    write_result(tmp_path, "dtd", 61.0)
    rep = collect(tmp_path)
    assert [r.label for r in rep.ours] == ["ours: glora@1.0M [val, selected on val200]"]
    assert rep.ours[0].cells["dtd"].mean == 61.0 and rep.ours[0].cells["dtd"].n == 1
