"""Fault injection on the real commands: SIGKILL at seeded random moments then resume, two runs on
one folder, a read-only and a full output folder, and a second sweep (and SIGTERM) on a running one.

Kills and concurrency run the CLIs as subprocesses (slow: a few seconds each to import torch). A
read-only or full folder is a small tmpfs where this process may mount one (root); otherwise a
read-only folder is a chmod (which binds only non-root users) and a full disk is simulated by a
write that fails with ENOSPC.
"""
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from glora.run import evolution
from glora.run import supernet
from tests.helpers import one_thread, write_tiny_setup

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SEARCH = ["--population-num", "4", "--select-num", "2", "--mutation-num", "2", "--crossover-num", "2",
          "--param-limits", "0.006"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_tiny_setup(root)
    return root


def flags(root, out, *extra):
    return ["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(out), *extra]


def in_background():
    """What a non-interactive shell's `&` does to a command: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(script, *argv):
    """A CLI in a subprocess, started as in the background (SIGINT ignored on entry): the CLIs must
    still turn a SIGINT into a saved, explained stop."""
    return subprocess.Popen([sys.executable, str(REPO / script), *argv], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=in_background)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(predicate, proc, timeout=120):
    """Poll until ``predicate()`` holds; False if ``proc`` ended first or the time ran out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.01)
    return False


def kill_at(rng, targets, reached, script, *argv, after=lambda: None):
    """For each target: start ``script``, wait until ``reached(target)``, wait a random moment
    more, ``kill -9`` it, then call ``after``."""
    for target in targets:
        proc = start(script, *argv)
        wait_for(lambda: reached(target), proc)
        time.sleep(rng.uniform(0, 0.05))
        proc.kill()
        proc.wait()
        after()


def lines(path) -> int:
    try:
        return len(Path(path).read_text().splitlines())
    except OSError:
        return 0


def temporaries(folder):
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))


