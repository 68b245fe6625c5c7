"""scripts/demo.sh at a reduced size: the same script a newcomer runs, on one mini task."""
import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.conftest import TINY_VIT_KWARGS, save_tiny_backbone

REPO = Path(__file__).resolve().parents[1]
METHODS = ("linear_probe", "lora", "glora", "full_finetune")


def test_demo_script_end_to_end_reduced(tmp_path):
    (tmp_path / "bb").mkdir()
    save_tiny_backbone(tmp_path / "bb" / "backbone.safetensors")  # stands in for the pretrained one
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, RUNS=str(tmp_path / "runs"), DATA=str(tmp_path / "data"),
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
    # A second run finds everything done and only prints the table again.
    again = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "epoch" not in again.stdout and "loaded" not in again.stdout
