"""PEFT export: every choice maps exactly onto PEFT's GLoRA layer, a searched subnet round-trips
through save_pretrained / from_pretrained and merge_and_unload with our logits, and what PEFT
cannot express is refused in one line naming the layer."""
import json
import random
import re

import pytest
import torch
import yaml
from torch import nn

import glora
from glora.run import supernet
from glora.export.peft import base_copy, export_peft, load_peft, to_peft_model, _write
from glora.run.export_peft import cli
from glora.layer import GLoRALinear
from glora.export.peft_map import PeftExportError, encode_layer, names_regex, plan_adapters
from glora.space import all_choices, sample_choice
from tests.helpers import TINY_VIT_KWARGS, make_noah_task, make_tiny_vit, randomize_glora, save_tiny_backbone
from tests.helpers import require

peft = require("peft")
from peft.tuners.glora import GloraConfig, GloraLinear  # noqa: E402

RANK = 4
NONE = {s: "none" for s in "ABCDE"}


def random_layer(bias: bool, seed: int = 0) -> GLoRALinear:
    gen = torch.Generator().manual_seed(seed)
    b0 = torch.randn(5, generator=gen, dtype=torch.float64) if bias else None
    layer = GLoRALinear(torch.randn(5, 6, generator=gen, dtype=torch.float64), b0, RANK)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.startswith("glora_"):
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
    return layer