# ---------------------------------------------------------------- SIGKILL, then resume
@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(root):
    """Fails if a kill -9 at any moment (mid-epoch, mid-save, mid-log-line) leaves an unloadable
    checkpoint, a log that blocks the resume, or a resumed run that differs from an uninterrupted one."""
    train = ["--epochs", "8", "--eval-every", "4", "--lr", "1e-2"]
    with one_thread():
        supernet.cli(flags(root, root / "straight", *train))
    rng = random.Random(2024)
    killed = root / "killed"
    log = killed / "eurosat_log.jsonl"
    def loads():  # whatever moment it was, the checkpoint loads
        if (killed / "eurosat.pt").exists():
            torch.load(killed / "eurosat.pt", weights_only=True)

    # kill once the log has `target` lines
    kill_at(rng, sorted(rng.sample(range(1, 8), 3)), lambda target: lines(log) >= target,
            "supernet.py", *flags(root, killed, *train, "--resume", "auto"), after=loads)
    code, out, err = finish(start("supernet.py", *flags(root, killed, *train, "--resume", "auto")))
    assert code == 0, err
    a = torch.load(root / "straight" / "eurosat.pt", weights_only=True)
    b = torch.load(killed / "eurosat.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 8 and a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["sampler"] == b["sampler"]
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == list(range(1, 9))
    assert temporaries(killed) == []


@pytest.mark.slow
def test_sigkill_during_a_search_then_resume_equals_an_uninterrupted_search(root):
    """Fails if a search killed at a random generation cannot be resumed, or ends with another
    subnet, another history or other accuracies than an uninterrupted search."""
    supernet.cli(flags(root, root / "sup", "--epochs", "2", "--lr", "1e-2"))
    search = [*SEARCH, "--max-epochs", "5", "--load_path", str(root / "sup")]
    with one_thread():
        evolution.cli(flags(root, root / "s_straight", *search))
    rng = random.Random(7)
    killed = root / "s_killed"
    # kill once the state has `target` generations
    kill_at(rng, sorted(rng.sample(range(0, 5), 2)), lambda target: generation(killed) >= target,
            "evolution.py", *flags(root, killed, *search, "--resume", "auto"))
    code, _, err = finish(start("evolution.py", *flags(root, killed, *search, "--resume", "auto")))
    assert code == 0, err
    a, b = (json.loads((root / d / "results.json").read_text()) for d in ("s_straight", "s_killed"))
    assert [a[k] for k in ("search_acc1", "test_acc1", "params", "supernet_sha256")] == \
           [b[k] for k in ("search_acc1", "test_acc1", "params", "supernet_sha256")]
    for name in ("subnet.yaml", "history.jsonl"):
        assert (root / "s_straight" / name).read_text() == (killed / name).read_text()
    assert temporaries(killed) == []


def generation(folder) -> int:
    try:
        return json.loads((Path(folder) / "search_state.json").read_text())["generation"]
    except (OSError, ValueError, KeyError):
        return -1


# ---------------------------------------------------------------- two runs on one folder
def lock_holder(path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.parametrize("script", ["supernet.py", "evolution.py"])
def test_second_concurrent_run_refuses_and_the_first_is_untouched(root, script):
    """Fails if two runs on one --save_path both run (supernet: a traceback and an interleaved log;
    search: both report success, the last writer wins), or if the refusal does not name the pid."""
    out = root / f"busy_{script[:-3]}"
    if script == "supernet.py":
        argv, lock = flags(root, out, "--epochs", "400", "--eval-every", "400", "--lr", "1e-2"), ".eurosat.lock"
    else:
        if not (root / "sup" / "eurosat.pt").is_file():
            supernet.cli(flags(root, root / "sup", "--epochs", "2", "--lr", "1e-2"))
        argv, lock = flags(root, out, *SEARCH, "--max-epochs", "400", "--load_path", str(root / "sup")), ".lock"
    first = start(script, *argv)
    try:
        assert wait_for(lambda: lock_holder(out / lock) == str(first.pid), first), first.communicate()
        cli = supernet.cli if script == "supernet.py" else evolution.cli  # the second: in this process
        with pytest.raises(SystemExit) as err:
            cli([*argv, "--resume", "auto"])
        assert err.value.code == (f"error: {out} is in use by another run (pid {first.pid}); wait for it "
                                  "to finish or choose another --save_path")
    finally:
        first.send_signal(signal.SIGINT)  # the first saves its state and stops
        code, _, err = finish(first)
    assert "interrupted" in err
    if script == "supernet.py":
        epochs = [json.loads(line)["epoch"] for line in (out / "eurosat_log.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, len(epochs) + 1))  # one writer: no line twice, none interleaved


# ---------------------------------------------------------------- read-only and full folders
@contextlib.contextmanager
def tmpfs(path, size="1M", options=""):
    """A fresh tmpfs at ``path``, or None where this process cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(folder):
    """``folder`` (with what is in it) made read-only: a remount where possible, else a chmod."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root cannot be denied a write here (no remount): nothing to test")
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], capture_output=True)


def test_read_only_output_folder_is_one_line_and_nothing_changes(root, tmp_path):
    """Fails if a read-only --save_path gives a PermissionError traceback, or if resuming a run held
    in a read-only folder gets as far as training."""
    with tmpfs(tmp_path / "ro", "4M") as mounted:
        folder = mounted or tmp_path / "ro"
        supernet.cli(flags(root, folder / "run", "--epochs", "1", "--lr", "1e-2"))
        before = {p.name: p.read_bytes() for p in (folder / "run").iterdir()}
        if mounted is None and os.geteuid() == 0:
            pytest.skip("root without a tmpfs cannot be denied a write")
        with read_only(folder if mounted else folder / "run"), read_only_dir(folder, mounted):
            with pytest.raises(SystemExit) as err:
                supernet.cli(flags(root, folder / "run", "--epochs", "1", "--lr", "1e-2", "--resume"))
            reason = str(err.value.code)
            assert reason.startswith(f"error: cannot write in --save_path {folder / 'run'}: ") and "\n" not in reason
            with pytest.raises(SystemExit) as err:
                supernet.cli(flags(root, folder / "new", "--epochs", "1"))
            assert str(err.value.code).startswith(f"error: cannot create --save_path {folder / 'new'}: ")
        assert {p.name: p.read_bytes() for p in (folder / "run").iterdir()} == before


@contextlib.contextmanager
def read_only_dir(folder, mounted):
    """Without a mount, the parent too must refuse new folders (chmod binds non-root users only)."""
    if mounted is not None:
        yield
        return
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(0o755)


class Disk:
    """A small output disk: ``fill()`` leaves ``spare`` bytes free, ``free()`` undoes it."""

    def __init__(self, path, mounted, monkeypatch):
        self.path, self.mounted, self.monkeypatch = path, mounted, monkeypatch

    def fill(self, spare=16_384):
        if self.mounted:
            room = shutil.disk_usage(self.path).free - spare
            (self.path / "filler").write_bytes(b"\0" * max(room, 0))
            return
        from glora.io.files import _Tracked
        real = _Tracked.write

        def full(tracked, data):  # a file that would outgrow the spare bytes fails as on a full disk
            tracked.written = getattr(tracked, "written", 0) + len(data)
            if tracked.written > spare:
                tracked.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise tracked.error
            return real(tracked, data)
        self.monkeypatch.setattr(_Tracked, "write", full)

        def save_for_hf(model, folder, **kwargs):  # safetensors reports a full disk in its message
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "config.json").write_text("{}")
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        self.monkeypatch.setattr("timm.models.save_for_hf", save_for_hf)

    def free(self):
        if self.mounted:
            (self.path / "filler").unlink()
        else:
            self.monkeypatch.undo()


