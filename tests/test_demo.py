"""scripts/demo.sh at a reduced size: the same script a newcomer runs, on one mini task."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_VIT_KWARGS, save_tiny_backbone

REPO = Path(__file__).resolve().parents[1]
METHODS = ("linear_probe", "lora", "glora", "full_finetune")


@pytest.mark.slow
def test_demo_script_end_to_end_reduced(tmp_path):
    """Fails if scripts/demo.sh stops working end to end (build, four methods, export, table), or
    runs another Python than the one running the tests (PYTHON is passed, as a user may set it)."""
    (tmp_path / "bb").mkdir()
    save_tiny_backbone(tmp_path / "bb" / "backbone.safetensors")  # stands in for the pretrained one
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHON=sys.executable, RUNS=str(tmp_path / "runs"), DATA=str(tmp_path / "data"),
               BACKBONE=str(tmp_path / "bb"), CONFIG=str(tmp_path / "cfg.yaml"), TASKS="mini_digits",
               SUPERNET_EPOCHS="1", EPOCHS="1", WARMUP="0", BUDGET="0.004", BUILD_ARGS="--tasks mini_digits",
               SEARCH_ARGS="--population-num 4 --select-num 2 --mutation-num 2 --crossover-num 2 --max-epochs 1")
    run = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    runs = tmp_path / "runs" / "mini_digits"
    results = {m: json.loads((runs / m / "results.json").read_text()) for m in METHODS}
    assert results["linear_probe"]["params"] == 0
    assert results["glora"]["params"] <= 4000 and results["glora"]["method"] == "glora"
    assert results["lora"]["method"] == "lora" and results["full_finetune"]["method"] == "full_finetune"
    for method, res in results.items():
        assert res["test_n"] == 797 and res["test_acc1"] == res["test_acc1_merged"]
        assert (runs / method / "merged" / "model.safetensors").is_file()
    table = (tmp_path / "runs" / "demo_table.md").read_text().splitlines()
    assert len(table) == 2 + 4 and all("mini_digits" in row for row in table[2:])
    assert f"{results['glora']['test_acc1']:.2f}" in table[2 + METHODS.index("glora")]


STAND_IN = """#!/usr/bin/env bash
# Records its arguments instead of running Python.
printf '%s\\n' "$*" >> "$CALLS"
"""


def test_demo_rerun_skips_finished_steps_and_resumes_interrupted_ones(tmp_path):
    """Fails if a second demo run retrains or re-searches finished steps, or restarts an interrupted
    step instead of resuming it (a stand-in records what the script would run)."""
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    runs = tmp_path / "runs"
    for folder in ("train_glora", "train_linear_probe", "train_lora", "train_full"):
        (runs / "mini_digits" / folder).mkdir(parents=True)
        (runs / "mini_digits" / folder / "mini_digits.pt").write_text("x")
        (runs / "mini_digits" / folder / "DONE").write_text("")
    for method in METHODS:
        (runs / "mini_digits" / method).mkdir()
        (runs / "mini_digits" / method / "results.json").write_text("{}")
    env = dict(os.environ, PYTHON=str(python), CALLS=str(tmp_path / "calls"), RUNS=str(runs), TASKS="mini_digits")

    def demo():
        (tmp_path / "calls").unlink(missing_ok=True)
        run = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        return [line.split()[0:2] for line in (tmp_path / "calls").read_text().splitlines()]

    assert demo() == [["-m", "vtab.mini"], ["scripts/demo_table.py", str(runs)]]
    (runs / "mini_digits" / "train_lora" / "DONE").unlink()  # killed after a checkpoint
    (runs / "mini_digits" / "glora" / "results.json").unlink()  # search interrupted
    (runs / "mini_digits" / "glora" / "search_state.json").write_text("{}")
    calls = (tmp_path / "calls")
    assert [c[0] for c in demo()] == ["-m", "evolution.py", "supernet.py", "scripts/demo_table.py"]
    lines = calls.read_text().splitlines()
    assert "--resume" in lines[1].split() and "--resume" in lines[2].split()
    assert "--subnet lora" in lines[2] and "--load_path " + str(runs / "mini_digits" / "train_glora") in lines[1]