def peft_layer_for(layer: GLoRALinear, choice: dict) -> GloraLinear:
    """PEFT's own GloraLinear over the same frozen linear, holding the encoded tensors."""
    (plan,) = plan_adapters([("layer", layer)], [choice])
    linear = nn.Linear(6, 5, bias=layer.bias is not None, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(layer.weight)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    config = GloraConfig(**{k: v for k, v in plan.config_kwargs().items() if k != "target_modules"})
    target = GloraLinear(linear, "default", config).double()
    _write(target, "default", encode_layer(layer, choice, plan), "layer")
    return target


def choices_with_smaller_k():
    """The 432 default choices plus LoRA_k below the rank, mixed across supports."""
    extra = [{"A": "LoRA_2", "B": "LoRA_3", "C": "LoRA_1", "D": "constant", "E": "vector"},
             {"A": "vector", "B": "LoRA_1", "C": "LoRA_3", "D": "none", "E": "constant"},
             {"A": "LoRA_1", "B": "constant", "C": "none", "D": "vector", "E": "none"}]
    return all_choices(RANK) + extra


def test_every_choice_is_exact_in_peft_glora_linear():
    """Fails if any choice on a layer with bias is encoded wrongly for PEFT (a widened vector or
    constant, a zero-padded LoRA_k, D and E of different types): PEFT's own layer must compute our
    output, unmerged and merged, to float64 rounding."""
    layer = random_layer(bias=True)
    x = torch.randn(3, 6, dtype=torch.float64)
    for choice in choices_with_smaller_k():
        layer.set_choice(choice)
        target = peft_layer_for(layer, choice)
        with torch.no_grad():
            want = layer(x)
            torch.testing.assert_close(target(x), want, rtol=1e-12, atol=1e-12, msg=str(choice))
            target.merge()
            torch.testing.assert_close(target(x), want, rtol=1e-12, atol=1e-12, msg=str(choice))


def test_bias_free_layers_export_without_c_and_e_and_refuse_with_them():
    """Fails if a layer without bias whose choice adds no bias is not exact in PEFT (D must be
    dropped, as it changes nothing), or if one whose choice adds a bias (C or E) is exported
    instead of refused in one line naming the layer."""
    layer = random_layer(bias=False)
    x = torch.randn(3, 6, dtype=torch.float64)
    for choice in all_choices(RANK):
        layer.set_choice(choice)
        if choice["C"] != "none" or choice["E"] != "none":
            with pytest.raises(PeftExportError) as err:
                plan_adapters([("blocks.3.attn.qkv", layer)], [choice])
            assert str(err.value).startswith("blocks.3.attn.qkv: the layer has no bias and its choice adds one")
            assert "\n" not in str(err.value)
            continue
        with torch.no_grad():
            torch.testing.assert_close(peft_layer_for(layer, choice)(x), layer(x), rtol=1e-12, atol=1e-12)


def test_names_regex_matches_exactly_its_names():
    """Fails if an adapter's target regex also matches a neighbour (blocks.11 for blocks.1, the
    wrapped base_layer) or misses one of its layers."""
    names = ["blocks.1.attn.qkv", "blocks.10.attn.qkv", "layers.0.blocks.1.mlp.fc1", "head"]
    everything = names + ["blocks.11.attn.qkv", "blocks.1.attn.qkv.base_layer", "blocks.1.attn.proj",
                          "layers.0.blocks.2.mlp.fc1", "head_dist", "blocks.0.attn.qkv"]
    pattern = re.compile(names_regex(names))
    assert [n for n in everything if pattern.fullmatch(n)] == names


def searched_vit(seed: int = 0):
    """A tiny ViT with random supports and a random subnet (several distinct PEFT configs)."""
    model = make_tiny_vit()
    glora.inject_glora(model, RANK)
    randomize_glora(model)
    rng = random.Random(seed)
    subnet = [sample_choice(rng, RANK) for _ in glora.glora_layers(model)]
    subnet[0] = {"A": "vector", "B": "LoRA_4", "C": "LoRA_4", "D": "constant", "E": "vector"}
    glora.set_subnet(model, subnet)
    return model.eval()


def test_searched_subnet_round_trips_through_peft(tmp_path):
    """Fails if the PEFT model's logits differ from ours before or after merge_and_unload, if the
    saved adapters do not reload onto a plain base (with a fresh head) through PeftModel, or if the
    adapters' regexes overlap."""
    model = searched_vit()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    plans = export_peft(model, tmp_path / "peft")
    assert len(plans) > 1 and plans[0].name == "default"
    layers = [name for plan in plans for name in plan.layers]
    assert sorted(layers) == sorted(n for n, _ in glora.glora_layers(model))  # disjoint, complete
    manifest = json.loads((tmp_path / "peft" / "glora_adapters.json").read_text())
    assert manifest["adapters"] == [plan.name for plan in plans]
    base = base_copy(model)
    torch.manual_seed(7)
    base.reset_classifier(5)  # a user's base model: the head must come from the adapters
    reloaded = load_peft(base, tmp_path / "peft")
    assert sorted(reloaded.base_model.active_adapters) == sorted(manifest["adapters"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), want, rtol=1e-5, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert not any("glora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(x), want, rtol=1e-5, atol=1e-5)


def test_uniform_subnet_is_one_adapter(tmp_path):
    """Fails if a subnet with one choice everywhere is split into several adapters."""
    model = make_tiny_vit()
    glora.inject_glora(model, RANK)
    randomize_glora(model)
    glora.set_subnet(model, glora.preset_subnet("largest", 8, RANK))
    peft_model, plans = to_peft_model(model.eval())
    assert [(p.name, p.key(), len(p.layers)) for p in plans] == [("default", ("lora", "lora", "vector", 4), 8)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def supernet_run(tmp_path):
    """A one-epoch tiny supernet checkpoint written by supernet.py."""
    make_noah_task(tmp_path / "data")
    save_tiny_backbone(tmp_path / "bb.safetensors")
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT_KWARGS, "input_size": 32,
              "pretrained": str(tmp_path / "bb.safetensors"), "data_path": str(tmp_path / "data"),
              "epochs": 1, "eval_every": 1, "eval_subnets": 1, "batch_size": 16, "progress": False}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    supernet.cli(["--config", str(tmp_path / "tiny.yaml"), "--dataset", "eurosat", "--save_path", str(tmp_path / "sn")])
    return tmp_path


def test_cli_exports_a_checkpoint_and_subnet_file(supernet_run, capsys):
    """Fails if `python -m glora.run.export_peft` cannot rebuild the model from a supernet checkpoint
    and a subnet.yaml, or writes adapters that do not compute the subnet."""
    tmp = supernet_run
    names = [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    rng = random.Random(3)
    subnet = {name: sample_choice(rng, RANK) for name in names}
    (tmp / "subnet.yaml").write_text(yaml.safe_dump({"rank": RANK, "layers": subnet}))
    cli(["--checkpoint", str(tmp / "sn" / "eurosat.pt"), "--subnet", str(tmp / "subnet.yaml"), "--out", str(tmp / "peft")])
    assert "PEFT GLoRA adapter(s) for 8 layers" in capsys.readouterr().out
    from glora.run.backbone import build_model
    ours = build_model("vit_tiny_patch16_224", 10, str(tmp / "bb.safetensors"), TINY_VIT_KWARGS, 0.0)
    glora.inject_glora(ours, RANK)
    glora.load_trained_state(ours, torch.load(tmp / "sn" / "eurosat.pt", weights_only=True)["state_dict"])
    glora.set_subnet(ours, [subnet[n] for n in names])
    base = build_model("vit_tiny_patch16_224", 10, str(tmp / "bb.safetensors"), TINY_VIT_KWARGS, 0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_peft(base, tmp / "peft")(x), ours.eval()(x), rtol=1e-5, atol=1e-5)


def test_cli_refuses_a_supernet_without_subnet_in_one_line(supernet_run):
    """Fails if exporting a supernet without naming a subnet gives a traceback or writes a folder."""
    tmp = supernet_run
    with pytest.raises(SystemExit) as err:
        cli(["--checkpoint", str(tmp / "sn" / "eurosat.pt"), "--out", str(tmp / "peft")])
    assert str(err.value) == f"error: {tmp / 'sn' / 'eurosat.pt'} is a supernet; name the searched subnet with --subnet"
    assert not (tmp / "peft").exists()
