"""evolution.py end to end: search under a budget, resume, export to plain timm, refusals."""
import json
import shutil
import subprocess
import sys

import pytest
import timm
import torch
import yaml

from glora.run import evolution
import glora.run.searcher
from glora.run import supernet
import vtab
from glora.run.config import parse_args
from glora.run.engine import evaluate
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone

SMALL_SEARCH = ["--population-num", "8", "--select-num", "3", "--mutation-num", "3",
                "--crossover-num", "3", "--max-epochs", "2"]


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """A tiny supernet checkpoint on a generated task, trained once for the module (never written to)."""
    root = tmp_path_factory.mktemp("evo")
    make_noah_task(root / "data")
    save_tiny_backbone(root / "bb.safetensors")
    model_cfg = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
                 "pretrained": str(root / "bb.safetensors"), "data_path": str(root / "data"),
                 "progress": False}
    (root / "model.yaml").write_text(yaml.safe_dump(model_cfg))
    supernet.cli(["--config", str(root / "model.yaml"), "--dataset", "eurosat", "--save_path",
                  str(root / "supernet"), "--epochs", "2", "--eval-every", "2", "--batch-size", "16", "--lr", "1e-2"])
    return root


@pytest.fixture
def trained(trained_once, tmp_path):
    """A private copy of the module's folder (data, backbone, supernet, config), so no test sees
    another test's outputs and the order of tests does not matter."""
    root = tmp_path / "evo"
    shutil.copytree(trained_once, root)
    cfg = yaml.safe_load((root / "model.yaml").read_text())
    cfg.update(pretrained=str(root / "bb.safetensors"), data_path=str(root / "data"))
    (root / "model.yaml").write_text(yaml.safe_dump(cfg))
    return root


def search(root, out, *extra):
    evolution.cli(["--config", str(root / "model.yaml"), "--dataset", "eurosat", "--load_path",
                   str(root / "supernet"), "--save_path", str(root / out), "--param-limits", "0.006", *extra])
    return json.loads((root / out / "results.json").read_text())


def test_search_end_to_end_and_export_reloads_with_plain_timm(trained):
    res = search(trained, "s1", *SMALL_SEARCH)
    assert res["method"] == "glora" and res["protocol"] == "val" and res["selection_split"] == "val200"
    assert 0 < res["params"] <= 6000 and res["param_limit_M"] == 0.006
    assert res["test_acc1"] == res["test_acc1_merged"] and res["test_n"] == 24
    assert res["search"]["num_evaluated"] == len((trained / "s1" / "history.jsonl").read_text().splitlines())
    assert res["versions"]["timm"] == timm.__version__ and res["supernet_seed"] == 42
    doc = yaml.safe_load((trained / "s1" / "subnet.yaml").read_text())
    assert doc["rank"] == 4 and doc["params"] == res["params"]
    assert list(doc["layers"])[0] == "blocks.0.attn.qkv" and len(doc["layers"]) == 8
    # The merged folder is a plain timm model that reproduces the reported test accuracy.
    folder = trained / "s1" / "merged"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    test = vtab.load_split(trained / "data", "eurosat", "test", input_size=32, progress=False)
    loader = vtab.Loader(test, 8, shuffle=False, drop_last=False)
    assert evaluate(model, loader, torch.device("cpu"))["acc1"] == res["test_acc1"]


