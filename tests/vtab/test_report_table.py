"""The report's by-method table (table.md): seeds as mean ± std, the mean over tasks with the std of
the per-seed means, GLoRA's variants and the protocols as columns."""
import json
import statistics

from tests.helpers import write_result
from vtab.report import main


def write(runs, task, acc, seed, folder="x", extra=None, **kw):
    """One results.json (tests/test_report.py's helper) with ``extra`` fields set."""
    path = write_result(runs / folder, task, acc, seed=seed, **kw)
    path.write_text(json.dumps({**json.loads(path.read_text()), **(extra or {})}))


def test_table_rows_seeds_means_and_variants(tmp_path):
    """Fails if seeds are not averaged per task with their sample std, if the mean column mixes
    seeds instead of averaging the per-seed task means, if GLoRA's inherited, retrained and fresh
    runs share a row, or if the rows are not in the method order."""
    runs = tmp_path / "runs"
    accs = {"cifar": (70.0, 72.0, 74.0), "dtd": (60.0, 61.0, 65.0)}
    for task, values in accs.items():
        for seed, acc in enumerate(values, start=1):
            write(runs, task, acc, seed, extra={"search_acc1": acc + 2.0})
            write(runs, task, acc - 5, seed, method="lora", budget=None, folder="lora")
            write(runs, task, acc + 1, seed, folder="warm", extra={"weights": "trained", "init": "inherited",
                                                                   "search_split_in_training": True})
    write(runs, "cifar", 50.0, 1, method="linear_probe", budget=None, folder="lp")
    write(runs, "cifar", 80.0, 1, protocol="paper", split="test", folder="paper")
    assert main([str(runs), "--no-plot", "--tasks", "cifar", "dtd"]) == 0
    table = (runs / "table.md").read_text().splitlines()
    assert table[0] == ("| method | budget (M) | weights | protocol | seeds | cifar | dtd | mean | params (M) | "
                        "search − test |")
    per_seed = [(c + d) / 2 for c, d in zip(accs["cifar"], accs["dtd"])]  # 65, 66.5, 69.5
    mean = f"{statistics.fmean(per_seed):.2f} ±{statistics.stdev(per_seed):.2f}"
    assert table[2] == "| linear_probe | — | trained | val | 1 | 50.00 | — | — | 0.8000 | +1.00 |"
    assert table[3].startswith("| lora | — | trained | val | 3 | 67.00 ±2.00 | 57.00 ±2.65 |")
    assert table[4] == f"| glora | 1 | inherited from supernet | val | 3 | 72.00 ±2.00 | 62.00 ±2.65 | {mean} | " \
                       "0.8000 | +2.00 |"
    assert table[5] == "| glora | 1 | inherited from supernet | paper (selected on test) | 1 | 80.00 | — | — | " \
                       "0.8000 | +1.00 |"
    assert table[6].startswith("| glora | 1 | retrained from supernet | val | 3 | 73.00 ±2.00 | 63.00 ±2.65 |")
    assert table[6].endswith("| — |")  # its selection split was trained on: no gap
    assert "## By method (mean ± std over seeds)" in (runs / "report.md").read_text()
