"""scripts/vtab_sweep.sh: a real sweep of two generated tasks on a tiny ViT (run, skip, resume, a
failing task, the report), then the orchestration details against a stand-in python."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vtab_sweep.sh"
SWEEP_VARS = ("RUNS", "BUDGETS", "SEEDS", "LORA_RANK", "LR", "MODEL", "PROTOCOL", "GPUS", "CONFIG",
              "EXTRA_SUPERNET_ARGS", "EXTRA_SEARCH_ARGS", "PYTHON", "NO_REPORT", "PROGRESS")
TASKS = ("eurosat", "patch_camelyon")
STEPS = ("supernet", "0.006M_seed1")


def sweep_env(**env) -> dict:
    """The caller's environment without any sweep settings, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in SWEEP_VARS}
    return {**base, "PYTHON": sys.executable, **env}


def sweep(*args, timeout=600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=sweep_env(**env), capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- a real sweep
@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """Two learnable tasks, one per worker, then the report."""
    root = tmp_path_factory.mktemp("sweep")
    make_noah_task(root / "data", "eurosat", num_classes=10)
    make_noah_task(root / "data", "patch_camelyon", num_classes=2)
    save_tiny_backbone(root / "bb.safetensors")
    cfg = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
           "pretrained": str(root / "bb.safetensors"), "data_path": str(root / "data")}
    (root / "model.yaml").write_text(yaml.safe_dump(cfg))
    env = {"RUNS": str(root / "runs dir"), "CONFIG": str(root / "model.yaml"), "BUDGETS": "0.006",
           "LR": "1e-2", "GPUS": "0 1",
           "EXTRA_SUPERNET_ARGS": "--epochs 1 --eval-every 1 --batch-size 16",
           "EXTRA_SEARCH_ARGS": "--population-num 4 --select-num 2 --mutation-num 2 "
                                "--crossover-num 2 --max-epochs 1"}
    result = sweep(*TASKS, **env)
    return root / "runs dir", env, result


def private_copy(first, tmp_path):
    """The first sweep's runs folder copied for one test (same settings, its own RUNS)."""
    runs, env, _ = first
    copy = tmp_path / "runs dir"
    shutil.copytree(runs, copy)
    return copy, {**env, "RUNS": str(copy)}


