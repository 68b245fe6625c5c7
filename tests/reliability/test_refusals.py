"""One-line refusals: checkpoints that do not match the flags, and bad subnet files.

Each mismatch below leaves tensors of the right shapes, so only the explicit check can catch it.
"""
import json
import re

import pytest
import torch
import yaml

from glora.errors import CheckpointError
from glora.run import evolution
from glora.run import supernet
from tests.helpers import TINY_VIT_KWARGS, write_tiny_setup

LAYERS = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
CHOICE = {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "constant"}


@pytest.fixture
def trained(tmp_path):
    """A 1-epoch supernet checkpoint in tmp_path/sup."""
    config = write_tiny_setup(tmp_path)
    supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "sup"),
                  "--epochs", "1"])
    return tmp_path, config


def one_line_error(excinfo):
    message = str(excinfo.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# A dropout rate and another model name that builds the same architecture: same tensors, other model.
SAME_SHAPES_OTHER_KWARGS = json.dumps({**TINY_VIT_KWARGS, "drop_rate": 0.1})


@pytest.mark.parametrize("flags,expected", [
    (["--model-kwargs", SAME_SHAPES_OTHER_KWARGS],
     r"model_kwargs: checkpoint has \{.*\}, flags give \{.*'drop_rate': 0.1"),
    (["--model", "vit_small_patch16_224"],
     r"model: checkpoint has 'vit_tiny_patch16_224', flags give 'vit_small_patch16_224'"),
    (["--subnet", "lora"], r"mode: checkpoint has 'supernet', flags give 'subnet'"),
    (["--full-finetune", "--pretrained", "none"], r"mode: checkpoint has 'supernet', flags give 'full'"),
], ids=["model_kwargs", "model", "mode_subnet", "mode_full"])
def test_supernet_resume_refuses_another_model_kwargs_or_mode(trained, flags, expected):
    """Fails if --resume accepts a checkpoint of another model name, other model kwargs or another
    mode (supernet / fixed subnet / full fine-tuning), which would load silently or fail obscurely."""
    root, config = trained
    with pytest.raises(SystemExit) as excinfo:
        supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(root / "sup"),
                      "--epochs", "1", "--resume", *flags])
    assert re.search(expected, one_line_error(excinfo))


@pytest.mark.parametrize("flags,expected", [
    (["--model-kwargs", SAME_SHAPES_OTHER_KWARGS], r"model_kwargs: checkpoint has"),
    (["--model", "vit_small_patch16_224"], r"model: checkpoint has 'vit_tiny_patch16_224'"),
], ids=["model_kwargs", "model"])
def test_evolution_refuses_a_checkpoint_of_another_model(trained, flags, expected):
    """Fails if evolution.py searches a checkpoint trained with another model name or kwargs."""
    root, config = trained
    with pytest.raises(SystemExit, match=expected) as excinfo:
        evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(root / "sup"),
                       "--save_path", str(root / "s"), "--param-limits", "0.006", *flags])
    one_line_error(excinfo)


def subnet_file(root, name, content):
    path = root / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


SUBNET_FILES = [
    ("nonsense", None,
     r"--subnet 'nonsense' is neither a preset \(linear_probe, lora, bitfit, ssf, largest\) nor a file"),
    ("list.yaml", ["a", "b"], r"list.yaml is not a subnet file \(expected 'rank' and 'layers': name -> choice\)"),
    ("broken.yaml", "rank: 4\nlayers: {a: [\n", r"broken.yaml is not a subnet file"),
    ("rank8.yaml", {"rank": 8, "layers": {n: CHOICE for n in LAYERS}},
     r"rank8.yaml was searched at rank 8, but this run has rank 4"),
    ("short.yaml", {"rank": 4, "layers": {LAYERS[0]: CHOICE}},
     r"short.yaml names layers that do not match the model's 8 GLoRA layers \(blocks.0.attn.qkv …\)"),
    ("option.yaml", {"rank": 4, "layers": {n: {**CHOICE, "A": "LoRA_9"} for n in LAYERS}},
     r"option.yaml: invalid option 'LoRA_9' for support A; valid: LoRA_k \(1 <= k <= 4\), vector, constant, none"),
    ("keys.yaml", {"rank": 4, "layers": {n: {"A": "none"} for n in LAYERS}},
     r"keys.yaml: a choice needs exactly the keys \['A', 'B', 'C', 'D', 'E'\]"),
]


