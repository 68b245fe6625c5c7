"""scripts/demo.sh at a reduced size: the same script and plan a newcomer runs, on one mini task."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_VIT_KWARGS, save_tiny_backbone

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"linear_probe": "linear_probe", "lora": "lora", "glora": "glora_0.004M",
           "glora_retrain": "glora_retrain_0.004M", "full_finetune": "full_finetune"}
SHORT = "--epochs 1 --warmup-epochs 0 --eval-every 1"


@pytest.mark.slow
def test_demo_script_end_to_end_reduced(tmp_path):
    """Fails if the demo's plan loses a method, a model is not exported and tested, the table is
    not printed, or a second run does any work."""
    (tmp_path / "bb").mkdir()
    save_tiny_backbone(tmp_path / "bb" / "backbone.safetensors")  # stands in for the pretrained one
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(tmp_path / "data"), BACKBONE=str(tmp_path / "bb"),
               BUILD_ARGS="--tasks mini_digits", OMP_NUM_THREADS="1")
    argv = ["bash", "scripts/demo.sh", "--runs", str(tmp_path / "runs"), "--tasks", "mini_digits", "--jobs", "2",
            "--budgets", "0.004", "--args", f"--config {tmp_path / 'cfg.yaml'}", "--supernet-args", SHORT,
            "--train-args", SHORT, "--search-args",
            "--population-num 4 --select-num 2 --mutation-num 2 --crossover-num 2 --max-epochs 1"]
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    runs = tmp_path / "runs" / "mini_digits" / "val"
    results = {m: json.loads((runs / f / "results.json").read_text()) for m, f in FOLDERS.items()}
    assert results["linear_probe"]["params"] == 0
    assert results["glora"]["params"] <= 4000 and results["glora"]["method"] == "glora"
    assert results["glora"]["weights"] == "supernet"
    retrained = results["glora_retrain"]
    assert retrained["weights"] == "trained" and retrained["init"] == "inherited"
    searched = yaml.safe_load((runs / "glora_0.004M" / "subnet.yaml").read_text())["layers"]
    assert yaml.safe_load((runs / "glora_retrain_0.004M" / "subnet.yaml").read_text())["layers"] == searched
    assert results["lora"]["method"] == "lora" and results["full_finetune"]["method"] == "full_finetune"
    for method, res in results.items():
        assert res["test_n"] == 797 and res["test_acc1"] == res["test_acc1_merged"]
        assert (runs / FOLDERS[method] / "merged" / "model.safetensors").is_file()
        assert res["config"]["data_path"] == str(tmp_path / "data")
    table = (tmp_path / "runs" / "table.md").read_text().splitlines()
    assert table[0].startswith("| method | budget (M) | weights | protocol | seeds | mini_digits | mean |")
    assert len([row for row in table[2:] if row.startswith("| ")]) == 5
    assert f"| {results['glora']['test_acc1']:.2f} |" in next(r for r in table if r.startswith("| glora |"))
    assert table[0] in run.stdout
    assert "One seed per task: this table is no verdict" in run.stdout  # it points to the study's CIs
    # A second run finds everything done and only prints the table again.
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "start" not in again.stdout
    assert "10 jobs: 10 done (10 already finished)" in again.stdout and table[0] in again.stdout