@pytest.mark.slow
def test_sweep_runs_both_commands_per_task_then_the_report(first):
    runs, _, res = first
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    for task in TASKS:
        assert (runs / task / "supernet" / f"{task}.pt").is_file()
        assert (runs / task / "supernet" / "DONE").is_file()
        result = json.loads((runs / task / "0.006M_seed1" / "results.json").read_text())
        assert result["dataset"] == task and result["param_limit_M"] == 0.006
        assert result["model"] == "vit_tiny_patch16_224"  # the YAML's model: no --model default
        for step in STEPS:
            assert f"{task} {step}: run" in out and f"{task} {step}: ok" in out
            assert (runs / task / f"{step}.log").is_file()
    assert "vtab_sweep summary: 2 of 2 task(s) done" in out and "done: eurosat patch_camelyon" in out
    # One worker per GPU, each pinned.
    assert "CUDA_VISIBLE_DEVICES=0 " in (runs / "eurosat" / "supernet.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=1 " in (runs / "patch_camelyon" / "0.006M_seed1.log").read_text()
    report = (runs / "report.md").read_text()
    assert "glora@0.006M" in report and "No results for 17 of the 19 tasks" in report
    missing = report.split("## Missing")[1]
    assert "eurosat" not in missing and "patch_camelyon" not in missing and "dtd" in missing
    assert (runs / "report.csv").is_file() and "report: wrote" in out


@pytest.mark.slow
def test_second_sweep_skips_everything(first, tmp_path):
    runs, env = private_copy(first, tmp_path)
    results = [runs / t / "0.006M_seed1" / "results.json" for t in TASKS]
    before = [p.stat().st_mtime_ns for p in results]
    res = sweep(*TASKS, **env, NO_REPORT="1")
    assert res.returncode == 0, res.stdout + res.stderr
    for task in TASKS:
        for step in STEPS:
            assert f"{task} {step}: skip (done)" in res.stdout
    assert ": run" not in res.stdout and ": resume" not in res.stdout
    assert [p.stat().st_mtime_ns for p in results] == before
    assert "2 of 2 task(s) done" in res.stdout and "report: skip" in res.stdout


@pytest.mark.slow
def test_interrupted_supernet_resumes_while_a_task_without_data_fails(first, tmp_path):
    runs, env = private_copy(first, tmp_path)
    (runs / "eurosat" / "supernet" / "DONE").unlink()  # as if killed after the last checkpoint
    res = sweep("dtd", "eurosat", **env, NO_REPORT="1")  # dtd: no data folder
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "eurosat supernet: resume" in out and "eurosat 0.006M_seed1: skip (done)" in out
    commands = [l for l in (runs / "eurosat" / "supernet.log").read_text().splitlines() if l.startswith("=== ")]
    assert len(commands) == 2 and "--resume" not in commands[0]
    assert commands[1].endswith("--no-progress --resume --epochs 1 --eval-every 1 --batch-size 16")
    assert (runs / "eurosat" / "supernet" / "DONE").is_file()
    log = runs / "dtd" / "supernet.log"
    assert "dtd supernet: FAILED (exit 1" in out
    assert "vtab_sweep summary: 1 of 2 task(s) done" in out and "done: eurosat" in out
    assert "FAILED  dtd supernet: exit 1: error: task folder" in out and str(log) in out
    assert "FAILED  dtd 0.006M_seed1: not run" in out
    assert not (runs / "dtd" / "supernet" / "DONE").exists()


# ---------------------------------------------------------------- against a stand-in python
FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stand-in for python: records each call, writes what the real command would.
[[ "$1" == - ]] && exec "$REAL_PYTHON" "$@"   # the script's task-name lookup
line="$(printf '\t%s' "$@")"
printf '%s%s\n' "${CUDA_VISIBLE_DEVICES-none}" "$line" >> "$CALLS"  # one write: workers run at once
if [[ "$1" == -m ]]; then echo "# report" > "$3/report.md"; exit 0; fi
script=$1; shift
while (($#)); do case "$1" in --dataset) ds=$2 ;; --save_path) out=$2 ;; esac; shift; done
if [[ -n "${FAKE_SLEEP:-}" ]]; then
    trap 'kill $! 2>/dev/null; echo "got SIGINT"; exit 1' INT
    echo "sleeping"
    sleep "$FAKE_SLEEP" & wait $!
fi
mkdir -p "$out"
if [[ $script == supernet.py ]]; then echo x > "$out/$ds.pt"; else echo '{}' > "$out/results.json"; fi
"""


@pytest.fixture
def fake(tmp_path):
    """env for a sweep whose python is the stand-in; ``calls()`` -> [(CUDA_VISIBLE_DEVICES, argv)]."""
    exe = tmp_path / "fakepython"
    exe.write_text(FAKE_PYTHON)
    exe.chmod(0o755)
    env = {"PYTHON": str(exe), "REAL_PYTHON": sys.executable, "CALLS": str(tmp_path / "calls"),
           "RUNS": str(tmp_path / "runs")}

    def calls():
        path = tmp_path / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(line.split("\t")[0], line.split("\t")[1:]) for line in lines]

    return env, calls


def test_help_and_usage_errors():
    res = sweep("--help")
    assert res.returncode == 0 and res.stdout.startswith("vtab_sweep.sh - the VTAB-1k sweep")
    for word in ("--budgets", "LORA_RANK", "GPUS", "CONFIG", "EXTRA_SUPERNET_ARGS", "EXTRA_SEARCH_ARGS",
                 "NO_REPORT", "smallnorb_ele", "--resume"):
        assert word in res.stdout
    for args, env, message in [(["--protocol", "test"], {}, "protocol 'test'"),
                               (["--frobnicate", "1"], {}, "unknown option --frobnicate"),
                               ([], {"BUDGETS": "1M"}, "budget '1M'"),
                               ([], {"LORA_RANK": "0"}, "rank '0'"),
                               (["../etc"], {}, "'../etc' is not a task name")]:
        res = sweep(*args, **env)
        assert res.returncode == 2 and message in res.stderr, res.stderr


def test_commands_aliases_budgets_seeds_and_gpu_pinning(fake):
    env, calls = fake
    res = sweep("cifar100", "pcam", "dtd", **env, GPUS="0 1", BUDGETS="0.29 0.86", SEEDS="1 2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "task cifar100 -> cifar" in res.stdout and "task pcam -> patch_camelyon" in res.stdout
    runs = env["RUNS"]
    by_task = {}
    for gpu, argv in calls():
        if argv[0] != "-m":
            by_task.setdefault(argv[argv.index("--dataset") + 1], []).append((gpu, argv))
    assert {t: {g for g, _ in c} for t, c in by_task.items()} == {"cifar": {"0"}, "patch_camelyon": {"1"}, "dtd": {"0"}}
    gpu, supernet = by_task["cifar"][0]
    assert supernet == ["supernet.py", "--dataset", "cifar", "--lr", "1e-4", "--save_path", f"{runs}/cifar/supernet",
                        "--model", "vit_base_patch16_224_in21k", "--rank", "4", "--no-progress"]
    searches = [argv for _, argv in by_task["cifar"][1:]]
    assert [(a[a.index("--param-limits") + 1], a[a.index("--seed") + 1]) for a in searches] == \
        [("0.29", "1"), ("0.29", "2"), ("0.86", "1"), ("0.86", "2")]
    assert searches[0] == ["evolution.py", "--dataset", "cifar", "--save_path", f"{runs}/cifar/0.29M_seed1",
                           "--load_path", f"{runs}/cifar/supernet", "--param-limits", "0.29", "--seed", "1",
                           "--model", "vit_base_patch16_224_in21k", "--rank", "4", "--no-progress"]
    assert calls()[-1][1] == ["-m", "vtab.report", runs]
    assert (Path(runs) / "report.md").is_file()
    # Interrupted steps: a checkpoint without DONE, a search state without results.json.
    (Path(runs) / "dtd" / "supernet" / "DONE").unlink()
    (Path(runs) / "cifar" / "0.86M_seed2" / "results.json").unlink()
    (Path(runs) / "cifar" / "0.86M_seed2" / "search_state.json").write_text("{}")
    n = len(calls())
    res = sweep("cifar", "dtd", **env, BUDGETS="0.29 0.86", SEEDS="1 2", NO_REPORT="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "dtd supernet: resume" in res.stdout and "cifar 0.86M_seed2: resume" in res.stdout
    assert res.stdout.count(": skip (done)") == 8
    resumed = [argv for _, argv in calls()[n:]]
    assert [(a[0], a[a.index("--dataset") + 1], a[-1]) for a in resumed] == \
        [("evolution.py", "cifar", "--resume"), ("supernet.py", "dtd", "--resume")]


def test_config_leaves_unset_options_to_the_yaml(fake, tmp_path):
    env, calls = fake
    (tmp_path / "c.yaml").write_text("model: vit_tiny_patch16_224\n")
    res = sweep("eurosat", **env, CONFIG=str(tmp_path / "c.yaml"), PROTOCOL="paper", NO_REPORT="1",
                EXTRA_SEARCH_ARGS="--max-epochs 1")
    assert res.returncode == 0, res.stdout + res.stderr
    (_, supernet), (_, search) = calls()
    assert "--model" not in supernet and "--rank" not in supernet and "--lr" not in supernet
    assert supernet[-5:] == ["--config", str(tmp_path / "c.yaml"), "--protocol", "paper", "--no-progress"]
    assert search[-2:] == ["--max-epochs", "1"] and "--protocol" in search
    # A done supernet trained with other settings is not silently reused.
    res = sweep("eurosat", **env, NO_REPORT="1")
    assert res.returncode == 1 and "FAILED (done with other settings" in res.stdout
    assert "FAILED  eurosat supernet:" in res.stdout and len(calls()) == 2


def test_ctrl_c_stops_the_sweep_after_the_running_command_saved(fake):
    env, calls = fake
    proc = subprocess.Popen(["bash", str(SCRIPT), "eurosat", "dtd", "svhn"],
                            env=sweep_env(**env, FAKE_SLEEP="60", GPUS="0 1", NO_REPORT="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = Path(env["RUNS"])
    logs = [runs / "eurosat" / "supernet.log", runs / "dtd" / "supernet.log"]
    deadline = time.time() + 30
    while time.time() < deadline and not all(p.is_file() and "sleeping" in p.read_text() for p in logs):
        time.sleep(0.05)  # until both workers' first command waits, its SIGINT handler set
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the sweep's own process group
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, out + err
    assert "eurosat supernet: interrupted" in out and "dtd supernet: interrupted" in out
    assert "not run  svhn" in out and "run the same command again" in out
    assert all("got SIGINT" in p.read_text() for p in logs)
    assert len(calls()) == 2