@pytest.mark.parametrize("name,content,expected", SUBNET_FILES, ids=[s[0] for s in SUBNET_FILES])
def test_bad_subnet_file_is_one_line_naming_the_file(tmp_path, name, content, expected):
    """Fails if a missing, malformed, higher-rank, mismatched or invalid subnet file is accepted or
    stops with a traceback or a message that does not name the file and the problem."""
    config = write_tiny_setup(tmp_path)
    spec = name if content is None else subnet_file(tmp_path, name, content)
    with pytest.raises(SystemExit, match=expected) as excinfo:
        supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "x"),
                      "--subnet", spec])
    one_line_error(excinfo)
    assert not (tmp_path / "x" / "eurosat.pt").exists()


def test_bad_subnet_file_is_refused_by_evolution_too(trained):
    """Fails if evolution.py --subnet accepts a subnet file that does not match the model."""
    root, config = trained
    spec = subnet_file(root, "short.yaml", {"rank": 4, "layers": {LAYERS[0]: CHOICE}})
    with pytest.raises(SystemExit, match=r"short.yaml names layers that do not match") as excinfo:
        evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(root / "sup"),
                       "--save_path", str(root / "s"), "--subnet", spec])
    one_line_error(excinfo)


def test_lower_rank_subnet_file_is_accepted(trained):
    """Fails if a subnet searched at a lower rank (LoRA_2 in a rank-4 run) is refused or changed."""
    root, config = trained
    choice = {**CHOICE, "B": "LoRA_2"}
    spec = subnet_file(root, "rank2.yaml", {"rank": 2, "layers": {n: choice for n in LAYERS}})
    evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(root / "sup"),
                   "--save_path", str(root / "s"), "--subnet", spec])
    doc = yaml.safe_load((root / "s" / "subnet.yaml").read_text())
    assert list(doc["layers"].values()) == [choice] * 8
    assert doc["params"] == 2 * (96 + 1 + 2 * (32 + 96)) + 2 * (32 + 1 + 2 * (32 + 32)) \
        + 2 * (128 + 1 + 2 * (32 + 128)) + 2 * (32 + 1 + 2 * (128 + 32))


# ---------------------------------------------------------------- tampered checkpoints
@pytest.mark.parametrize("tamper, message", [
    (lambda c: {**c, "epoch": 99}, "epoch 99 (expected 0 to its --epochs"),
    (lambda c: {**c, "epoch": -5}, "epoch -5 (expected 0 to its --epochs"),
    (lambda c: {**c, "state_dict": {k: v.to(torch.int64) for k, v in c["state_dict"].items()}}, "holds torch.int64 values"),
])
def test_a_tampered_checkpoint_is_refused(tmp_path, tamper, message):
    """Fails if a checkpoint claiming an impossible epoch (99 of 3, or -5, which trained 8 epochs
    to a loss of 140) or integer 'trained' tensors is accepted."""
    from glora.run.checkpoint import load_checkpoint

    config = write_tiny_setup(tmp_path, dataset="eurosat")
    supernet.cli(["--config", str(config), "--save_path", str(tmp_path / "s"), "--epochs", "1", "--eval-every", "1"])
    ckpt = torch.load(tmp_path / "s" / "eurosat.pt", weights_only=True)
    torch.save(tamper(ckpt), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_malformed_training_state_is_one_line(tmp_path):
    """Fails if a malformed optimizer, sampler or RNG state gives a traceback on --resume."""
    config = write_tiny_setup(tmp_path, dataset="eurosat")
    argv = ["--config", str(config), "--save_path", str(tmp_path / "s"), "--epochs", "2", "--eval-every", "2"]
    supernet.cli(argv)
    ckpt = torch.load(tmp_path / "s" / "eurosat.pt", weights_only=True)
    for part, bad in (("sampler", {"version": 3}), ("torch_rng", torch.zeros(3)), ("optimizer", {"state": 1})):
        torch.save({**ckpt, "epoch": 1, part: bad}, tmp_path / "s" / "eurosat.pt")
        with pytest.raises(SystemExit, match=f"its {part} state is malformed"):
            supernet.cli([*argv, "--resume"])
