"""Bad flags, YAML values, weights, checkpoints and logs: each refused in one line that names the
value and its valid range, before any data is read and without writing into --save_path."""
import json
import math

import pytest
import torch
import yaml

from glora.run import evolution
from glora.run import supernet
import vtab
import vtab.report
from tests.helpers import TINY_VIT_KWARGS, make_tiny_vit, write_tiny_setup

SMALL_SEARCH = ["--population-num", "4", "--select-num", "2", "--mutation-num", "2", "--crossover-num", "2",
                "--max-epochs", "1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny setup and a finished 2-epoch supernet in root/sup."""
    root = tmp_path_factory.mktemp("bad")
    write_tiny_setup(root)
    supernet.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(root / "sup"),
                  "--epochs", "2", "--lr", "1e-2"])
    return root


@pytest.fixture
def no_data(monkeypatch):
    """Reading any split fails the test: every refusal below must come before the data."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the refusal")
    monkeypatch.setattr(vtab, "load_split", refuse)


def refused(call, *argv) -> str:
    with pytest.raises(SystemExit) as err:
        call(list(argv))
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def train(root, out, *flags):
    return refused(supernet.cli, "--config", str(root / "tiny.yaml"), "--dataset", "eurosat",
                   "--save_path", str(root / out), *flags)


SUPERNET_FLAGS = [
    (["--epochs", "0"], "--epochs 0: must be an integer >= 1"),
    (["--epochs", "-1"], "--epochs -1: must be an integer >= 1"),
    (["--eval-every", "0"], "--eval-every 0: must be an integer >= 1"),
    (["--save-every", "0"], "--save-every 0: must be an integer >= 1"),
    (["--eval-subnets", "0"], "--eval-subnets 0: must be an integer >= 1"),
    (["--lr", "nan"], "--lr nan: must be a finite number >= 0"),
    (["--wd", "-1"], "--wd -1.0: must be a finite number >= 0"),
    (["--drop-path", "1"], "--drop-path 1.0: must be a number in [0, 1)"),
    (["--rank", "100000"], "--rank 100000: must be at most 32, the smaller side of the targeted layer "
                           "blocks.0.attn.qkv (32 -> 96); valid: 1 to 32"),
    (["--batch-size", "1000"], "--batch-size 1000 is larger than the 48 images of eurosat/train800: with whole "
                               "batches only, no step would run; valid: 1 to 48"),
    (["--model-kwargs", "[3]"], "--model-kwargs [3]: must be a JSON object"),
    (["--model-kwargs", json.dumps({**TINY_VIT_KWARGS, "bogus": 1})],
     "cannot build timm model 'vit_tiny_patch16_224' with model_kwargs"),
    (["--input-size", "64"], "the model does not accept an input of shape (1, 3, 64, 64): "),
    (["--input-size", "64", "--full-finetune"], "the model does not accept an input of shape (1, 3, 64, 64)"),
]


@pytest.mark.parametrize("flags, message", SUPERNET_FLAGS, ids=[" ".join(f[:2])[:40] for f, _ in SUPERNET_FLAGS])
def test_bad_supernet_flag_is_one_line_before_data_and_writes_nothing(root, no_data, flags, message):
    """Fails if a flag outside its range gives a traceback (timm's AssertionError for --epochs 0,
    ZeroDivisionError for --eval-every 0, the kernel's OOM kill for --rank 100000, 'loss became nan'
    for a batch larger than the split), reads data first, or creates the output folder."""
    assert message in train(root, "never", *flags)
    assert not (root / "never").exists()


def test_unknown_model_kwarg_is_named(root):
    """Fails if an unknown model_kwargs key is not named in the error."""
    assert "bogus" in train(root, "never", "--model-kwargs", json.dumps({**TINY_VIT_KWARGS, "bogus": 1}))


@pytest.mark.parametrize("value, message", [
    ([3], "epochs: [3] is not a valid int"), (True, "epochs: True is not a valid int"),
    (2.5, "epochs: 2.5 is not a valid int"),
], ids=["list", "bool", "float"])
def test_yaml_value_of_the_wrong_type_is_one_line(root, value, message):
    """Fails if a YAML value of the wrong type (epochs: [3]) passes the parser and breaks later."""
    config = root / "wrong.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((root / "tiny.yaml").read_text()), "epochs": value}))
    text = refused(supernet.cli, "--config", str(config), "--save_path", str(root / "never"))
    assert f"{config}: {message}" in text


def test_yaml_model_kwargs_must_be_a_mapping(root):
    """Fails if model_kwargs given as a YAML list reaches timm."""
    config = root / "kw.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((root / "tiny.yaml").read_text()), "model_kwargs": [1, 2]}))
    assert "model_kwargs: [1, 2] is not a mapping" in refused(supernet.cli, "--config", str(config))


def test_backbone_of_the_wrong_shape_is_one_line(root, no_data):
    """Fails if weights of another width print torch's line per tensor (73 lines for ViT-B)."""
    from safetensors.torch import save_file
    wide = make_tiny_vit(embed_dim=64)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items() if not k.startswith("head.")},
              str(root / "wide.safetensors"))
    text = train(root, "never", "--pretrained", str(root / "wide.safetensors"))
    assert "wide.safetensors does not fit the model: " in text and "tensor(s) differ in shape (first: " in text