@pytest.fixture
def disk(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "disk", "8M") as mounted:
        yield Disk(mounted or tmp_path / "disk", mounted, monkeypatch)


def test_full_disk_keeps_the_last_checkpoint_and_leaves_no_temporary(root, disk, monkeypatch):
    """Fails if a full disk gives three chained tracebacks, costs the previous checkpoint, or leaves
    a half-written .tmp that holds the space a resume needs; then a resume with space finishes."""
    from tests.helpers import interrupt_at
    out = disk.path / "run"
    train = flags(root, out, "--epochs", "4", "--lr", "1e-2", "--eval-every", "4")
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(SystemExit, match="interrupted in epoch 3"):
            supernet.cli(train)
    kept = (out / "eurosat.pt").read_bytes()
    disk.fill()
    with pytest.raises(SystemExit) as err:
        supernet.cli([*train, "--resume"])
    assert str(err.value.code) == (f"error: cannot write {out / 'eurosat.pt'}: no space left on the device; the "
                                   "previous one is kept")
    assert (out / "eurosat.pt").read_bytes() == kept and temporaries(disk.path) == []
    assert torch.load(out / "eurosat.pt", weights_only=True)["epoch"] == 2
    disk.free()
    supernet.cli([*train, "--resume"])
    assert torch.load(out / "eurosat.pt", weights_only=True)["epoch"] == 4


def test_full_disk_during_the_export_is_one_line(root, disk):
    """Fails if a full disk while writing merged/ (safetensors) is a traceback or leaves .merged.tmp."""
    if not (root / "sup" / "eurosat.pt").is_file():
        supernet.cli(flags(root, root / "sup", "--epochs", "2", "--lr", "1e-2"))
    out = disk.path / "search"
    search = flags(root, out, *SEARCH, "--max-epochs", "1", "--load_path", str(root / "sup"))
    evolution.cli(search)
    merged = {p.name: p.read_bytes() for p in (out / "merged").iterdir()}
    disk.fill(spare=4096)
    with pytest.raises(SystemExit) as err:
        evolution.cli([*search, "--resume"])
    assert str(err.value.code).startswith("error: cannot write ") and "no space left on the device" in str(err.value.code)
    assert temporaries(disk.path) == [] and not (out / ".merged.tmp").exists()
    assert {p.name: p.read_bytes() for p in (out / "merged").iterdir()} == merged


# ---------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_second_sweep_refuses_running_jobs_and_sigterm_to_a_background_sweep_reports(root):
    """Fails if a second sweep on the same RUNS runs a job that the first is running, or if SIGTERM
    to a sweep started in the background (SIGINT ignored, as a shell's `&` does) is ignored, leaves
    its jobs running, or exits without the report of what finished."""
    plan = {"tasks": ["eurosat"], "methods": ["glora", "lora"], "budgets": [0.006],
            "args": {"config": str(root / "tiny.yaml"), "no-progress": True},
            "supernet_args": {"epochs": 100000, "eval-every": 100000, "lr": 1e-2},
            "train_args": {"epochs": 1, "lr": 1e-2}, "search_args": {"population-num": 4, "select-num": 2,
                                                                   "mutation-num": 2, "crossover-num": 2,
                                                                   "max-epochs": 1}}
    (root / "plan.yaml").write_text(yaml.safe_dump(plan))
    runs = root / "runs"
    argv = [sys.executable, "-m", "glora.sweep", str(root / "plan.yaml"), "--runs", str(runs)]
    first = subprocess.Popen([*argv, "--jobs", "2"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, preexec_fn=in_background)
    ckpt = runs / "eurosat" / "val" / "supernet" / "eurosat.pt"
    assert wait_for(ckpt.is_file, first, 180), first.communicate()[0]
    second = subprocess.run([*argv, "--methods", "glora", "--no-report"], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=180)
    assert second.returncode == 1
    supernet_dir = runs / "eurosat" / "val" / "supernet"
    assert f"FAILED eurosat/val/supernet: not started: {supernet_dir} is in use by another run (pid " in second.stdout
    assert "skipped eurosat/val/glora_0.006M: needs eurosat/val/supernet (failed)" in second.stdout
    assert wait_for((runs / "eurosat" / "val" / "lora" / "results.json").is_file, first, 180)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 130, out
    assert "stopped eurosat/val/supernet: exit 1: interrupted in epoch" in out
    assert "report: " in out and (runs / "report.md").is_file() and "| lora |" in (runs / "table.md").read_text()
    supernet_log = (runs / "eurosat" / "val" / "supernet.log").read_text()
    assert supernet_log.count("=== ") == 1  # the second sweep never started it: one run, one log
