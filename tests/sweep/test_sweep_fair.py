"""python -m glora.sweep: fair baselines. Compute-matched `<baseline>_long` rows, the lr grid (one
job per lr under `val`, the `retrain` row at the lr that won on val200), and the pick itself."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glora.sweep.cli import get_args_parser, plan_from
from glora.sweep.jobs import build_jobs, finished, job_environment
from glora.sweep.pick import chosen_lr
from glora.sweep.plan import PlanError
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone

REPO = Path(__file__).resolve().parents[2]
RECIPE = {"supernet_args": {"epochs": 30, "lr": 3e-3}, "train_args": {"epochs": 6, "eval-every": 6, "lr": 3e-3},
          "budgets": [0.5], "seeds": [1]}


def expand(tmp_path: Path, **plan):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({"runs": str(tmp_path / "r"), "tasks": "mini_cells",
                                                        **RECIPE, **plan}))
    p = plan_from(get_args_parser().parse_args([str(tmp_path / "plan.yaml")]))
    return p, *build_jobs(p)


def value(argv: list[str], flag: str) -> str:
    """The last value of a flag (argparse keeps the last one)."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def test_long_rows_train_for_glora_total_epochs(tmp_path):
    """Fails if lora_long does not get supernet + retrain epochs (30 + 6), if it loses LoRA's own
    flags, or if adding `_long` rows renames the plain rows."""
    plan, jobs, targets = expand(tmp_path, methods=["lora", "lora_long", "full_finetune_long"],
                                 protocols=["val"], method_args={"full_finetune": {"lr": 1e-4}})
    assert plan.long_epochs() == 36
    assert targets == ["mini_cells/seed1/val/lora", "mini_cells/seed1/val/lora_long",
                       "mini_cells/seed1/val/full_finetune_long"]
    long = jobs["mini_cells/seed1/val/lora_long/train"].argv
    assert value(long, "--epochs") == "36" and value(long, "--eval-every") == "36"
    assert value(long, "--subnet") == "lora" and value(long, "--lr") == "0.003"
    assert value(jobs["mini_cells/seed1/val/lora/train"].argv, "--epochs") == "6"
    ft = jobs["mini_cells/seed1/val/full_finetune_long/train"].argv
    assert "--full-finetune" in ft and value(ft, "--lr") == "0.0001" and value(ft, "--epochs") == "36"


def test_lr_grid_expands_val_per_lr_and_retrain_once_at_the_pick(tmp_path):
    """Fails if the grid does not give one val job per lr (its --lr last, over method_args), if the
    supernet or the inherited GLoRA row gets a grid, or if the retrain row does not wait for the val
    grid of its own row and pick from it."""
    _, jobs, targets = expand(tmp_path, methods=["glora", "glora_retrain", "lora", "full_finetune"],
                              protocols=["val", "retrain"], lr_grid=[1e-3, 1e-2],
                              method_args={"full_finetune": {"lr": 1e-4, "lr_grid": [3e-5, 3e-4]}})
    base = "mini_cells/seed1"
    assert targets == [f"{base}/val/glora_0.5M",
                       f"{base}/val/glora_retrain_0.5M_lr0.001", f"{base}/val/glora_retrain_0.5M_lr0.01",
                       f"{base}/val/lora_lr0.001", f"{base}/val/lora_lr0.01",
                       f"{base}/val/full_finetune_lr3e-05", f"{base}/val/full_finetune_lr0.0003",
                       f"{base}/retrain/glora_retrain_0.5M", f"{base}/retrain/lora", f"{base}/retrain/full_finetune"]
    assert value(jobs[f"{base}/val/supernet"].argv, "--lr") == "0.003"
    assert "--lr" not in jobs[f"{base}/val/glora_0.5M"].argv
    assert value(jobs[f"{base}/val/lora_lr0.01/train"].argv, "--lr") == "0.01"
    assert value(jobs[f"{base}/val/full_finetune_lr3e-05/train"].argv, "--lr") == "3e-05"
    retrain = jobs[f"{base}/retrain/glora_retrain_0.5M/train"]
    assert retrain.deps[:2] == [f"{base}/val/glora_retrain_0.5M_lr0.001", f"{base}/val/glora_retrain_0.5M_lr0.01"]
    assert retrain.pick == {0.001: tmp_path / "r" / base / "val/glora_retrain_0.5M_lr0.001",
                            0.01: tmp_path / "r" / base / "val/glora_retrain_0.5M_lr0.01"}
    assert retrain.command()[1:3] == ["-m", "glora.sweep.pick"] and "--init-from" in retrain.argv
    assert retrain.resolved_argv() is None and finished(retrain) is None  # nothing scored yet
    lora = jobs[f"{base}/retrain/lora/train"]
    assert lora.deps == [f"{base}/val/lora_lr0.001", f"{base}/val/lora_lr0.01"]


