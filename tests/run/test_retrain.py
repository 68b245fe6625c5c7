"""The `retrain` protocol: supernet and search as under `val`, then the chosen subnet (and every
baseline) trains on train800val200, optionally starting from the supernet's trained tensors."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from glora.run import evolution
from glora.run import supernet
from glora.run.checkpoint import load_checkpoint
from tests.helpers import write_tiny_setup

SMALL_SEARCH = ["--population-num", "6", "--select-num", "3", "--mutation-num", "3",
                "--crossover-num", "3", "--max-epochs", "1", "--param-limits", "0.006"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Supernet under `retrain` and its search, built once (read-only for the tests below)."""
    root = tmp_path_factory.mktemp("retrain")
    write_tiny_setup(root, dataset="eurosat")
    supernet.cli(["--config", str(root / "tiny.yaml"), "--protocol", "retrain", "--save_path",
                  str(root / "supernet"), "--epochs", "2", "--eval-every", "2", "--lr", "1e-2"])
    evolution.cli(["--config", str(root / "tiny.yaml"), "--protocol", "retrain", "--load_path",
                   str(root / "supernet"), "--save_path", str(root / "search"), *SMALL_SEARCH])
    return root


def retrain(root, out, *extra):
    supernet.cli(["--config", str(root / "tiny.yaml"), "--protocol", "retrain", "--save_path",
                  str(root / out), "--epochs", "2", "--eval-every", "2", *extra])
    # another search seed: an export that searched again would not land on the same subnet
    evolution.cli(["--config", str(root / "tiny.yaml"), "--protocol", "retrain", "--load_path",
                   str(root / out), "--save_path", str(root / f"{out}_export"), "--seed", "7"])
    return json.loads((root / f"{out}_export" / "results.json").read_text())