def test_save_path_under_a_file_is_one_line(root, no_data):
    """Fails if --save_path below a regular file gives NotADirectoryError's traceback."""
    (root / "afile").write_text("x")
    assert f"--save_path {root}/afile/run: {root}/afile is a file, not a folder" in train(root, "afile/run")


def search(root, out, *flags):
    return refused(evolution.cli, "--config", str(root / "tiny.yaml"), "--dataset", "eurosat",
                   "--load_path", str(root / "sup"), "--save_path", str(root / out), *SMALL_SEARCH, *flags)


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_bad_param_limits_is_one_line(root, no_data, value):
    """Fails if --param-limits inf (OverflowError), nan or a negative budget is not refused at once."""
    shown = repr(float(value)) if value != "-1" else "-1.0"
    assert f"--param-limits {shown}: must be a finite number >= 0" in search(root, "never", "--param-limits", value)
    assert not (root / "never").exists()


@pytest.mark.parametrize("flags, message", [
    (["--m_prob", "1.5"], "--m_prob 1.5: must be a number in [0, 1]"),
    (["--population-num", "0"], "--population-num 0: must be an integer >= 1"),
    (["--min-param-limits", "2", "--param-limits", "1"], "--min-param-limits 2.0 is above --param-limits 1.0"),
])
def test_bad_search_flag_is_one_line(root, no_data, flags, message):
    """Fails if a search setting outside its range is found only after the data is read."""
    assert message in search(root, "never", *flags)


def corrupt_copy(root, name, edit) -> str:
    """A copy of the supernet folder whose checkpoint was changed by ``edit(ckpt) -> object``."""
    folder = root / name
    folder.mkdir(exist_ok=True)
    ckpt = torch.load(root / "sup" / "eurosat.pt", weights_only=True)
    torch.save(edit(ckpt), folder / "eurosat.pt")
    return str(folder)


def poison(ckpt):
    key = next(k for k in ckpt["state_dict"] if k.endswith("glora_Ad"))
    ckpt["state_dict"][key][0, 0] = math.nan
    return ckpt


@pytest.mark.parametrize("name, edit, message", [
    ("nan", poison, "holds non-finite values (NaN or inf) in 1 tensor(s), first blocks.0.attn.qkv.glora_Ad"),
    ("empty", lambda c: {"state_dict": {}}, "holds no trained tensors"),
    ("nomode", lambda c: {k: v for k, v in c.items() if k != "mode"}, "is not a complete checkpoint of this "
                                                                        "project: mode None"),
    ("original", lambda c: {"blocks.0.attn.qkv.Ad": torch.zeros(4), "blocks.0.attn.qkv.Au": torch.zeros(4, 32)},
     "looks like a checkpoint of the original code but is malformed: blocks.0.attn.qkv.Ad has shape (4,)"),
    ("partial", lambda c: {**c, "config": {**c["config"], "epochs": 80}},
     "is unfinished (epoch 2 of 80); finish it with supernet.py --resume, or pass --allow-partial"),
])
def test_bad_checkpoint_is_refused_at_load(root, no_data, name, edit, message):
    """Fails if a NaN checkpoint is searched (and fails only at export), {"state_dict": {}} gives a
    KeyError, a malformed original-format dict an IndexError, or an unfinished supernet is searched
    without a word."""
    load = corrupt_copy(root, name, edit)
    text = search(root, f"never_{name}", "--load_path", load)
    assert message in text and load in text
    assert not (root / f"never_{name}").exists()


def test_allow_partial_searches_an_unfinished_supernet_with_a_warning(root, capsys):
    """Fails if --allow-partial does not let an unfinished supernet be searched, or does so silently."""
    load = corrupt_copy(root, "partial_ok", lambda c: {**c, "config": {**c["config"], "epochs": 80}})
    evolution.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--load_path", load,
                   "--save_path", str(root / "partial_search"), "--param-limits", "0.006", *SMALL_SEARCH,
                   "--allow-partial"])
    assert "is unfinished (epoch 2 of 80); using it anyway (--allow-partial)" in capsys.readouterr().out
    assert json.loads((root / "partial_search" / "results.json").read_text())["supernet_epochs"] == 2