def test_without_a_grid_nothing_changes(tmp_path):
    """Fails if a plan without lr_grid (the demo, the seeded study) gets new folder names or flags."""
    _, jobs, targets = expand(tmp_path, methods=["lora", "glora_retrain"], protocols=["val", "retrain"])
    assert targets == ["mini_cells/seed1/val/lora", "mini_cells/seed1/val/glora_retrain_0.5M",
                       "mini_cells/seed1/retrain/lora", "mini_cells/seed1/retrain/glora_retrain_0.5M"]
    assert all(not j.pick for j in jobs.values())


@pytest.mark.parametrize("plan, message", [
    ({"lr_grid": [0.01, -1]}, "lr_grid value -1 is not a finite positive number"),
    ({"methods": ["glora_long"]}, "unknown method 'glora_long'"),
    ({"method_args": {"lora": {"lr_grid": ["x"]}}}, "method_args: lora: lr_grid value 'x'"),
])
def test_bad_grid_or_long_method_is_one_error(tmp_path, plan, message):
    with pytest.raises(PlanError, match=message):
        expand(tmp_path, **{"methods": ["lora"], **plan})


def scored(folder: Path, val: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"search_acc1": val, "test_acc1": 100.0 - val}))
    return folder


def test_pick_takes_the_best_val200_and_the_smaller_lr_on_a_tie(tmp_path):
    """Fails if the pick reads the test accuracy, breaks ties towards the larger lr, or picks before
    every candidate finished."""
    a, b, c = scored(tmp_path / "a", 60.0), scored(tmp_path / "b", 70.0), scored(tmp_path / "c", 70.0)
    assert chosen_lr({1e-3: a, 3e-3: b, 1e-2: c}) == 3e-3
    assert chosen_lr({1e-2: c, 3e-3: b}) == 3e-3
    assert chosen_lr({1e-3: a, 3e-3: tmp_path / "missing"}) is None


def test_pick_runs_the_command_with_the_picked_lr(tmp_path):
    a, b = scored(tmp_path / "a", 55.0), scored(tmp_path / "b", 50.0)
    script = "import sys; print(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-m", "glora.sweep.pick", f"0.001={a}", f"0.01={b}", "--",
                           sys.executable, "-c", script, "--epochs", "3"], capture_output=True, text=True,
                          cwd=tmp_path, env=job_environment(dict(os.environ)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["pick: lr 0.001 (val200 of 2 runs)", "['--epochs', '3', '--lr', '0.001']"]


# ---------------------------------------------------------------- a real tiny sweep with a grid
def test_tiny_sweep_with_grid_retrains_at_the_pick_and_reports_it(tmp_path):
    """Fails if the retrain row does not run at the lr its val grid picked, if a second run redoes
    any job (the pick must be resolved to decide that a picked job is finished), or if the report
    does not keep exactly one lr per row."""
    make_noah_task(tmp_path / "data", "eurosat", num_classes=10)
    save_tiny_backbone(tmp_path / "bb.safetensors")
    model = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
             "pretrained": str(tmp_path / "bb.safetensors"), "data_path": str(tmp_path / "data"), "batch_size": 16}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    plan = {"runs": str(tmp_path / "runs"), "tasks": ["eurosat"], "methods": ["lora", "lora_long"],
            "protocols": ["val", "retrain"], "seeds": [1], "lr_grid": [1e-3, 1e-1],
            "args": {"config": str(tmp_path / "model.yaml"), "no-progress": True},
            "supernet_args": {"epochs": 1}, "train_args": {"epochs": 1, "lr": 1e-2}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    argv = [sys.executable, "-m", "glora.sweep", str(tmp_path / "plan.yaml"), "--jobs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "sweep: 12 jobs: 12 done" in res.stdout
    runs = tmp_path / "runs" / "eurosat" / "seed1"
    for row in ("lora", "lora_long"):
        scores = {lr: json.loads((runs / "val" / f"{row}_lr{lr:g}" / "results.json").read_text())["search_acc1"]
                  for lr in (1e-3, 1e-1)}
        picked = max(scores, key=lambda lr: (scores[lr], -lr))
        args = yaml.safe_load((runs / "retrain" / row / "train" / "eurosat_args.yaml").read_text())
        assert args["lr"] == picked and args["epochs"] == (2 if row == "lora_long" else 1)
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "start" not in again.stdout
    with open(tmp_path / "runs" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(r["lr_selected"] == "1" for r in rows) == 4