@pytest.mark.slow
def test_exported_folder_needs_no_project_code(trained, tmp_path):
    search(trained, "s1", *SMALL_SEARCH)
    code = ("import sys, timm, torch; assert 'glora' not in sys.modules;"
            f"m = timm.create_model('local-dir:{trained / 's1' / 'merged'}', pretrained=True).eval();"
            "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 10)"


def test_interrupted_search_resumes_to_the_same_result(trained, monkeypatch):
    straight = search(trained, "straight", *SMALL_SEARCH)
    calls = {"n": 0}
    real = glora.run.searcher.evaluate

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:  # in generation 1, after generation 0's state was written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(glora.run.searcher, "evaluate", flaky)
        with pytest.raises(SystemExit, match="search_state.json; continue with --resume"):
            search(trained, "resumed", *SMALL_SEARCH)
    state = json.loads((trained / "resumed" / "search_state.json").read_text())
    assert state["generation"] == 1
    resumed = search(trained, "resumed", *SMALL_SEARCH, "--resume")
    for key in ("params", "search_acc1", "test_acc1"):
        assert resumed[key] == straight[key]
    assert (trained / "resumed" / "subnet.yaml").read_text() == (trained / "straight" / "subnet.yaml").read_text()
    assert (trained / "resumed" / "history.jsonl").read_text() == (trained / "straight" / "history.jsonl").read_text()


def test_infeasible_budget_fails_before_reading_data(trained, tmp_path):
    root = tmp_path / "nodata"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("data", "s1", "straight", "resumed", "lora", "x"))
    cfg = yaml.safe_load((root / "model.yaml").read_text())
    cfg["data_path"] = str(root / "missing")
    (root / "model.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match=r"achievable"):
        search(root, "x", "--min-param-limits", "0.5", "--param-limits", "0.6")


def test_wrong_rank_or_protocol_is_refused(trained):
    with pytest.raises(SystemExit, match=r"rank: checkpoint has 4, flags give 2"):
        search(trained, "x", "--rank", "2")
    with pytest.raises(SystemExit, match=r"protocol: checkpoint has 'val', flags give 'paper'"):
        search(trained, "x", "--protocol", "paper")
    with pytest.raises(SystemExit, match=r"checkpoint not found: .*nowhere.*eurosat.pt"):
        evolution.cli(["--config", str(trained / "model.yaml"), "--dataset", "eurosat",
                       "--load_path", str(trained / "nowhere"), "--save_path", str(trained / "x")])


def test_preset_subnet_is_exported_without_search(trained):
    res = search(trained, "lora", "--subnet", "lora")
    lora_params = 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert res["method"] == "lora" and res["params"] == lora_params and res["param_limit_M"] is None
    assert res["test_acc1"] == res["test_acc1_merged"]
    assert not (trained / "lora" / "search_state.json").exists()


def test_original_readme_command_parses_with_original_defaults():
    argv = ["--dataset", "cifar", "--save_path", "SAVE", "--load_path", "SUPER", "--param-limits", "0.86",
            "--rank", "4"]
    args = parse_args(evolution.get_args_parser(), argv)
    assert (args.dataset, args.save_path, args.load_path, args.param_limits, args.rank) == \
        ("cifar", "SAVE", "SUPER", 0.86, 4)
    assert (args.population_num, args.select_num, args.mutation_num, args.m_prob, args.crossover_num,
            args.max_epochs, args.min_param_limits, args.seed) == (50, 10, 25, 0.2, 25, 20, 0.0, 1)


def test_original_code_checkpoint_is_converted_and_searched(trained, tmp_path):
    ours = torch.load(trained / "supernet" / "eurosat.pt", weights_only=True)["state_dict"]
    original = {k.replace(".glora_", "."): v for k, v in ours.items()}  # the original's naming
    (tmp_path / "orig").mkdir()
    torch.save(original, tmp_path / "orig" / "eurosat.pt")
    res_dir = tmp_path / "out"
    evolution.cli(["--config", str(trained / "model.yaml"), "--dataset", "eurosat", "--load_path",
                   str(tmp_path / "orig"), "--save_path", str(res_dir), "--param-limits", "0.006", *SMALL_SEARCH])
    converted = json.loads((res_dir / "results.json").read_text())
    reference = search(trained, "s_ref", *SMALL_SEARCH)
    assert converted["test_acc1"] == reference["test_acc1"] and converted["params"] == reference["params"]
    with pytest.raises(SystemExit, match="rank: checkpoint has 4, flags give 3"):
        evolution.cli(["--config", str(trained / "model.yaml"), "--dataset", "eurosat", "--load_path",
                       str(tmp_path / "orig"), "--save_path", str(tmp_path / "out3"), "--rank", "3"])


def test_full_finetune_baseline_is_evaluated_and_exported(trained):
    supernet.cli(["--config", str(trained / "model.yaml"), "--dataset", "eurosat", "--save_path",
                  str(trained / "full"), "--epochs", "1", "--batch-size", "16", "--full-finetune"])
    ckpt = torch.load(trained / "full" / "eurosat.pt", weights_only=True)
    assert ckpt["mode"] == "full" and "blocks.0.attn.qkv.weight" in ckpt["state_dict"]
    res = search(trained, "full_out", "--load_path", str(trained / "full"))
    backbone = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.startswith("head."))
    assert res["method"] == "full_finetune" and res["params"] == backbone
    assert res["test_acc1"] == res["test_acc1_merged"]
