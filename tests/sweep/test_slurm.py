"""The Slurm backend against a real single-node Slurm (tests/slurm_node.py): the same tiny sweep
through Slurm and locally gives the same results; a failed job stops only what needs it. Where
Slurm cannot start here the test skips and says why. Also the requeue hook without Slurm."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from glora.sweep.cli import get_args_parser, plan_from
from glora.sweep.jobs import build_jobs
from glora.sweep.slurm import NodeCall
from tests import slurm_node
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone

REPO = Path(__file__).resolve().parents[2]
TASKS = ("eurosat", "patch_camelyon")


def make_world(root: Path) -> Path:
    """Two generated tasks, a tiny backbone and a plan: GLoRA searched and retrained from its supernet."""
    for task, classes in zip(TASKS, (10, 2)):
        make_noah_task(root / "data", task, num_classes=classes)
    save_tiny_backbone(root / "bb.safetensors")
    model = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
             "pretrained": str(root / "bb.safetensors"), "data_path": str(root / "data"), "batch_size": 16}
    (root / "model.yaml").write_text(yaml.safe_dump(model))
    plan = {"tasks": list(TASKS), "methods": ["glora", "glora_retrain"], "budgets": [0.006], "seeds": [3],
            "args": {"config": str(root / "model.yaml"), "no-progress": True},
            "supernet_args": {"epochs": 2, "eval-every": 2, "lr": 1e-2}, "train_args": {"epochs": 1, "lr": 1e-2},
            "search_args": {"population-num": 4, "select-num": 2, "mutation-num": 2, "crossover-num": 2,
                            "max-epochs": 1}}
    (root / "plan.yaml").write_text(yaml.safe_dump(plan))
    return root / "plan.yaml"


@pytest.fixture(scope="module")
def slurm():
    """The node's client environment; the daemons are stopped afterwards if this test started them."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -r requirements.txt)")
    was_running = slurm_node.running()
    reason = slurm_node.start()
    if reason is not None:
        pytest.skip(f"single-node Slurm unavailable: {reason}")
    yield slurm_node.env()
    if not was_running:
        slurm_node.stop()


def sweep(plan: Path, runs: Path, env: dict, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glora.sweep", str(plan), "--runs", str(runs), *options],
                          cwd=REPO, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})


def test_slurm_sweep_equals_the_local_sweep(slurm, tmp_path):
    """Fails if the Slurm backend runs other commands than the local one, breaks the stage order
    (a search before its supernet, a retrain before its search), loses a job, gives results that
    differ from the local backend's, or submits finished jobs again."""
    plan = make_world(tmp_path)
    res = sweep(plan, tmp_path / "slurm", slurm, "--backend", "slurm", "--slurm-time", "20", "--slurm-cpus", "1")
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    for label in ("supernet: 2 task(s)", "search (after supernet): 2 task(s)",
                  "train (after supernet, search): 2 task(s)", "export (after train): 2 task(s)"):
        assert f"({label})" in out, out
    assert "sweep: 8 jobs: 8 done" in out
    local = sweep(plan, tmp_path / "local", os.environ, "--no-report")
    assert local.returncode == 0 and "sweep: 8 jobs: 8 done" in local.stdout, local.stdout + local.stderr
    for task in TASKS:
        for row in ("val/glora_0.006M", "val/glora_retrain_0.006M"):
            a, b = (json.loads((tmp_path / side / task / "seed3" / row / "results.json").read_text())
                    for side in ("slurm", "local"))
            assert (a["method"], a["init"], a["seed"]) == ("glora", "inherited", 3)
            assert {k: a[k] for k in ("test_acc1", "search_acc1", "params")} == \
                {k: b[k] for k in ("test_acc1", "search_acc1", "params")}
            wa, wb = (load_file(tmp_path / side / task / "seed3" / row / "merged" / "model.safetensors")
                      for side in ("slurm", "local"))
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # Everything finished is skipped: a second Slurm sweep submits nothing.
    again = sweep(plan, tmp_path / "slurm", slurm, "--backend", "slurm", "--no-report")
    assert again.returncode == 0 and "submitted" not in again.stdout and "8 already finished" in again.stdout


