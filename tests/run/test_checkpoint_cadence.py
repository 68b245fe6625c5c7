"""supernet.py checkpoints: written every epoch, the start-of-epoch state on Ctrl-C or SIGTERM in the
middle of an epoch, and a resume that trims the log. Runs are observed through a global optimizer
step hook: 48 training images in batches of 16 give 3 steps per epoch, 12 in a 4-epoch run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glora.run import supernet
from tests.helpers import on_optimizer_step, one_thread, write_tiny_setup

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 3


class Crash(Exception):
    """Stands in for a hard failure (out of memory, a killed node) that skips the Ctrl-C path."""


@pytest.fixture
def config(tmp_path):
    return write_tiny_setup(tmp_path, epochs=4, eval_every=100, lr="1e-2", warmup_epochs=1)


def run(config, out, *extra, on_step=None):
    """Train; ``on_step(step, ckpt_path)`` runs after every optimizer step (1-based)."""
    out = Path(out)
    steps = []

    def callback(optimizer):
        steps.append(1)
        if on_step is not None:
            on_step(len(steps), out / "eurosat.pt")

    with on_optimizer_step(callback):
        supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(out), *extra])
    return torch.load(out / "eurosat.pt", weights_only=True)


def saved_epoch(path):
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else None


def assert_same(a, b, where="checkpoint"):
    """Recursive equality of checkpoint payloads (tensors exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


TRAINING_STATE = ("state_dict", "optimizer", "scheduler", "sampler", "torch_rng", "epoch")


def straight_run(config, out):
    """An uninterrupted run; also returns the checkpoint as it was on disk at the start of epoch 3."""
    at_epoch_3 = {}

    def grab(step, path):
        if step == 2 * STEPS_PER_EPOCH + 1:
            at_epoch_3.update(torch.load(path, weights_only=True))

    final = run(config, out, on_step=grab)
    assert at_epoch_3["epoch"] == 2
    return final, at_epoch_3


def assert_saved_at_epoch_3_then_resumes(config, out, at_epoch_3, straight):
    """The interrupted run left the start-of-epoch-3 state, and a resume ends as the straight run."""
    saved = torch.load(Path(out) / "eurosat.pt", weights_only=True)
    for key in TRAINING_STATE:
        assert_same(saved[key], at_epoch_3[key], key)
    resumed = run(config, out, "--save-every", "100", "--resume")
    for key in TRAINING_STATE:
        assert_same(resumed[key], straight[key], key)


def log_epochs(out):
    return [json.loads(line) for line in (Path(out) / "eurosat_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("save_every,expected", [
    ("1", [None] * 3 + [1] * 3 + [2] * 3 + [3] * 3),
    ("2", [None] * 6 + [2] * 6)])
def test_checkpoint_on_disk_during_training_follows_save_every(config, tmp_path, save_every, expected):
    """Fails if the per-epoch save is removed or ignores --save-every: the file on disk is read at
    every training step, so no interrupt handler can make up for a missing periodic save."""
    seen = []
    final = run(config, tmp_path / "out", "--save-every", save_every,
                on_step=lambda step, path: seen.append(saved_epoch(path)))
    assert seen == expected and final["epoch"] == 4


def test_ctrl_c_mid_epoch_saves_the_start_of_epoch_state(config, tmp_path):
    """Fails if Ctrl-C saves nothing, or saves the current (mid-epoch) state instead of the snapshot
    taken at the start of the epoch, or if the resume does not reach the uninterrupted result."""
    straight, at_epoch_3 = straight_run(config, tmp_path / "straight")

    def interrupt(step, path):
        if step == 2 * STEPS_PER_EPOCH + 2:  # two steps into epoch 3
            raise KeyboardInterrupt

    # --save-every 100: no periodic save, so whatever is on disk was written by the handler.
    with pytest.raises(SystemExit, match=r"interrupted in epoch 3; saved the state at its start"):
        run(config, tmp_path / "out", "--save-every", "100", on_step=interrupt)
    assert_saved_at_epoch_3_then_resumes(config, tmp_path / "out", at_epoch_3, straight)
    assert log_epochs(tmp_path / "out") == log_epochs(tmp_path / "straight")


def test_resume_after_a_crash_trims_the_log_past_the_checkpoint(config, tmp_path):
    """Fails if --resume keeps log lines of epochs after the checkpoint (here epoch 3, logged before
    the crash but not saved with --save-every 2), duplicating them when they are trained again."""
    straight, _ = straight_run(config, tmp_path / "straight")

    def crash(step, path):
        if step == 3 * STEPS_PER_EPOCH + 1:  # first step of epoch 4
            raise Crash

    with pytest.raises(Crash):
        run(config, tmp_path / "out", "--save-every", "2", on_step=crash)
    assert saved_epoch(tmp_path / "out" / "eurosat.pt") == 2
    assert [r["epoch"] for r in log_epochs(tmp_path / "out")] == [1, 2, 3]
    resumed = run(config, tmp_path / "out", "--save-every", "2", "--resume")
    assert log_epochs(tmp_path / "out") == log_epochs(tmp_path / "straight")
    assert [r["epoch"] for r in log_epochs(tmp_path / "out")] == [1, 2, 3, 4]
    for key in TRAINING_STATE:
        assert_same(resumed[key], straight[key], key)


DRIVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from torch.optim.optimizer import register_optimizer_step_post_hook
from glora.run import supernet
marker, wait_at = sys.argv[2], int(sys.argv[3])
steps = []
def hook(optimizer, args, kwargs):
    steps.append(1)
    if len(steps) == wait_at:
        open(marker, "w").write("waiting")
        time.sleep(120)  # the SIGTERM arrives here, inside a training step
register_optimizer_step_post_hook(hook)
supernet.cli(sys.argv[4:])
"""


@pytest.fixture
def single_thread():
    with one_thread():
        yield


@pytest.mark.slow
def test_real_sigterm_mid_epoch_saves_the_start_of_epoch_state(config, tmp_path, single_thread):
    """Fails if supernet.py dies on SIGTERM without saving, or saves the mid-epoch state: a real
    process gets a real SIGTERM two steps into epoch 3."""
    straight, at_epoch_3 = straight_run(config, tmp_path / "straight")
    marker = tmp_path / "waiting"
    argv = ["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "out"),
            "--save-every", "100"]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), str(marker),
                             str(2 * STEPS_PER_EPOCH + 2), *argv], cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else "no step"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err[-2000:]
    assert "interrupted in epoch 3; saved the state at its start" in err and "Traceback" not in err
    assert_saved_at_epoch_3_then_resumes(config, tmp_path / "out", at_epoch_3, straight)