def test_truncated_last_log_line_is_dropped_with_a_note(root, capsys):
    """Fails if a log line cut off by a kill blocks the resume, or is kept."""
    out = root / "trunc"
    supernet.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(out),
                  "--epochs", "3", "--lr", "1e-2"])
    ckpt = torch.load(out / "eurosat.pt", weights_only=True)
    ckpt["epoch"], log = 2, out / "eurosat_log.jsonl"  # as if killed while epoch 3 was logged
    torch.save(ckpt, out / "eurosat.pt")
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:9])
    capsys.readouterr()
    supernet.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(out),
                  "--epochs", "3", "--lr", "1e-2", "--resume"])
    assert f"note: {log}:3: dropped an incomplete last line" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_damaged_log_line_in_the_middle_names_the_file_and_line(root):
    """Fails if a damaged line inside the log gives a JSONDecodeError traceback on resume."""
    out = root / "trunc"
    log = out / "eurosat_log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    ckpt = torch.load(out / "eurosat.pt", weights_only=True)
    ckpt["epoch"] = 2
    torch.save(ckpt, out / "eurosat.pt")
    text = train(root, "trunc", "--epochs", "3", "--lr", "1e-2", "--resume")
    assert f"{log}:2: not a log record ('{{not json'); mend or delete that line" in text


def test_interrupt_before_the_first_generation_does_not_name_a_missing_state(root, monkeypatch):
    """Fails if a search stopped before its first state names a search_state.json that does not
    exist and suggests --resume."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("glora.run.searcher.eval_loader", stop)
    text = str(pytest.raises(SystemExit, evolution.cli, [
        "--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--load_path", str(root / "sup"),
        "--save_path", str(root / "early"), "--param-limits", "0.006"]).value.code)
    assert text == (f"interrupted before a search state was written (there is no {root / 'early'}/"
                    "search_state.json); run the same command again to start over")
    assert not (root / "early" / "search_state.json").exists()


def test_report_out_under_a_file_is_one_line(tmp_path, capsys):
    """Fails if python -m vtab.report --out below a file gives a traceback."""
    (tmp_path / "runs" / "t" / "glora").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "glora" / "results.json").write_text(json.dumps(
        {"dataset": "mini_digits", "method": "glora", "test_acc1": 50.0, "params_M": 0.1, "protocol": "val",
         "selection_split": "val200"}))
    (tmp_path / "afile").write_text("x")
    assert vtab.report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "rep"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err == f"vtab.report: error: --out {tmp_path}/afile/rep: {tmp_path}/afile is a file, not a folder\n"


class Payload:
    """Pickles into a call of os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_and_yaml_do_not_execute(root, no_data, tmp_path):
    """Fails if a checkpoint that pickles a function call, or a YAML file with a Python tag, runs
    code on load (torch.load without weights_only, yaml.load), or fails with a traceback."""
    marker = tmp_path / "pwned"
    (tmp_path / "evil").mkdir()
    torch.save({"state_dict": Payload(marker)}, tmp_path / "evil" / "eurosat.pt")
    text = search(root, "never_evil", "--load_path", str(tmp_path / "evil"))
    assert f"cannot read checkpoint {tmp_path / 'evil' / 'eurosat.pt'}: refused: it holds Python objects" in text
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert f"{evil} is not valid YAML" in refused(supernet.cli, "--config", str(evil))
    subnet = tmp_path / "subnet.yaml"
    subnet.write_text(f"rank: 4\nlayers: !!python/object/apply:os.system ['touch {marker}']\n")
    assert f"{subnet} is not a subnet file" in train(root, "never", "--subnet", str(subnet))
    assert not marker.exists()


def test_interrupt_before_the_first_checkpoint_is_one_line(root, monkeypatch):
    """Fails if Ctrl-C or SIGTERM while the data loads (outside the epoch loop) gives a traceback,
    or names a checkpoint to resume that was never written."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(supernet, "load_data", stop)
    with pytest.raises(SystemExit) as err:
        supernet.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path",
                      str(root / "early_sup"), "--epochs", "2"])
    assert err.value.code == "interrupted before a checkpoint was written; run the same command again"
    with pytest.raises(SystemExit) as err:
        supernet.cli(["--config", str(root / "tiny.yaml"), "--dataset", "eurosat", "--save_path",
                      str(root / "sup"), "--epochs", "2", "--lr", "1e-2", "--resume"])
    assert err.value.code == f"interrupted; the last checkpoint is {root / 'sup' / 'eurosat.pt'}; continue with --resume"
