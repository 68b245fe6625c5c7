"""The built wheel runs the whole job: installed (not editable) into a fresh virtual environment and
run outside the repository, its console scripts take a generated mini task from supernet through
search to an exported timm folder, and the shipped plans are found by name."""
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone

SCRIPTS = ("glora-supernet", "glora-evolution", "glora-sweep", "glora-export-peft")


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from a copy of the sources (the checkout stays clean).

    The venv borrows this interpreter's third-party packages (torch, timm, ...) through a plain
    path line, which adds their folder but runs none of its .pth files: an editable install of
    this project there stays invisible, so only the wheel can provide ``glora``.
    """
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in ("glora", "vtab"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", source)
    wheel = next((root / "dist").glob("glora-*.whl"))
    env = root / "venv"
    run(sys.executable, "-m", "venv", env)
    python = env / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "borrowed.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel)
    return env


def clean_env() -> dict[str, str]:
    """This environment without anything that would point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_the_wheel_is_what_runs(venv, tmp_path):
    """Fails if the installed package is not the wheel's copy (a checkout on the path would hide a
    missing module or data file), or a console script is missing."""
    found = run(venv / "bin" / "python", "-c", "import glora, vtab; print(glora.__file__); print(vtab.__file__)",
                cwd=tmp_path, env=clean_env()).stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in found), found
    for script in SCRIPTS:
        assert "usage:" in run(venv / "bin" / script, "--help", cwd=tmp_path, env=clean_env()).stdout


def test_a_shipped_plan_is_found_by_name(venv, tmp_path):
    """Fails if the plans are not package data or cannot be named (``glora-sweep demo``), including
    the model config the demo plan names (mini_vtab), also by its old path configs/mini_vtab.yaml."""
    out = run(venv / "bin" / "glora-sweep", "demo", "--tasks", "mini_digits", "--dry-run",
              cwd=tmp_path, env=clean_env()).stdout
    assert "[todo] mini_digits/val/supernet" in out
    assert "-m glora.run.supernet --dataset mini_digits" in out and "--config mini_vtab" in out
    config = run(venv / "bin" / "python", "-c",
                 "from glora.run.config import find_config; print(find_config('configs/mini_vtab.yaml'))",
                 cwd=tmp_path, env=clean_env()).stdout.strip()
    assert Path(config).is_relative_to(venv) and yaml.safe_load(Path(config).read_text())["input_size"] == 32


@pytest.mark.slow
def test_a_tiny_sweep_runs_end_to_end_from_the_wheel(venv, tmp_path):
    """Fails if the installed package cannot run supernet -> search -> export on its own (a job
    importing the top-level scripts, the sweep launching a file of the checkout, ...)."""
    work = tmp_path / "outside"
    make_noah_task(work / "data", "mini_digits", num_classes=10)
    save_tiny_backbone(work / "bb.safetensors")
    model = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
             "pretrained": "bb.safetensors", "data_path": "data", "batch_size": 16}
    (work / "model.yaml").write_text(yaml.safe_dump(model))
    plan = {"runs": "runs", "tasks": ["mini_digits"], "methods": ["glora"], "budgets": [0.006],
            "args": {"config": "model.yaml", "no-progress": True},
            "supernet_args": {"epochs": 2, "eval-every": 2, "lr": 1e-2},
            "search_args": {"population-num": 4, "select-num": 2, "mutation-num": 2, "crossover-num": 2,
                            "max-epochs": 1}}
    (work / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = run(venv / "bin" / "glora-sweep", "plan.yaml", "--jobs", "1", "--no-report", cwd=work,
              env=clean_env()).stdout
    assert "2 done" in out, out
    result = json.loads((work / "runs/mini_digits/val/glora_0.006M/results.json").read_text())
    assert result["method"] == "glora" and result["params"] <= 6000
    merged = work / "runs/mini_digits/val/glora_0.006M/merged"
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    log = (work / "runs/mini_digits/val/supernet.log").read_text()
    assert f"{venv}/bin/python -m glora.run.supernet" in log or "-m glora.run.supernet" in log
