"""What evolution.py scores and reports, cross-checked by evaluating the subnets independently.

The task is built so that the selection split and the test split disagree: the test list's
labels are shifted by one class, so a subnet that is right on val200 is wrong on test. Accuracies
are recomputed here with the unmerged model (``set_subnet`` and a plain loop), not with the
search's merged candidate model or its ``evaluate``.
"""
import json

import pytest
import timm
import torch
import yaml

from glora.run import evolution
import glora
from glora.run import supernet
from glora.run.backbone import build_model
from tests.helpers import (TINY_VIT_KWARGS, accuracy_bounds, on_optimizer_step, parse_subnet_key,
                            write_tiny_setup)

SIZES = (("train800", 48), ("val200", 16), ("test", 21))  # 16 vs 21 images: equal accuracies
SEARCH = ["--population-num", "8", "--select-num", "3", "--mutation-num", "3", "--crossover-num", "3",
          "--max-epochs", "2", "--param-limits", "0.006"]    # only at 0 % and 100 %
TRAIN = ["--epochs", "8", "--eval-every", "8", "--warmup-epochs", "0", "--lr", "1e-2"]


def shift_test_labels(task_folder, num_classes=10):
    """Relabel test.txt (k -> k+1): a subnet good on val200 is then bad on test."""
    path = task_folder / "test.txt"
    rows = [line.split() for line in path.read_text().splitlines()]
    path.write_text("".join(f"{rel} {(int(label) + 1) % num_classes}\n" for rel, label in rows))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Data (shifted test labels), backbone, config; tests write only under their own tmp_path."""
    root = tmp_path_factory.mktemp("scoring")
    config = write_tiny_setup(root, sizes=SIZES)
    shift_test_labels(root / "data" / "eurosat")
    return root, config


def train(config, out, *extra):
    supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(out), *TRAIN, *extra])


def search(config, load, out, *extra):
    evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(load),
                   "--save_path", str(out), *SEARCH, *extra])
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return json.loads((out / "results.json").read_text()), history


def independent_model(root, ckpt_path):
    """The backbone + the checkpoint's GLoRA tensors, built here (not through evolution.py)."""
    model = build_model("vit_tiny_patch16_224", 10, str(root / "bb.safetensors"), TINY_VIT_KWARGS, 0.0)
    glora.inject_glora(model, 4)
    glora.load_trained_state(model, torch.load(ckpt_path, weights_only=True)["state_dict"])
    return model.eval()


def bounds(model, root, split, subnet):
    glora.set_subnet(model, subnet)
    return accuracy_bounds(model, root / "data", "eurosat", split)


@pytest.fixture(scope="module")
def searched(task, tmp_path_factory):
    """One supernet and one search under the val protocol (read-only for the tests)."""
    root, config = task
    out = tmp_path_factory.mktemp("searched")
    train(config, out / "supernet")
    results, history = search(config, out / "supernet", out / "search")
    return root, out, results, history


def test_every_candidate_is_scored_on_val200_by_its_own_subnet(searched):
    """Fails if candidates are scored on the test split, as the bare backbone (choices ignored), with
    a wrong merge of the candidate, or with any other subnet than the one recorded."""
    root, out, results, history = searched
    assert results["selection_split"] == "val200" and len(history) == results["search"]["num_evaluated"]
    model = independent_model(root, out / "supernet" / "eurosat.pt")
    val, test = [], []
    for record in history:
        subnet = parse_subnet_key(record["key"])
        val.append(bounds(model, root, "val200", subnet))
        test.append(bounds(model, root, "test", subnet))
        lo, hi = val[-1]
        assert lo <= record["fitness"] <= hi, (record, val[-1])
    # The check has teeth: subnets differ on val200, the test split would give other scores, and
    # so would the bare backbone (all supports none).
    assert len({lo for lo, _ in val}) >= 3
    assert sum(not lo <= r["fitness"] <= hi for r, (lo, hi) in zip(history, test)) >= 3
    backbone = bounds(model, root, "val200", glora.preset_subnet("linear_probe", 8, 4))
    assert sum(not lo <= backbone[0] <= hi for lo, hi in val) >= 3


def test_reported_numbers_belong_to_the_best_candidate(searched):
    """Fails if results.json reports a test accuracy of another subnet or split (test_acc1 and
    test_acc1_merged come from one code path, so they are checked here against an independent
    evaluation), or if subnet.yaml is not the best-scoring candidate."""
    root, out, results, history = searched
    best = max(history, key=lambda r: r["fitness"])  # ties: the first evaluated
    doc = yaml.safe_load((out / "search" / "subnet.yaml").read_text())
    chosen = [doc["layers"][name] for name in doc["layers"]]
    assert chosen == parse_subnet_key(best["key"]) and doc["params"] == best["params"] == results["params"]
    assert results["search_acc1"] == best["fitness"]
    model = independent_model(root, out / "supernet" / "eurosat.pt")
    lo, hi = bounds(model, root, "test", chosen)
    assert lo <= results["test_acc1"] <= hi and results["test_n"] == 21
    assert results["test_acc1"] != results["search_acc1"]  # the two splits disagree by construction
    merged = timm.create_model(f"local-dir:{out / 'search' / 'merged'}", pretrained=True)
    assert accuracy_bounds(merged, root / "data", "eurosat", "test") == (lo, hi)


def test_paper_protocol_end_to_end(task, tmp_path):
    """Fails if --protocol paper trains on train800 instead of train800val200, searches on val200
    instead of test, or records another protocol or selection split."""
    root, config = task
    steps = []
    with on_optimizer_step(lambda optimizer: steps.append(1)):
        train(config, tmp_path / "supernet", "--protocol", "paper")
    assert len(steps) == 8 * (48 + 16) // 16  # 4 steps per epoch: train800val200 in batches of 16
    ckpt = torch.load(tmp_path / "supernet" / "eurosat.pt", weights_only=True)
    assert ckpt["protocol"] == "paper" and ckpt["splits"]["train"] == "train800val200"
    log = [json.loads(line) for line in (tmp_path / "supernet" / "eurosat_log.jsonl").read_text().splitlines()]
    assert log[-1]["split"] == "test"
    results, history = search(config, tmp_path / "supernet", tmp_path / "search", "--protocol", "paper")
    assert results["protocol"] == "paper" and results["selection_split"] == "test"
    model = independent_model(root, tmp_path / "supernet" / "eurosat.pt")
    for record in history:
        lo, hi = bounds(model, root, "test", parse_subnet_key(record["key"]))
        assert lo <= record["fitness"] <= hi, record
    assert results["search_acc1"] == results["test_acc1"]  # selected on the test set, labelled so
    with pytest.raises(SystemExit, match=r"protocol: checkpoint has 'paper', flags give 'val'"):
        search(config, tmp_path / "supernet", tmp_path / "refused", "--protocol", "val")
    adopted, _ = search(config, tmp_path / "supernet", tmp_path / "adopted")  # no flag: the checkpoint's
    assert adopted["protocol"] == "paper" and adopted["selection_split"] == "test"
