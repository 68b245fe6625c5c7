"""supernet.py end to end on a tiny ViT and a generated task: outputs, determinism, resume, failures."""
import json
import types

import pytest
import torch
import yaml

import glora.run.engine
import glora.run.trainer
from glora.run import supernet
from glora.run.config import parse_args
from tests.helpers import TINY_VIT_KWARGS, assert_same_tensors, interrupt_at, make_noah_task, save_tiny_backbone


@pytest.fixture
def setup(tmp_path):
    """Data root, backbone and a YAML config for a 4-epoch tiny run."""
    make_noah_task(tmp_path / "data")
    save_tiny_backbone(tmp_path / "bb.safetensors")
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
              "pretrained": str(tmp_path / "bb.safetensors"), "data_path": str(tmp_path / "data"),
              "epochs": 4, "eval_every": 2, "batch_size": 16, "lr": "1e-3", "progress": False}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def run(setup, out, *extra):
    argv = ["--config", str(setup / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(setup / out), *extra]
    supernet.cli(argv)
    return torch.load(setup / out / "eurosat.pt", weights_only=True)




def test_end_to_end_outputs(setup):
    ckpt = run(setup, "out")
    assert ckpt["epoch"] == 4 and ckpt["mode"] == "supernet" and ckpt["protocol"] == "val"
    assert ckpt["rank"] == 4 and ckpt["model"] == "vit_tiny_patch16_224" and len(ckpt["layer_names"]) == 8
    assert all(".glora_" in k or k.startswith("head.") for k in ckpt["state_dict"])
    assert ckpt["config"]["lr"] == 1e-3  # the YAML string "1e-3" was typed by argparse
    assert ckpt["versions"]["torch"] == torch.__version__
    saved = yaml.safe_load((setup / "out" / "eurosat_args.yaml").read_text())
    assert saved["epochs"] == 4 and saved["model_kwargs"] == TINY_VIT_KWARGS
    log = [json.loads(line) for line in (setup / "out" / "eurosat_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    evals = [r for r in log if "val_acc1" in r]
    assert [r["epoch"] for r in evals] == [2, 4] and all(r["split"] == "val200" for r in evals)
    assert len(evals[0]["val_acc1_per_subnet"]) == 3
    # The schedule mirrors the original: warm-up from 1e-6, the scheduler stepped with the
    # finished epoch's index.
    assert log[0]["lr"] == pytest.approx(1e-6) and log[1]["lr"] == pytest.approx(1e-6)
    assert log[2]["lr"] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 10)


def test_same_seed_gives_identical_checkpoint(setup):
    a, b = run(setup, "a"), run(setup, "b")
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert a["sampler"] == b["sampler"]
    c = run(setup, "c", "--seed", "7")
    assert not torch.equal(a["state_dict"]["head.weight"], c["state_dict"]["head.weight"])


def test_interrupt_saves_and_resume_equals_uninterrupted(setup, monkeypatch):
    straight = run(setup, "straight")
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(SystemExit, match="interrupted in epoch 3.*--resume"):
            run(setup, "resumed")
    saved = torch.load(setup / "resumed" / "eurosat.pt", weights_only=True)
    assert saved["epoch"] == 2
    resumed = run(setup, "resumed", "--resume")
    assert resumed["epoch"] == 4
    assert_same_tensors(straight["state_dict"], resumed["state_dict"])
    log = (setup / "resumed" / "eurosat_log.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in log] == [1, 2, 3, 4]


def test_resume_with_different_rank_or_protocol_is_refused(setup):
    run(setup, "out")
    with pytest.raises(SystemExit, match=r"rank: checkpoint has 4, flags give 2"):
        run(setup, "out", "--resume", "--rank", "2")
    with pytest.raises(SystemExit, match=r"protocol: checkpoint has 'val', flags give 'paper'"):
        run(setup, "out", "--resume", "--protocol", "paper")


def test_resume_with_a_different_schedule_is_refused(setup):
    run(setup, "out", "--epochs", "2")
    with pytest.raises(SystemExit, match=r"was trained with other settings \(epochs: 2 -> 6\); resume with"):
        run(setup, "out", "--resume", "--epochs", "6")


def test_checkpoint_is_written_every_epoch_by_default(setup, monkeypatch):
    with monkeypatch.context() as m:
        interrupt_at(m, 4)
        with pytest.raises(SystemExit):
            run(setup, "out", "--eval-every", "100")
    assert torch.load(setup / "out" / "eurosat.pt", weights_only=True)["epoch"] == 3


def test_resume_without_checkpoint_or_with_corrupt_one(setup):
    with pytest.raises(SystemExit, match="checkpoint not found"):
        run(setup, "nothing", "--resume")
    (setup / "bad").mkdir()
    (setup / "bad" / "eurosat.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="cannot read checkpoint .*eurosat.pt"):
        run(setup, "bad", "--resume")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, monkeypatch):
    calls = {"n": 0}
    real_ce = torch.nn.functional.cross_entropy

    def poisoned(logits, target, *args, **kwargs):
        loss = real_ce(logits, target, *args, **kwargs)
        if not logits.requires_grad:  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 6 else loss  # 3 steps per epoch: NaN in epoch 3

    monkeypatch.setattr(glora.run.engine, "F", types.SimpleNamespace(cross_entropy=poisoned))
    with pytest.raises(SystemExit, match=r"loss became nan at epoch 3 .*kept the last good checkpoint"):
        run(setup, "out", "--eval-every", "1")
    ckpt = torch.load(setup / "out" / "eurosat.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_unknown_dataset_lists_known_ones(setup):
    with pytest.raises(SystemExit, match=r"unknown.*cifar.*smallnorb_ele"):
        supernet.cli(["--config", str(setup / "tiny.yaml"), "--dataset", "imagenet", "--save_path", str(setup / "x")])


def test_missing_data_names_the_path(setup):
    with pytest.raises(SystemExit, match=r"dtd.*data/README.md"):
        supernet.cli(["--config", str(setup / "tiny.yaml"), "--dataset", "dtd", "--save_path", str(setup / "x")])


def test_missing_pretrained_weights_is_a_clear_error(setup):
    with pytest.raises(SystemExit, match=r"pretrained weights not found: ViT-B_16.npz"):
        run(setup, "x", "--pretrained", "ViT-B_16.npz")


def test_fixed_subnet_trains_only_the_tensors_it_uses(setup):
    ckpt = run(setup, "lora", "--subnet", "lora")
    assert ckpt["mode"] == "subnet" and ckpt["subnet"][0]["B"] == "LoRA_4"
    settings = supernet.settings_from(["--config", str(setup / "tiny.yaml"), "--dataset", "eurosat", "--subnet", "lora"])
    torch.manual_seed(settings.seed)
    init = glora.run.trainer.Run(settings, torch.device("cpu")).trained_state()
    changed = {k for k in init if not torch.equal(init[k], ckpt["state_dict"][k])}
    assert changed == {k for k in init if k.endswith(("glora_Bd", "glora_Bu")) or k.startswith("head.")}


def test_fixed_subnet_reports_and_trains_its_budget_count(setup, capsys):
    """Fails if a vector support trains (or keeps AdamW moments for) its whole (out, r) factor: with
    the ssf preset (A, E vector) the run reports count_params + head trainable parameters, moves
    only column 0 of each glora_Ad, and its optimizer state holds moments of that size."""
    ckpt = run(setup, "ssf", "--subnet", "ssf")
    outs = [96, 32, 128, 32] * 2  # the tiny ViT's GLoRA layers: qkv, proj, fc1, fc2 per block
    budget, head = 2 * sum(outs), 10 * 32 + 10
    assert f"{budget + head:,} trainable parameters (the subnet's budget count + head)" in capsys.readouterr().out
    settings = supernet.settings_from(["--config", str(setup / "tiny.yaml"), "--dataset", "eurosat", "--subnet", "ssf"])
    torch.manual_seed(settings.seed)
    init = glora.run.trainer.Run(settings, torch.device("cpu")).trained_state()
    for key, before in init.items():
        moved = before != ckpt["state_dict"][key]
        if key.endswith("glora_Ad"):
            assert moved[:, 0].all() and not moved[:, 1:].any(), key
        elif key.endswith("glora_E") or key.startswith("head."):
            assert moved.all(), key
        else:
            assert not moved.any(), key
    moments = [s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values()]
    assert sum(moments) == budget + head


def test_resume_refuses_optimizer_moments_of_whole_factors(setup):
    """Fails if a fixed-subnet checkpoint whose AdamW moments cover whole (out, r) factors (as
    written before fixed subnets trained only the entries they read) resumes into a shape error in
    the first step instead of one clear refusal."""
    run(setup, "ssf", "--subnet", "ssf")
    path = setup / "ssf" / "eurosat.pt"
    ckpt = torch.load(path, weights_only=True)
    for state in ckpt["optimizer"]["state"].values():
        if state["exp_avg"].dim() == 2 and state["exp_avg"].shape[1] == 1:  # a vector's column
            state["exp_avg"] = state["exp_avg"].repeat(1, 4)
    torch.save(ckpt, path)
    with pytest.raises(SystemExit, match="optimizer state does not fit the tensors this run trains"):
        run(setup, "ssf", "--subnet", "ssf", "--resume")


def test_subnet_file_is_accepted_and_mismatches_refused(setup):
    names = run(setup, "sup")["layer_names"]
    choice = {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "constant"}
    (setup / "subnet.yaml").write_text(yaml.safe_dump({"rank": 4, "layers": {n: choice for n in names}}))
    assert run(setup, "fixed", "--subnet", str(setup / "subnet.yaml"))["subnet"][3] == choice
    (setup / "short.yaml").write_text(yaml.safe_dump({"rank": 4, "layers": {names[0]: choice}}))
    with pytest.raises(SystemExit, match="do not match the model's 8 GLoRA layers"):
        run(setup, "fixed2", "--subnet", str(setup / "short.yaml"))


def test_yaml_unknown_key_is_rejected(setup):
    (setup / "bad.yaml").write_text("lr: 1e-4\nlearning_rate: 3\n")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) in .*bad.yaml: learning_rate"):
        parse_args(supernet.get_args_parser(), ["--config", str(setup / "bad.yaml")])


def test_cli_beats_yaml_beats_defaults(setup):
    (setup / "o.yaml").write_text("lr: 3e-4\nepochs: 7\n")
    args = parse_args(supernet.get_args_parser(), ["--config", str(setup / "o.yaml"), "--epochs", "9"])
    assert args.lr == 3e-4 and args.epochs == 9 and args.batch_size == 64


def test_original_readme_command_parses_with_original_defaults():
    argv = ["--dataset", "cifar", "--lr", "1e-4", "--model", "vit_base_patch16_224_in21k",
            "--save_path", "SAVE_DIR", "--rank", "4"]
    args = parse_args(supernet.get_args_parser(), argv)
    assert (args.dataset, args.lr, args.model, args.save_path, args.rank) == \
        ("cifar", 1e-4, "vit_base_patch16_224_in21k", "SAVE_DIR", 4)
    assert (args.epochs, args.batch_size, args.weight_decay, args.warmup_epochs, args.min_lr,
            args.warmup_lr, args.drop_path, args.seed, args.eval_every, args.pretrained,
            args.protocol, args.data_path, args.input_size) == \
        (500, 64, 1e-4, 10, 1e-5, 1e-6, 0.1, 42, 100, "ViT-B_16.npz", "val", "data/vtab-1k", 224)
