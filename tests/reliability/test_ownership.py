"""Output folders are owned and resumes are checked: a folder holding a run is never overwritten by
accident, a second run on a folder in use refuses naming the holder, and a resume that would mix
settings or supernets refuses with the old and new values."""
import fcntl
import json
import os

import pytest
import torch

from glora.run import evolution
from glora.run import supernet
from tests.helpers import write_tiny_setup

SMALL_SEARCH = ["--population-num", "4", "--select-num", "2", "--mutation-num", "2", "--crossover-num", "2",
                "--max-epochs", "1", "--param-limits", "0.006"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A finished 3-epoch supernet (sup) and a finished search of it (search)."""
    root = tmp_path_factory.mktemp("own")
    write_tiny_setup(root)
    train(root, "sup")
    search(root, "search")
    return root


def train(root, out, *flags):
    supernet.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(root / out),
                  "--epochs", "3", "--lr", "1e-2", *flags])


def search(root, out, *flags, load="sup"):
    evolution.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--load_path", str(root / load),
                   "--save_path", str(root / out), *SMALL_SEARCH, *flags])


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(SystemExit) as err:
        call(*args, **kwargs)
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes (hidden lock files included)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_supernet_into_a_finished_run_refuses_and_writes_nothing(root):
    """Fails if a fresh supernet.py run (no --resume) overwrites a finished checkpoint (epoch 3 -> 1)
    or truncates its log."""
    before = snapshot(root / "sup")
    message = refused(train, root, "sup", "--epochs", "1")
    assert message == (f"error: {root / 'sup'} holds a run (eurosat.pt); continue it with --resume, replace "
                       "it with --overwrite, or choose another --save_path")
    assert snapshot(root / "sup") == before


def test_fresh_search_into_a_finished_search_refuses_and_writes_nothing(root):
    """Fails if a fresh evolution.py run overwrites a finished search file by file (a mix of two runs)."""
    before = snapshot(root / "search")
    message = refused(search, root, "search", "--seed", "7")
    assert "holds a run (results.json, search_state.json, subnet.yaml); continue it with --resume" in message
    assert snapshot(root / "search") == before


def test_refused_resume_does_not_touch_args_yaml(root):
    """Fails if a run that is refused later (here: a rank contradicting the checkpoint) first
    overwrites the finished search's args.yaml."""
    before = snapshot(root / "search")
    assert "rank: checkpoint has 4, flags give 2" in refused(search, root, "search", "--resume", "--rank", "2")
    assert snapshot(root / "search") == before


def test_resume_refused_by_the_search_state_does_not_touch_args_yaml(root):
    """Fails if a resume that the search state refuses (other search settings) first rewrites
    args.yaml, which then disagrees with results.json."""
    before = snapshot(root / "search")
    message = refused(search, root, "search", "--resume", "--population-num", "6")
    assert "search_state.json: search state was saved with different settings: population_num" in message
    assert snapshot(root / "search") == before


def test_overwrite_without_data_keeps_the_old_run(root, tmp_path):
    """Fails if --overwrite deletes the finished search before finding that the data is missing."""
    before = snapshot(root / "search")
    message = refused(search, root, "search", "--overwrite", "--data-path", str(tmp_path / "nowhere"))
    assert "nowhere" in message and "not found" in message
    assert snapshot(root / "search") == before


def test_overwrite_replaces_the_run_and_its_outputs(root):
    """Fails if --overwrite keeps files of the previous run (a mix), or is accepted with --resume."""
    search(root, "again")
    (root / "again" / "merged" / "stale.txt").write_text("from the first run")
    search(root, "again", "--overwrite", "--seed", "3")
    record = json.loads((root / "again" / "results.json").read_text())
    assert record["seed"] == 3 and not (root / "again" / "merged" / "stale.txt").exists()
    state = json.loads((root / "again" / "search_state.json").read_text())
    assert state["config"]["seed"] == 3
    assert "give one of them" in refused(search, root, "again", "--overwrite", "--resume")


def hold_lock(path, pid="4242"):
    """Hold the flock another run would hold on ``path`` (from this process: a separate open file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, pid.encode())
    return fd


@pytest.mark.parametrize("cli", ["supernet", "evolution"])
def test_second_run_on_a_folder_in_use_refuses_naming_the_holder(root, cli):
    """Fails if a second run on a --save_path in use starts (interleaved log, last writer wins), or
    refuses without naming the holder's pid, or writes anything."""
    out = root / f"busy_{cli}"
    fd = hold_lock(out / (".eurosat.lock" if cli == "supernet" else ".lock"))
    try:
        before = snapshot(out)
        call = (lambda: train(root, out.name)) if cli == "supernet" else (lambda: search(root, out.name))
        assert refused(call) == (f"error: {out} is in use by another run (pid 4242); wait for it to finish "
                                 "or choose another --save_path")
        assert snapshot(out) == before
    finally:
        os.close(fd)
    call()  # the holder is gone (its lock went with it): the folder is free
    assert (out / ("eurosat.pt" if cli == "supernet" else "results.json")).is_file()


@pytest.mark.parametrize("flag, value, recorded", [
    ("--seed", "7", "seed: 42 -> 7"), ("--batch-size", "8", "batch_size: 16 -> 8"),
    ("--wd", "0.5", "weight_decay: 0.0001 -> 0.5"), ("--warmup-lr", "1e-3", "warmup_lr: 1e-06 -> 0.001"),
    ("--drop-path", "0.2", "drop_path: 0.1 -> 0.2"), ("--precision", "bf16", "precision: 'auto' -> 'bf16'"),
    ("--unused-supports", "freeze", "unused_supports: 'update' -> 'freeze'"),
])
def test_resume_with_a_changed_setting_refuses_with_old_and_new_values(root, flag, value, recorded):
    """Fails if --resume accepts a changed seed, batch size, wd, schedule, drop-path, precision or
    unused-support rule and then records values it did not use (wd 0.5 recorded, 1e-4 applied)."""
    before = snapshot(root / "sup")
    message = refused(train, root, "sup", "--resume", flag, value)
    assert f"was trained with other settings ({recorded}); resume with the recorded values" in message
    assert snapshot(root / "sup") == before


def test_resume_may_move_files_and_change_reporting(root, tmp_path):
    """Fails if a resume is refused for a moved data tree or a reporting setting only."""
    moved = tmp_path / "data"
    (root / "data").rename(moved)
    try:
        train(root, "sup", "--resume", "--data-path", str(moved), "--eval-every", "1", "--no-progress")
    finally:
        moved.rename(root / "data")


def test_search_state_records_the_supernet_and_refuses_another(root):
    """Fails if a search resumed against another supernet (here: the same run trained one epoch
    more) is accepted: results.json would report the old supernet's accuracy for the new weights."""
    state = json.loads((root / "search" / "search_state.json").read_text())
    ckpt = torch.load(root / "sup" / "eurosat.pt", weights_only=True)
    from glora.run.checkpoint import state_digest
    assert state["supernet"] == {"checkpoint": str(root / "sup" / "eurosat.pt"), "epoch": 3,
                                 "sha256": state_digest(ckpt["state_dict"])}
    results = json.loads((root / "search" / "results.json").read_text())
    assert results["supernet_sha256"] == state["supernet"]["sha256"]
    train(root, "other", "--epochs", "4")
    before = snapshot(root / "search")
    message = refused(search, root, "search", "--resume", load="other")
    assert f"{root / 'search' / 'search_state.json'} continues a search of another supernet (epoch 3, sha256 " \
           f"{state['supernet']['sha256'][:12]}…" in message and "now holds epoch 4" in message
    assert snapshot(root / "search") == before


def test_fixed_subnet_resume_compares_the_subnet_not_its_file_name(root, tmp_path):
    """Fails if resuming a fixed-subnet run refuses a moved subnet file, or accepts another subnet."""
    import yaml
    layers = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    choice = {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "constant"}
    first = tmp_path / "a.yaml"
    first.write_text(yaml.safe_dump({"rank": 4, "layers": {n: choice for n in layers}}))
    train(root, "fixed", "--subnet", str(first))
    moved = tmp_path / "moved.yaml"
    first.rename(moved)
    train(root, "fixed", "--subnet", str(moved), "--resume")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"rank": 4, "layers": {n: {**choice, "B": "vector"} for n in layers}}))
    message = refused(train, root, "fixed", "--subnet", str(other), "--resume")
    assert f"(subnet: the checkpoint's layer choices differ from those of {other})" in message
