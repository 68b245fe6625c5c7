"""Typed settings at the boundary: every flag is a field, "given explicitly" has one rule, the
written settings replay as a --config, and a checkpoint keeps each setting once."""
import dataclasses

import pytest
import torch
import yaml

from glora.run import evolution, supernet
from glora.run.checkpoint import MODEL_KEYS, recorded_settings
from glora.run.settings import SearchSettings, TrainSettings
from glora.run.trainer import Run
from tests.helpers import write_tiny_setup

STEPS = [(supernet, TrainSettings), (evolution, SearchSettings)]


@pytest.mark.parametrize("module, kind", STEPS)
def test_every_flag_is_a_field_and_nothing_else(module, kind):
    """Fails if a flag is added to a parser but not to its settings (it would be dropped at the
    boundary and never recorded), or a field exists that no flag sets."""
    dests = {a.dest for a in module.get_args_parser()._actions} - {"help", "config"}
    assert {f.name for f in dataclasses.fields(kind)} - {"given", "argv"} == dests


@pytest.mark.parametrize("module, kind", STEPS)
def test_given_means_named_on_the_command_line_or_in_the_yaml(module, kind, tmp_path):
    """Fails if "given explicitly" follows another rule than "named by the user": a default value
    typed out is given, a default left alone is not, a YAML key is given."""
    (tmp_path / "c.yaml").write_text("rank: 4\n")  # rank 4 is also the default
    settings = module.settings_from(["--config", str(tmp_path / "c.yaml"), "--input-size", "224"])
    assert isinstance(settings, kind)
    assert settings.given == {"rank", "input_size"}
    assert module.settings_from([]).given == frozenset()


@pytest.mark.parametrize("module, kind", STEPS)
def test_the_written_settings_replay_as_a_config(module, kind, tmp_path):
    """Fails if a run's resolved settings (args.yaml) are not a valid --config for the same step,
    or replay to other values."""
    argv = ["--dataset", "eurosat", "--rank", "2", "--model-kwargs", '{"depth": 2}', "--no-progress"]
    settings = module.settings_from(argv)
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(settings.record(), sort_keys=False))
    replayed = module.settings_from(["--config", str(tmp_path / "args.yaml")])
    assert replayed == settings and replayed.record() == settings.record()


def test_settings_are_never_rewritten():
    """Fails if the settings record can be changed in place (a stage rewriting what the user asked)."""
    settings = supernet.settings_from([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rank = 8
    assert settings.replace(rank=8).rank == 8 and settings.rank == 4


def test_a_checkpoint_keeps_each_setting_once(tmp_path):
    """Fails if the model settings are stored both at the checkpoint's top level and in its config
    (two copies that can disagree), or if reading them back loses one."""
    config = write_tiny_setup(tmp_path)
    settings = supernet.settings_from(["--config", str(config), "--dataset", "eurosat", "--rank", "2"])
    torch.manual_seed(0)
    payload = Run(settings, torch.device("cpu")).payload()
    assert set(payload["config"]) & set(MODEL_KEYS) == set()
    # The same names above hold what the flag resolved to, not a copy: the task for its spelling,
    # the layer choices for a subnet file's name, the validation subnets for their number.
    assert set(payload["config"]) & {k for k in payload if k != "config"} == {"dataset", "subnet", "eval_subnets"}
    recorded = recorded_settings(payload)
    assert recorded["rank"] == 2 and recorded["model_kwargs"] == settings.model_kwargs
    assert {k: recorded[k] for k in settings.record() if k != "targets"} == \
        {k: v for k, v in settings.record().items() if k != "targets"}
    assert recorded["targets"] is not None  # resolved to the default targets


@pytest.mark.parametrize("module, kind", STEPS)
def test_print_config_prints_a_config_that_replays(module, kind, tmp_path, capsys):
    """Fails if --print-config runs the step, or prints something that is not a --config giving the
    same settings."""
    argv = ["--dataset", "eurosat", "--rank", "2", "--save-path", str(tmp_path / "never")]
    module.cli([*argv, "--print-config"])
    printed = capsys.readouterr().out
    assert not (tmp_path / "never").exists()
    (tmp_path / "printed.yaml").write_text(printed)
    assert module.settings_from(["--config", str(tmp_path / "printed.yaml")]) == module.settings_from(argv)


def test_timm_style_model_kwargs_and_hyphenated_spellings():
    """Fails if --model-kwargs takes only JSON (timm users write key=value pairs), or if the
    hyphenated spellings of --save_path, --load_path and --m_prob are refused."""
    pairs = supernet.settings_from(["--model-kwargs", "depth=2", "img_size=32", "depths=[2,2]", "act=gelu"])
    as_json = supernet.settings_from(["--model-kwargs", '{"depth": 2, "img_size": 32, "depths": [2, 2], "act": "gelu"}'])
    assert pairs.model_kwargs == as_json.model_kwargs == {"depth": 2, "img_size": 32, "depths": [2, 2], "act": "gelu"}
    hyphens = evolution.settings_from(["--save-path", "a", "--load-path", "b", "--m-prob", "0.3"])
    assert (hyphens.save_path, hyphens.load_path, hyphens.m_prob) == ("a", "b", 0.3)
    with pytest.raises(SystemExit):
        supernet.settings_from(["--model-kwargs", "depth"])
