"""--targets on both CLIs, recorded in the checkpoint; evolution.py takes the recorded settings and
refuses only a flag given explicitly (command line or YAML) that contradicts them."""
import json

import pytest
import torch
import yaml

from glora.run import evolution
from glora.run import supernet
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, save_tiny_backbone

QKV = r"blocks\.\d+\.attn\.qkv"
SMALL = ["--population-num", "6", "--select-num", "3", "--mutation-num", "3", "--crossover-num", "3",
         "--max-epochs", "1", "--param-limits", "0.01"]


@pytest.fixture(scope="module")
def qkv_run(tmp_path_factory):
    """A tiny supernet with GLoRA on qkv only, rank 2, targets given in the YAML."""
    root = tmp_path_factory.mktemp("targets")
    make_noah_task(root / "data")
    save_tiny_backbone(root / "bb.safetensors")
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
              "pretrained": str(root / "bb.safetensors"), "data_path": str(root / "data"), "rank": 2,
              "targets": QKV, "epochs": 1, "batch_size": 16, "eval_subnets": 1, "progress": False}
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    supernet.cli(["--config", str(root / "train.yaml"), "--dataset", "eurosat", "--save_path", str(root / "sn")])
    return root


def evolve(root, out, *extra):
    """evolution.py told only where the data and the checkpoint are."""
    evolution.cli(["--dataset", "eurosat", "--data-path", str(root / "data"), "--load_path", str(root / "sn"),
                   "--save_path", str(root / out), "--no-progress", *SMALL, *extra])
    return json.loads((root / out / "results.json").read_text())


def test_checkpoint_records_targets_and_evolution_takes_every_setting_from_it(qkv_run):
    """Fails if the supernet ignores --targets (YAML) or does not record it, or if evolution.py
    needs model, kwargs, rank, targets, input size, protocol or weights restated."""
    ckpt = torch.load(qkv_run / "sn" / "eurosat.pt", weights_only=True)
    assert ckpt["targets"] == QKV and ckpt["layer_names"] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    res = evolve(qkv_run, "s")
    assert res["model"] == "vit_tiny_patch16_224" and res["model_kwargs"] == TINY_VIT_KWARGS and res["rank"] == 2
    assert res["test_acc1"] == res["test_acc1_merged"]
    args = yaml.safe_load((qkv_run / "s" / "args.yaml").read_text())
    assert (args["targets"], args["input_size"], args["pretrained"]) == (QKV, 32, str(qkv_run / "bb.safetensors"))
    assert list(yaml.safe_load((qkv_run / "s" / "subnet.yaml").read_text())["layers"]) == ckpt["layer_names"]


def test_restating_the_recorded_settings_is_accepted(qkv_run):
    """Fails if restating a recorded setting (as the original README's --rank does) is refused."""
    res = evolve(qkv_run, "r", "--rank", "2", "--targets", QKV, "--input-size", "32", "--protocol", "val")
    assert res["rank"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--rank", "4"], "rank: checkpoint has 2, flags give 4"),  # 4 is the default: explicit still counts
    (["--targets", r"blocks\.\d+\.mlp\.fc1"], "targets: checkpoint has 'blocks\\\\.\\\\d+\\\\.attn\\\\.qkv', flags give"),
    (["--input-size", "64"], "input_size: checkpoint has 32, flags give 64"),
    (["--model-kwargs", '{"depth": 3}'], "model_kwargs: checkpoint has"),
])
def test_an_explicit_contradiction_is_one_line(qkv_run, flags, message):
    """Fails if a flag given on the command line that contradicts the checkpoint is silently
    overridden, or is reported with a traceback instead of one line naming the setting."""
    with pytest.raises(SystemExit) as err:
        evolve(qkv_run, "bad", *flags)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_yaml_contradiction_is_refused_too(qkv_run):
    """Fails if a setting given in the --config YAML counts as a default and is overridden."""
    (qkv_run / "evo.yaml").write_text(yaml.safe_dump({"rank": 4}))
    with pytest.raises(SystemExit, match="rank: checkpoint has 2, flags give 4"):
        evolve(qkv_run, "bad", "--config", str(qkv_run / "evo.yaml"))


def test_resume_with_other_targets_is_refused(qkv_run):
    """Fails if a supernet resumed with different --targets continues on other layers."""
    with pytest.raises(SystemExit, match=r"targets: checkpoint has .*qkv.*, flags give .*fc1"):
        supernet.cli(["--config", str(qkv_run / "train.yaml"), "--dataset", "eurosat", "--save_path",
                      str(qkv_run / "sn"), "--resume", "--epochs", "1", "--targets", r"blocks\.\d+\.mlp\.fc1"])


@pytest.mark.parametrize("targets, message", [
    (r"qkv", "error: targets 'qkv' matches no module of VisionTransformer"),
    (r".*proj", "error: targets '.*proj' matches patch_embed.proj, a Conv2d and not an nn.Linear"),
])
def test_supernet_refuses_bad_targets_in_one_line(qkv_run, targets, message):
    """Fails if --targets that matches nothing, or a Conv2d, starts a run or gives a traceback."""
    with pytest.raises(SystemExit) as err:
        supernet.cli(["--config", str(qkv_run / "train.yaml"), "--dataset", "eurosat", "--save_path",
                      str(qkv_run / "never"), "--targets", targets])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (qkv_run / "never" / "eurosat.pt").exists()


def test_search_refuses_layers_whose_bias_the_export_cannot_hold(tmp_path, capsys):
    """Fails if a search starts on a Swin supernet whose bias-free downsample.reduction is targeted
    (a subnet using C or E there could never be exported), instead of refusing in one line first."""
    make_noah_task(tmp_path / "data")
    swin = {"patch_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4, "img_size": 32}
    supernet.cli(["--dataset", "eurosat", "--data-path", str(tmp_path / "data"), "--model", "swin_tiny_patch4_window7_224",
                  "--model-kwargs", json.dumps(swin), "--input-size", "32", "--pretrained", "none", "--epochs", "1",
                  "--batch-size", "16", "--eval-subnets", "1", "--no-progress", "--save_path", str(tmp_path / "sn"),
                  "--targets", r"layers\.\d+\.(blocks\.\d+\.mlp\.fc2|downsample\.reduction)"])
    assert "note: layers.1.downsample.reduction: no bias" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        evolve(tmp_path, "s")
    assert str(err.value).startswith("error: layers.1.downsample.reduction: no bias, and timm has no flag")
    assert not (tmp_path / "s" / "search_state.json").exists()