def test_slurm_dry_run_prints_the_arrays(tmp_path):
    """Fails if --dry-run submits, or the arrays' grouping and dependencies are not what Slurm gets."""
    plan = make_world(tmp_path)
    res = subprocess.run([sys.executable, "-m", "glora.sweep", str(plan), "--runs", str(tmp_path / "r"),
                          "--methods", "glora", "glora_retrain", "lora", "--backend", "slurm", "--dry-run",
                          "--slurm-partition", "gpu", "--slurm-gpus", "1", "--slurm-mem", "16",
                          "--slurm-parallelism", "4"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("slurm")]
    assert lines == ["slurm: time=1440, job_name=glora-sweep, partition=gpu, gpus_per_node=1, "
                     "array_parallelism=4, mem=16GB",
                     "slurm array supernet: 2 task(s)",
                     "slurm array search (after supernet): 2 task(s), afterany: supernet",
                     "slurm array train: 2 task(s)",
                     "slurm array train (after supernet, search): 2 task(s), afterany: supernet; "
                     "search (after supernet)",
                     "slurm array export (after train): 4 task(s), afterany: train; "
                     "train (after supernet, search)"]


# What submitit does on a compute node when Slurm warns of the time limit or pre-emption (USR2): its
# signal handler, in the task's main thread, calls the hook, requeues the task and exits.
TIME_LIMIT = """
import os, signal, sys, threading, time
from glora.sweep.cli import get_args_parser, plan_from
from glora.sweep.jobs import build_jobs
from glora.sweep.slurm import NodeCall

jobs, _ = build_jobs(plan_from(get_args_parser().parse_args(sys.argv[1:])))
job, call = jobs["eurosat/seed3/val/supernet"], NodeCall()

def on_usr2(signum, frame):
    requeued = call.checkpoint(job, [])
    print("requeue", type(requeued.function).__name__, requeued.args[0].name, flush=True)
    sys.exit(3)

def warn_once_saved():
    while not (job.out / "eurosat.pt").is_file():
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGUSR2)

signal.signal(signal.SIGUSR2, on_usr2)
threading.Thread(target=warn_once_saved, daemon=True).start()
call(job, [])
"""


def test_node_call_checks_dependencies_and_requeue_hook_resumes(tmp_path):
    """Fails if an array task runs although a job it needs did not finish (Slurm's afterany lets it
    start), if submitit's time-limit hook, called from the signal handler while the task waits for
    its CLI, deadlocks (it used to wait on the same Popen) or does not make the CLI save its state,
    or if the requeued call does not continue from it to the finished run."""
    plan = make_world(tmp_path)
    argv = [str(plan), "--runs", str(tmp_path / "r"), "--tasks", "eurosat",
            "--supernet-args", "--epochs 60 --eval-every 60"]
    jobs, _ = build_jobs(plan_from(get_args_parser().parse_args(argv)))
    job = jobs["eurosat/seed3/val/supernet"]
    search = jobs["eurosat/seed3/val/glora_0.006M"]
    with pytest.raises(RuntimeError, match="not run: needs eurosat/seed3/val/supernet, which did not finish"):
        NodeCall()(search, [job])  # afterany started it, but its supernet is not there
    assert "sweep: failed: not run: needs" in search.log.read_text()
    node = subprocess.Popen([sys.executable, "-c", TIME_LIMIT, *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)
    try:
        out, _ = node.communicate(timeout=300)  # a deadlocked hook never returns
    finally:
        os.killpg(node.pid, 9) if node.poll() is None else None
    assert node.returncode == 3 and "requeue NodeCall eurosat/seed3/val/supernet" in out, out
    ckpt = job.out / "eurosat.pt"
    # The CLI saved and stopped: inside an epoch (its start-of-epoch state) or, under load, between
    # two (its last checkpoint); either way it says to continue with --resume.
    assert "interrupted" in job.log.read_text() and "continue with --resume" in job.log.read_text()
    assert torch.load(ckpt, weights_only=True)["epoch"] < 60
    assert NodeCall()(job, []).startswith(f"already finished: {ckpt}")  # the requeued call
    assert torch.load(ckpt, weights_only=True)["epoch"] == 60 and "resumed" in job.log.read_text()


def squeue_state(slurm: dict, job_id: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%t"], capture_output=True, text=True, env=slurm)
    return out.stdout.strip() or None


def test_slurm_no_wait_status_preemption_and_requeue(slurm, tmp_path):
    """Fails if a second --slurm-no-wait submits queued jobs again, if `status` does not show them
    queued or running with their Slurm ids, if Slurm's pre-emption warning (USR2, as before a time
    limit) deadlocks the task instead of saving and requeueing it, if a task requeued by
    `scontrol requeue` is reported failed from its first attempt although it then finished, or if
    either interrupted supernet ends other than an uninterrupted local run."""
    plan = make_world(tmp_path)
    runs = tmp_path / "slurm"
    opts = ("--methods", "glora", "--supernet-args", "--epochs 150 --eval-every 150", "--no-report")
    first = sweep(plan, runs, slurm, "--backend", "slurm", "--slurm-no-wait", "--slurm-time", "20", "--slurm-cpus", "1",
                  *opts)
    assert first.returncode == 0 and first.stdout.count("slurm: submitted array") == 2, first.stdout + first.stderr
    ids = {name: entry["id"] for name, entry in json.loads((runs / ".slurm_jobs.json").read_text()).items()}
    supernets = [f"{task}/seed3/val/supernet" for task in TASKS]
    status = subprocess.run([sys.executable, "-m", "glora.sweep", "status", str(plan), "--runs", str(runs), *opts],
                            cwd=REPO, capture_output=True, text=True, env=slurm)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split()[1]: (line.split()[0], line.split()[-1]) for line in status.stdout.splitlines()[:-1]}
    assert status.stdout.splitlines()[-1].startswith(f"status: 4 jobs under {runs}: ")
    assert {n: r[1] for n, r in rows.items()} == ids
    assert all(rows[n][0] in ("queued", "running") for n in supernets)
    assert {rows[f"{task}/seed3/val/glora_0.006M"][0] for task in TASKS} == {"queued"}  # after their supernets
    again = sweep(plan, runs, slurm, "--backend", "slurm", "--slurm-no-wait", *opts)
    assert again.returncode == 0 and "submitted array" not in again.stdout, again.stdout + again.stderr
    assert "slurm: 4 job(s) already queued or running" in again.stdout
    waiting = subprocess.Popen([sys.executable, "-m", "glora.sweep", str(plan), "--runs", str(runs), "--backend",
                                "slurm", *opts], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**slurm, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not all(squeue_state(slurm, ids[n]) == "R" and
                                             (runs / n / f"{n.split('/')[0]}.pt").is_file() for n in supernets):
        time.sleep(0.2)
    # What Slurm sends before a time limit or a pre-emption, then an administrator's requeue.
    warned = subprocess.run(["scancel", "--signal=USR2", ids[supernets[0]]], env=slurm, capture_output=True, text=True)
    requeued = subprocess.run(["scontrol", "requeue", ids[supernets[1]]], env=slurm, capture_output=True, text=True)
    assert warned.returncode == 0 and requeued.returncode == 0, warned.stderr + requeued.stderr
    out, _ = waiting.communicate(timeout=600)
    assert waiting.returncode == 0 and "sweep: 4 jobs: 4 done" in out, out
    assert "FAILED" not in out
    for name in supernets:
        log = (runs / f"{name}.log").read_text()
        assert "resumed" in log.split("=== ")[-1], log
    local = sweep(plan, tmp_path / "local", os.environ, *opts)
    assert local.returncode == 0 and "sweep: 4 jobs: 4 done" in local.stdout, local.stdout + local.stderr
    for task in TASKS:
        a, b = (torch.load(tmp_path / side / task / "seed3" / "val" / "supernet" / f"{task}.pt", weights_only=True)
                for side in ("slurm", "local"))
        assert a["epoch"] == b["epoch"] == 150
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        ra, rb = (json.loads((tmp_path / side / task / "seed3" / "val" / "glora_0.006M" / "results.json").read_text())
                  for side in ("slurm", "local"))
        assert {k: ra[k] for k in ("test_acc1", "search_acc1", "params")} == \
            {k: rb[k] for k in ("test_acc1", "search_acc1", "params")}
