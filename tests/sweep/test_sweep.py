"""python -m glora.sweep: the plan expanded into CLI calls, bad input as one line, and real tiny
sweeps on the local backend (GPU-slot pinning, skip on a second run, a failing job that does not
stop the others, Ctrl-C and a rerun that finishes the rest)."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from glora.sweep.cli import cli, get_args_parser, plan_from
from glora.sweep.jobs import Job, build_jobs
from glora.sweep.status import Board
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone
from vtab import mini
from vtab.check import main as check_main
from vtab.tasks import GROUPS, MINI_TASKS

REPO = Path(__file__).resolve().parents[2]
SEARCH = {"population-num": 4, "select-num": 2, "mutation-num": 2, "crossover-num": 2, "max-epochs": 1}


def plan_of(*argv: str, plan: dict | None = None, tmp_path: Path | None = None):
    """The checked plan and its jobs for a YAML plan (written to tmp_path) and options."""
    if plan is not None:
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
        argv = (str(tmp_path / "plan.yaml"), *argv)
    p = plan_from(get_args_parser().parse_args(argv))
    return p, *build_jobs(p)


def arg(job: Job, flag: str) -> str:
    return job.argv[job.argv.index(flag) + 1]


# ---------------------------------------------------------------- the plan, no process started
def test_plan_expands_into_shared_supernets_searches_and_retrains(tmp_path):
    """Fails if val and retrain do not share one supernet and search per (task, seed), if paper does
    not get its own, if a retrain does not depend on its search (and on the supernet for
    glora_retrain), or if a seed is not passed to every job of that seed."""
    plan, jobs, targets = plan_of("--runs", str(tmp_path / "r"), "--tasks", "eurosat", "--methods", "glora",
                                  "glora_retrain", "glora_fresh", "lora", "full_finetune", "--protocols", "val",
                                  "retrain", "paper", "--budgets", "0.5", "1", "--seeds", "1", "2")
    # per seed: 2 supernets (val, paper), 4 searches, 3 protocols x 6 trained rows x (train + export)
    assert len(jobs) == 2 * (2 + 4 + 36)
    kinds = {k: sorted(n for n, j in jobs.items() if j.kind == k and j.seed == 1) for k in ("supernet", "search")}
    assert kinds == {"supernet": ["eurosat/seed1/paper/supernet", "eurosat/seed1/val/supernet"],
                     "search": ["eurosat/seed1/paper/glora_0.5M", "eurosat/seed1/paper/glora_1M",
                                "eurosat/seed1/val/glora_0.5M", "eurosat/seed1/val/glora_1M"]}
    r = tmp_path / "r" / "eurosat" / "seed2"
    search = jobs["eurosat/seed2/val/glora_0.5M"]
    assert search.argv[:10] == ["--dataset", "eurosat", "--protocol", "val", "--save_path", str(r / "val/glora_0.5M"),
                                "--resume", "auto", "--seed", "2"]
    assert arg(search, "--load_path") == str(r / "val/supernet") and arg(search, "--param-limits") == "0.5"
    retrain = jobs["eurosat/seed2/retrain/glora_retrain_0.5M/train"]
    assert retrain.script == "supernet" and arg(retrain, "--protocol") == "retrain"
    assert arg(retrain, "--subnet") == str(r / "val/glora_0.5M/subnet.yaml")
    assert arg(retrain, "--init-from") == str(r / "val/supernet")
    assert retrain.deps == ["eurosat/seed2/val/glora_0.5M", "eurosat/seed2/val/supernet"]
    fresh = jobs["eurosat/seed2/paper/glora_fresh_1M/train"]
    assert "--init-from" not in fresh.argv and fresh.deps == ["eurosat/seed2/paper/glora_1M"]
    export = jobs["eurosat/seed2/retrain/lora"]
    assert export.script == "evolution" and arg(export, "--load_path") == str(r / "retrain/lora/train")
    assert export.deps == ["eurosat/seed2/retrain/lora/train"] and export.log == r / "retrain" / "lora.log"
    assert "--full-finetune" in jobs["eurosat/seed1/val/full_finetune/train"].argv
    assert all(arg(j, "--seed") == str(j.seed) for j in jobs.values())
    # Rows: the GLoRA search (shared by val and retrain, once) and every export.
    assert len(targets) == 2 * (4 + 18) and "eurosat/seed1/val/glora_1M" in targets


def test_groups_aliases_and_no_seeds(tmp_path):
    """Fails if groups are not read from vtab/tasks.py, aliases are not resolved, a task repeats, or
    a sweep without seeds still adds a seed level or a --seed flag."""
    plan, jobs, _ = plan_of("--runs", str(tmp_path), "--tasks", "structured", "pcam", "mini", "clevr_count",
                            "--methods", "linear_probe")
    assert plan.tasks == [*GROUPS["structured"], "patch_camelyon", *MINI_TASKS]
    job = jobs["patch_camelyon/val/linear_probe/train"]
    assert "--seed" not in job.argv and arg(job, "--subnet") == "linear_probe"


def test_flags_from_the_plan_file_and_the_command_line(tmp_path):
    """Fails if flag spellings are not normalised to the CLIs' own, if a mapping is not passed as JSON,
    if the command line does not override the plan flag by flag, or if per-method flags leak."""
    plan = {"runs": str(tmp_path / "r"), "tasks": "eurosat", "methods": ["lora", "full_finetune", "glora"],
            "args": {"config": "c.yaml", "no_progress": True, "model-kwargs": {"depth": 2}},
            "supernet_args": {"epochs": 60, "warmup_epochs": 3}, "train_args": {"epochs": 40, "lr": "3e-3"},
            "search_args": {"m-prob": 0.3, "population_num": 30}, "method_args": {"full_finetune": {"lr": 1e-4}}}
    _, jobs, _ = plan_of("--train-args", "--epochs 2 --wd=0", "--args", "--rank 2", plan=plan, tmp_path=tmp_path)
    lora = jobs["eurosat/val/lora/train"].argv
    assert lora[lora.index("--config"):] == ["--config", "c.yaml", "--model-kwargs", '{"depth": 2}',
                                             "--no-progress", "--rank", "2", "--epochs", "2", "--lr", "3e-3",
                                             "--wd", "0"]
    full = jobs["eurosat/val/full_finetune/train"]
    assert arg(full, "--lr") == "0.0001" and full.argv.count("--lr") == 1  # the method's lr wins
    supernet = jobs["eurosat/val/supernet"].argv
    assert supernet[-4:] == ["--epochs", "60", "--warmup-epochs", "3"]
    search = jobs["eurosat/val/glora_1M"].argv
    assert search[-4:] == ["--m_prob", "0.3", "--population-num", "30"]


def test_budgets_keep_every_digit(tmp_path):
    """Fails if budgets are rounded into folder names or --param-limits (1.0000001 and 1.0000002
    would share one job and one search), or if short budgets lose their short names."""
    _, jobs, targets = plan_of("--runs", str(tmp_path), "--tasks", "eurosat", "--methods", "glora",
                               "--budgets", "1.0000001", "1.0000002", "0.5", "2")
    assert targets == ["eurosat/val/glora_1.0000001M", "eurosat/val/glora_1.0000002M", "eurosat/val/glora_0.5M",
                       "eurosat/val/glora_2M"]
    assert [float(arg(jobs[t], "--param-limits")) for t in targets] == [1.0000001, 1.0000002, 0.5, 2.0]


@pytest.mark.parametrize("argv, plan, message", [
    (["--tasks", "cifra"], None, "error: unknown task 'cifra'; selections: all, natural,"),
    (["--methods", "lora", "loha"], None, "error: unknown method 'loha'; did you mean 'lora'? methods: glora,"),
    (["--protocols", "test"], None, "error: unknown protocol 'test'; protocols: val, retrain, paper"),
    (["--backend", "pbs"], None, "error: unknown backend 'pbs'; backends: local, slurm"),
    (["--slurm-partition", "gpu"], None, "error: --slurm-partition: only with --backend slurm"),
    (["--backend", "slurm", "--gpus", "0,1"], None, "error: --gpus, --jobs and --jobs-per-gpu are for the local"),
    (["--gpus", "0", "--jobs", "2"], None, "error: --jobs counts CPU processes; with --gpus use --jobs-per-gpu"),
    (["--budgets", "1M"], None, "error: budget '1M' is not a finite positive number (M)"),
    (["--budgets", "inf"], None, "error: budget 'inf' is not a finite positive number (M)"),
    (["--budgets", "0.5", "nan"], None, "error: budget 'nan' is not a finite positive number (M)"),
    ([], {"budgets": [1e400]}, "error: budget inf is not a finite positive number (M)"),
    (["--seeds", "1.5"], None, "error: seed '1.5' is not a non-negative integer"),
    ([], {"method": ["lora"]}, "unknown key 'method' (did you mean 'methods'?); valid keys: runs, tasks,"),
    ([], {"supernet_args": {"epoch": 3}}, "supernet_args: --epoch is not a flag of supernet.py (did you mean --epochs?)"),
    ([], {"args": {"lr": 0.1}}, "args: --lr is not a flag of evolution.py"),
    ([], {"args": {"seed": 3}}, "args: --seed is set by the sweep for every job (from seeds)"),
    ([], {"args": {"overwrite": True}}, "args: --overwrite is set by the sweep for every job (from the sweep, "
                                        "which passes --resume auto"),
    ([], {"train_args": {"epochs": "many"}}, "train_args: --epochs: 'many' is not a valid int"),
    ([], {"search_args": {"device": "tpu"}}, "search_args: --device: 'tpu' is not one of ['auto', 'cpu', 'cuda']"),
    ([], {"method_args": {"glora": {"lr": 1}}}, "unknown method_args method 'glora'"),
    (["--train-args", "epochs 3"], None, "error: --train-args: expected a --flag, got 'epochs'"),
])
def test_bad_input_is_one_line(tmp_path, argv, plan, message):
    """Fails if a typo in a task, method, protocol, backend, plan key, flag or value, or Slurm options
    without Slurm, give a traceback or a vague error instead of one line naming the culprit."""
    if plan is not None:
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
        argv = [str(tmp_path / "plan.yaml"), *argv]
    with pytest.raises(SystemExit) as err:
        cli(["--runs", str(tmp_path / "r"), "--dry-run", *argv])
    text = str(err.value.code)
    assert message in text and text.startswith("error: ") and "\n" not in text


def test_vtab_check_accepts_the_selections_the_sweep_accepts(tmp_path, capsys):
    """Fails if `python -m vtab.check mini` refuses a selection that `--tasks mini` takes."""
    mini.build(tmp_path, sizes=(8, 8, 8), progress=False)
    plan, _, _ = plan_of("--runs", str(tmp_path / "r"), "--tasks", "mini", "--methods", "lora")
    assert check_main(["--data-path", str(tmp_path), "--no-progress", "--quick", "mini"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:2 + len(MINI_TASKS)]]
    assert rows == plan.tasks == list(MINI_TASKS)


def test_missing_plan_file_from_the_shell_prints_one_line(tmp_path):
    """Fails if the process prints a traceback instead of the one-line error."""
    res = subprocess.run([sys.executable, "-m", "glora.sweep", str(tmp_path / "nope.yaml")], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr == (f"error: plan file not found: {tmp_path / 'nope.yaml'} (nor a "
                                                  "shipped plan: demo, mini_vtab, study, verdict, vtab)\n")


def test_live_table_counts_and_redraws_in_place():
    """Fails if the live table miscounts states or does not move the cursor back over itself."""
    jobs = {n: Job(n, k, [], Path(f"/r/{n}"), "t", None, "val") for n, k in
            (("a", "supernet"), ("b", "search"), ("c", "search"))}
    out = io.StringIO()
    board = Board(jobs, out, live=True)
    board.start(jobs["a"])
    board.finish(jobs["a"], "done")
    board.finish(jobs["b"], "failed", "exit 1: boom")
    text = out.getvalue()
    assert "FAILED  b: exit 1: boom" in text and "\x1b[3F\x1b[J" in text
    assert board.table()[1:3] == [f"{'supernet':<9}" + "".join(f"{n:>12}" for n in (1, 0, 0, 0, 0, 0, 0)),
                                  f"{'search':<9}" + "".join(f"{n:>12}" for n in (0, 0, 0, 1, 1, 0, 0))]


# ---------------------------------------------------------------- real tiny sweeps
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two generated tasks, a tiny backbone and a plan with tiny CLI settings."""
    root = tmp_path_factory.mktemp("sweep")
    make_noah_task(root / "data", "eurosat", num_classes=10)
    make_noah_task(root / "data", "patch_camelyon", num_classes=2)
    save_tiny_backbone(root / "bb.safetensors")
    model = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
             "pretrained": str(root / "bb.safetensors"), "data_path": str(root / "data"), "batch_size": 16}
    (root / "model.yaml").write_text(yaml.safe_dump(model))
    plan = {"tasks": ["eurosat", "patch_camelyon"], "methods": ["glora", "lora"], "budgets": [0.006],
            "args": {"config": str(root / "model.yaml"), "no-progress": True},
            "supernet_args": {"epochs": 2, "eval-every": 2, "lr": 1e-2},
            "train_args": {"epochs": 1, "lr": 1e-2}, "search_args": SEARCH}
    (root / "plan.yaml").write_text(yaml.safe_dump(plan))
    return root