def test_inherited_retrain_at_lr_zero_reproduces_the_searched_subnet(searched):
    """Fails if --init-from does not start the subnet's tensors and head from the supernet, if the
    schedule lifts lr 0 to its warm-up/floor values, if the retrain checkpoint does not record
    that it trained on train800val200, or if exporting a trained GLoRA subnet searches again."""
    root = searched
    inherited = json.loads((root / "search" / "results.json").read_text())
    got = retrain(root, "lr0", "--subnet", str(root / "search" / "subnet.yaml"),
                  "--init-from", str(root / "supernet"), "--lr", "0", "--wd", "0")
    ckpt = load_checkpoint(root / "lr0" / "eurosat.pt")
    assert ckpt["splits"]["train"] == "train800val200" and ckpt["init"] == "inherited"
    assert ckpt["method"] == "glora" and ckpt["param_limit_M"] == 0.006
    assert got["test_acc1"] == inherited["test_acc1"] and got["params"] == inherited["params"]
    searched_doc = yaml.safe_load((root / "search" / "subnet.yaml").read_text())
    exported_doc = yaml.safe_load((root / "lr0_export" / "subnet.yaml").read_text())
    assert exported_doc["layers"] == searched_doc["layers"]
    assert "num_evaluated" not in got["search"] and not (root / "lr0_export" / "history.jsonl").exists()
    a = load_file(root / "search" / "merged" / "model.safetensors")
    b = load_file(root / "lr0_export" / "merged" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (got["method"], got["weights"], got["init"], got["protocol"]) == \
        ("glora", "trained", "inherited", "retrain")
    assert got["splits"] == {"train": "train800val200", "search": "val200", "test": "test"}
    assert got["search_split_in_training"] is True and got["param_limit_M"] == 0.006
    assert (inherited["weights"], inherited["init"], inherited["splits"]["train"]) == \
        ("supernet", "inherited", "train800")


def test_fresh_and_inherited_retrains_differ_and_train_on_train800val200(searched):
    """Fails if a retrain trains on train800 (the search split would be unused) or if --init-from
    is ignored (fresh and inherited runs would be identical)."""
    root = searched
    subnet = str(root / "search" / "subnet.yaml")
    fresh = retrain(root, "fresh", "--subnet", subnet, "--lr", "1e-2")
    warm = retrain(root, "warm", "--subnet", subnet, "--lr", "1e-2", "--init-from",
                   str(root / "supernet" / "eurosat.pt"))
    assert fresh["init"] == "fresh" and warm["init"] == "inherited"
    log = [json.loads(line) for line in (root / "fresh" / "eurosat_log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == 2
    a = load_checkpoint(root / "fresh" / "eurosat.pt")["state_dict"]
    b = load_checkpoint(root / "warm" / "eurosat.pt")["state_dict"]
    assert not torch.equal(a["head.weight"], b["head.weight"])
    # 48 + 16 images at batch 16, drop_last: 4 steps per epoch (train800 alone would give 3)
    assert load_checkpoint(root / "fresh" / "eurosat.pt")["optimizer"]["state"][0]["step"] == 8


def test_baseline_under_retrain_trains_on_train800val200(searched):
    """Fails if baselines keep training on train800 under `retrain` (unlike-for-like table)."""
    got = retrain(searched, "lora", "--subnet", "lora", "--lr", "1e-2")
    assert got["method"] == "lora" and got["splits"]["train"] == "train800val200"
    assert got["init"] == "fresh" and got["param_limit_M"] is None


def test_a_trained_checkpoint_exports_only_its_own_subnet(searched, tmp_path):
    """Fails if a LoRA-trained checkpoint exported with --subnet bitfit is recorded as a trained
    bitfit baseline (weights that never trained as bitfit); restating its own subnet is fine."""
    if not (searched / "lora" / "eurosat.pt").is_file():
        retrain(searched, "lora", "--subnet", "lora", "--lr", "1e-2")
    export = ["--config", str(searched / "tiny.yaml"), "--protocol", "retrain", "--load_path", str(searched / "lora")]
    with pytest.raises(SystemExit, match="--subnet bitfit differs from the subnet this checkpoint trained \\(lora\\)"):
        evolution.cli([*export, "--save_path", str(tmp_path / "bitfit"), "--subnet", "bitfit"])
    assert not (tmp_path / "bitfit").exists()
    evolution.cli([*export, "--save_path", str(tmp_path / "same"), "--subnet", "lora"])
    record = json.loads((tmp_path / "same" / "results.json").read_text())
    assert (record["method"], record["weights"]) == ("lora", "trained")


def test_init_from_refusals(searched, tmp_path):
    """Fails if --init-from accepts a supernet selected on another split, a supernet run, or a
    checkpoint of another rank, instead of one clear line."""
    root = searched
    base = ["--config", str(root / "tiny.yaml"), "--save_path", str(tmp_path / "x"), "--epochs", "1"]
    subnet = ["--subnet", str(root / "search" / "subnet.yaml")]
    with pytest.raises(SystemExit, match=r"protocol 'retrain', which selects on val200; this run's "
                                         r"protocol 'paper' selects on test"):
        supernet.cli(base + subnet + ["--protocol", "paper", "--init-from", str(root / "supernet")])
    with pytest.raises(SystemExit, match=r"--init-from starts a fixed subnet"):
        supernet.cli(base + ["--init-from", str(root / "supernet")])
    with pytest.raises(SystemExit, match=r"rank: checkpoint has 4, flags give 2"):
        supernet.cli(base + ["--subnet", "lora", "--rank", "2", "--init-from", str(root / "supernet")])
    with pytest.raises(SystemExit, match=r"checkpoint not found"):
        supernet.cli(base + subnet + ["--init-from", str(tmp_path / "nowhere")])


def test_val_supernet_serves_a_retrain_search(searched, tmp_path):
    """Fails if evolution refuses to search a `val` supernet under `retrain` (they share the
    supernet and the search split), or accepts a `paper` one."""
    root = searched
    args = ["--config", str(root / "tiny.yaml"), "--load_path", str(root / "supernet"), *SMALL_SEARCH]
    evolution.cli(args + ["--protocol", "val", "--save_path", str(tmp_path / "v")])
    res = json.loads((tmp_path / "v" / "results.json").read_text())
    assert res["protocol"] == "val" and res["selection_split"] == "val200"
    with pytest.raises(SystemExit, match=r"protocol: checkpoint has 'retrain', flags give 'paper'"):
        evolution.cli(args + ["--protocol", "paper", "--save_path", str(tmp_path / "p")])


def test_report_labels_retrained_rows_apart(searched, tmp_path):
    """Fails if the report merges inherited, retrained-from-supernet and fresh GLoRA rows (their
    numbers mean different things) or drops the protocol from the label."""
    from vtab.report import collect

    root = searched
    subnet = str(root / "search" / "subnet.yaml")
    if not (root / "fresh_export" / "results.json").is_file():
        retrain(root, "fresh", "--subnet", subnet, "--lr", "1e-2")
    if not (root / "warm_export" / "results.json").is_file():
        retrain(root, "warm", "--subnet", subnet, "--lr", "1e-2", "--init-from", str(root / "supernet"))
    labels = {row.label for row in collect(root).ours}
    assert {"ours: glora@0.006M [retrain, selected on val200]",
            "ours: glora@0.006M retrained from supernet [retrain, selected on val200]",
            "ours: glora@0.006M retrained fresh [retrain, selected on val200]"} <= labels


@pytest.mark.slow
def test_compile_on_trains_and_searches_like_eager(searched, tmp_path):
    """Fails if --compile on changes what a fixed subnet learns or which subnet a search picks
    (compiled graphs must compute the same model), or if it is not accepted by both commands."""
    root = searched
    trained = {}
    for flag in ("off", "on"):
        supernet.cli(["--config", str(root / "tiny.yaml"), "--save_path", str(tmp_path / f"lora_{flag}"),
                      "--subnet", "lora", "--epochs", "1", "--eval-every", "1", "--compile", flag])
        trained[flag] = load_checkpoint(tmp_path / f"lora_{flag}" / "eurosat.pt")["state_dict"]
    assert trained["on"].keys() == trained["off"].keys()
    for key in trained["off"]:
        torch.testing.assert_close(trained["on"][key], trained["off"][key], rtol=1e-4, atol=1e-5)
    searches = {}
    for flag in ("off", "on"):
        evolution.cli(["--config", str(root / "tiny.yaml"), "--load_path", str(root / "supernet"),
                       "--save_path", str(tmp_path / f"search_{flag}"), "--compile", flag, *SMALL_SEARCH])
        searches[flag] = yaml.safe_load((tmp_path / f"search_{flag}" / "subnet.yaml").read_text())["layers"]
    assert searches["on"] == searches["off"]
