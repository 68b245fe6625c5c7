"""torchrun data parallelism on the CPU (gloo): two ranks give the single process's trained tensors,
each rank takes its share of every global batch, and --resume works across world sizes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from glora.run import supernet
import vtab
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone
from tests.helpers import interrupt_at

REPO = Path(__file__).resolve().parents[2]


def test_loader_shards_are_the_single_process_batches(tmp_path):
    """Fails if the ranks' shares of a global batch overlap, miss a sample, or follow another order
    than one process's batches, or if an uneven split is accepted."""
    make_noah_task(tmp_path)
    split = vtab.load_split(tmp_path, "eurosat", "train800", input_size=32, progress=False)
    one = vtab.Loader(split, 16, shuffle=True, drop_last=True, seed=3)
    ranks = [vtab.Loader(split, 16, shuffle=True, drop_last=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for loader in (one, *ranks):
        loader.set_epoch(5)
    for whole, *parts in zip(one, *ranks):
        assert all(len(p[1]) == 8 for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert len(ranks[0]) == len(one) == 3
    with pytest.raises(ValueError, match="batch size 15 does not split evenly over 2 ranks"):
        vtab.Loader(split, 15, shuffle=True, drop_last=True, rank=1, world_size=2)


@pytest.fixture
def setup(tmp_path):
    make_noah_task(tmp_path / "data")
    save_tiny_backbone(tmp_path / "bb.safetensors")
    cfg = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
           "pretrained": str(tmp_path / "bb.safetensors"), "data_path": str(tmp_path / "data"),
           "dataset": "eurosat", "epochs": 4, "eval_every": 4, "batch_size": 16, "lr": "1e-2",
           "drop_path": 0.0, "progress": False, "device": "cpu"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def torchrun(setup, out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "supernet.py"), "--config", str(setup / "c.yaml"), "--save_path", str(setup / out), *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout, torch.load(setup / out / "eurosat.pt", weights_only=True)


def assert_close_states(a, b):
    """Trained tensors and AdamW moments equal within float tolerance.

    The tensors' tolerance is 1e-4 absolute: a few entries have a gradient that is float noise in
    both runs (e.g. the key bias, to which softmax is blind), and AdamW turns noise of either sign
    into steps of similar size. The moments must agree to 1e-4 of their largest entry, which also
    catches summed instead of averaged gradients (AdamW's steps alone would hide a factor of 2).
    """
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-4, msg=key)
    for i, state in a["optimizer"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            x, y = state[moment], b["optimizer"]["state"][i][moment]
            assert (x - y).abs().max() <= 1e-4 * x.abs().max(), (i, moment)


def test_two_gloo_ranks_equal_one_process_and_resume_across_world_sizes(setup, monkeypatch):
    """Fails if the ranks draw different per-layer choices, if the global batch is not kept (each
    rank would train on 16 images per step), if gradients are not averaged, if another rank than 0
    writes, or if a one-process checkpoint does not resume under two ranks to the same result."""
    supernet.cli(["--config", str(setup / "c.yaml"), "--save_path", str(setup / "one")])
    one = torch.load(setup / "one" / "eurosat.pt", weights_only=True)
    out, two = torchrun(setup, "two")
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["epoch"] == 4
    assert two["sampler"] == one["sampler"]  # the same number of draws from the same stream
    assert_close_states(one, two)
    assert one["optimizer"]["state"][0]["step"] == two["optimizer"]["state"][0]["step"] == 12  # 3 steps x 4
    assert out.count("done: 4 epochs") == 1 and out.count("2 ranks of 8 images per step") == 1
    log = (setup / "two" / "eurosat_log.jsonl").read_text().splitlines()
    assert len(log) == 4
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(SystemExit, match="interrupted in epoch 3"):
            supernet.cli(["--config", str(setup / "c.yaml"), "--save_path", str(setup / "resumed")])
    out, resumed = torchrun(setup, "resumed", "--resume")
    assert "resumed" in out and resumed["epoch"] == 4 and resumed["world_size"] == 2
    # Not silent: the change is said, and the checkpoint keeps every stretch's number of ranks.
    assert "was trained on 1 rank(s) and resumes on 2" in out and resumed["world_sizes"] == {0: 1, 2: 2}
    assert_close_states(one, resumed)


def test_a_refusal_on_rank_0_ends_every_rank_with_its_line(setup):
    """Fails if rank 0 refusing the output folder leaves rank 1 to die in a gloo collective with a
    traceback, instead of both ranks stopping with the same one-line refusal."""
    supernet.cli(["--config", str(setup / "c.yaml"), "--save_path", str(setup / "taken"), "--epochs", "1",
                  "--eval-every", "1"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "supernet.py"), "--config", str(setup / "c.yaml"), "--save_path", str(setup / "taken")]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = res.stdout + res.stderr
    # torchrun's launcher reports a failed rank with a traceback of its own; the ranks print none
    frames = [line for line in text.splitlines() if line.strip().startswith('File "')]
    assert res.returncode != 0 and "gloo" not in text.lower()
    assert all("torch/distributed" in line or "<frozen runpy>" in line for line in frames), frames
    assert text.count("holds a run (eurosat.pt); continue it with --resume") == 2