def sweep(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as err:
        cli(list(argv))
    return err.value.code, capsys.readouterr().out


@pytest.fixture(scope="module")
def first(world):
    """The plan run once over two pinned GPU slots (no GPU needed: the CLIs fall back to the CPU)."""
    runs = world / "runs"
    res = subprocess.run([sys.executable, "-m", "glora.sweep", str(world / "plan.yaml"), "--runs", str(runs),
                          "--gpus", "0,1", "--jobs-per-gpu", "1"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return runs, res


def test_sweep_runs_every_job_on_pinned_slots_then_reports(first):
    """Fails if a job is missing, runs unpinned, writes outside its folder, or the report's table is
    not printed at the end."""
    runs, res = first
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "sweep: 8 jobs: 8 done" in res.stdout
    for task in ("eurosat", "patch_camelyon"):
        glora = json.loads((runs / task / "val" / "glora_0.006M" / "results.json").read_text())
        lora = json.loads((runs / task / "val" / "lora" / "results.json").read_text())
        assert (glora["method"], glora["weights"], glora["param_limit_M"]) == ("glora", "supernet", 0.006)
        assert (lora["method"], lora["splits"]["train"], lora["init"]) == ("lora", "train800", "fresh")
        assert (runs / task / "val" / "lora" / "train" / f"{task}.pt").is_file()
    pins = {line.split()[3] for log in runs.rglob("*.log") if log.name != "report.log"
            for line in log.read_text().splitlines() if line.startswith("=== ")}
    assert pins == {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}
    table = (runs / "table.md").read_text()
    assert "| glora | 0.006 | inherited from supernet | val | 1 |" in table and "| lora | — | trained | val |" in table
    assert table.splitlines()[0] in res.stdout and (runs / "report.md").is_file()


def test_second_run_does_no_work(first, capsys):
    """Fails if a finished job is started again (the CLIs' own --resume auto check decides)."""
    runs, _ = first
    results = sorted(runs.rglob("results.json"))
    before = [p.stat().st_mtime_ns for p in results]
    code, out = sweep(capsys, str(runs.parent / "plan.yaml"), "--runs", str(runs), "--no-report")
    assert code == 0 and "8 already finished" in out and "start" not in out
    assert [p.stat().st_mtime_ns for p in results] == before
    code, out = sweep(capsys, str(runs.parent / "plan.yaml"), "--runs", str(runs), "--dry-run",
                      "--methods", "glora", "linear_probe")
    assert code == 0 and "[done] eurosat/val/supernet\n" in out and "[todo] eurosat/val/linear_probe/train\n" in out
    assert out.endswith("8 jobs (4 results), 4 to run\n")


def test_finished_job_with_other_settings_fails_without_running(first, capsys):
    """Fails if a finished run is silently reused under other settings, or run again over itself."""
    runs, _ = first
    code, out = sweep(capsys, str(runs.parent / "plan.yaml"), "--runs", str(runs), "--no-report",
                      "--tasks", "eurosat", "--methods", "lora", "--train-args", "--lr 0.5")
    assert code == 1 and "start" not in out
    assert f"FAILED eurosat/val/lora/train: CheckpointError: {runs}/eurosat/val/lora/train/eurosat.pt is a " \
           "finished run with other settings (lr: 0.01 -> 0.5)" in out


def test_a_failing_job_does_not_stop_the_others(world, tmp_path, capsys):
    """Fails if one task's failure stops another task's jobs, if its dependants run anyway, or if
    the summary does not name the failed job's log and last line."""
    runs = tmp_path / "runs"
    code, out = sweep(capsys, str(world / "plan.yaml"), "--runs", str(runs), "--tasks", "dtd", "eurosat",
                      "--methods", "lora", "--no-report")
    assert code == 1, out
    assert json.loads((runs / "eurosat" / "val" / "lora" / "results.json").read_text())["method"] == "lora"
    log = runs / "dtd" / "val" / "lora" / "train.log"
    assert f"FAILED dtd/val/lora/train: exit 1: error: task folder {world}/data/dtd not found" in out
    assert f"; log {log}" in out and "skipped dtd/val/lora: needs dtd/val/lora/train (failed)" in out
    assert "sweep: 4 jobs: 2 done, 1 failed, 1 skipped" in out
    code, out = sweep(capsys, "status", str(world / "plan.yaml"), "--runs", str(runs), "--tasks", "dtd", "eurosat",
                      "--methods", "lora", "--no-report")
    assert code == 0 and out.splitlines() == [
        f"failed   dtd/val/lora/train      exit 1: error: task folder {world}/data/dtd not found; see data/README.md "
        "for how to get VTAB-1k",
        "done     eurosat/val/lora/train",
        "todo     dtd/val/lora",
        "done     eurosat/val/lora",
        f"status: 4 jobs under {runs}: 2 done, 1 failed, 1 todo"]


def test_ctrl_c_saves_running_jobs_and_a_rerun_finishes_the_rest(world, tmp_path, capsys):
    """Fails if SIGINT to the sweep does not reach the running CLI (no saved state), if the sweep
    does not wait for it and exit 130, if `status` does not show the running job with its pid, or
    if the rerun does not resume it and finish the rest."""
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "glora.sweep", str(world / "plan.yaml"), "--runs", str(runs), "--tasks",
            "eurosat", "--methods", "glora", "--supernet-args", "--epochs 60 --eval-every 60", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ckpt = runs / "eurosat" / "val" / "supernet" / "eurosat.pt"
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    code, out = sweep(capsys, "status", *argv[3:])
    assert code == 0 and out.splitlines()[0].startswith("running  eurosat/val/supernet      pid "), out
    assert out.splitlines()[1:] == ["todo     eurosat/val/glora_0.006M", f"status: 2 jobs under {runs}: 1 running, 1 todo"]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the sweep (the jobs run in their own process groups)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "stopped eurosat/val/supernet: exit 1: interrupted in epoch" in out
    assert "run the same command again to continue" in out
    log = (runs / "eurosat" / "val" / "supernet.log").read_text()
    assert "saved the state at its start" in log
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed" in (runs / "eurosat" / "val" / "supernet.log").read_text().split("=== ")[-1]
    assert (runs / "eurosat" / "val" / "glora_0.006M" / "results.json").is_file()


def test_a_job_whose_input_changed_is_never_done(world, tmp_path, capsys):
    """Fails if the sweep counts an export done (exit 0) with the result of a training run that
    the plan no longer describes: after --train-args "--epochs 2" over a finished 1-epoch baseline,
    or after its checkpoint was trained again by hand; and if moving the stale export aside does
    not make the sweep export the new checkpoint."""
    runs = tmp_path / "runs"
    base = (str(world / "plan.yaml"), "--runs", str(runs), "--tasks", "eurosat", "--methods", "lora", "--no-report")
    assert sweep(capsys, *base)[0] == 0
    train, export = runs / "eurosat" / "val" / "lora" / "train", runs / "eurosat" / "val" / "lora"
    code, out = sweep(capsys, *base, "--train-args", "--epochs 2")
    assert code == 1 and "sweep: 2 jobs: 1 failed, 1 skipped" in out, out
    assert f"FAILED eurosat/val/lora/train: exit 1: error: {train}/eurosat.pt was trained with other settings " \
           "(epochs: 1 -> 2)" in out
    assert "skipped eurosat/val/lora: needs eurosat/val/lora/train (failed)" in out
    # The training run made again by hand, as the plan now says: its old export is stale.
    job = plan_of(*base, "--train-args", "--epochs 2")[1]["eurosat/val/lora/train"]
    command = job.command()
    del command[command.index("--resume"):command.index("--resume") + 2]
    again = subprocess.run([*command, "--overwrite"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stdout + again.stderr
    code, out = sweep(capsys, *base, "--train-args", "--epochs 2")
    assert code == 1 and "sweep: 2 jobs: 1 done (1 already finished), 1 failed" in out, out
    # The export's own check finds the checkpoint's content changed (the chain check would too).
    assert f"FAILED eurosat/val/lora: CheckpointError: {export}/results.json holds results of other settings " \
           "(supernet content: sha256 " in out
    assert f"they are kept: to run these settings, move {export} aside" in out
    assert json.loads((export / "results.json").read_text())["supernet_epochs"] == 1  # kept
    (export / "results.json").rename(tmp_path / "results_1_epoch.json")
    code, out = sweep(capsys, *base, "--train-args", "--epochs 2")
    assert code == 0 and "sweep: 2 jobs: 2 done (1 already finished)" in out, out
    assert json.loads((export / "results.json").read_text())["supernet_epochs"] == 2


def test_a_full_disk_is_one_line_not_a_traceback(world, tmp_path, capsys):
    """Fails if the sweep's own writes on a full disk end in a traceback: its standard output (the
    plan printed by --dry-run, the board), or a job's log, which fails that job alone in one line
    while the other task's jobs run."""
    with open("/dev/full", "w") as full:  # every write: No space left on device
        res = subprocess.run([sys.executable, "-m", "glora.sweep", str(world / "plan.yaml"), "--runs",
                              str(tmp_path / "r"), "--dry-run"], cwd=REPO, stdout=full, stderr=subprocess.PIPE,
                             text=True)
    assert res.returncode == 1
    assert res.stderr == "error: the sweep cannot write its output (standard output): No space left on device\n"
    runs = tmp_path / "runs"
    log = runs / "eurosat" / "val" / "linear_probe" / "train.log"
    log.parent.mkdir(parents=True)
    log.symlink_to("/dev/full")
    code, out = sweep(capsys, str(world / "plan.yaml"), "--runs", str(runs), "--methods", "linear_probe", "--no-report")
    assert code == 1 and "sweep: 4 jobs: 2 done, 1 failed, 1 skipped" in out, out
    assert f"FAILED eurosat/val/linear_probe/train: not started: cannot write its log {log}: No space left on " \
           "device" in out
    assert (runs / "patch_camelyon" / "val" / "linear_probe" / "results.json").is_file()
