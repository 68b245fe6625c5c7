"""PEFT export: every choice maps exactly onto PEFT's GLoRA layer, a searched subnet round-trips
through save_pretrained / from_pretrained and merge_and_unload with our logits, and what PEFT
cannot express is refused in one line naming the layer."""
import json
import os
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


# ---------------------------------------------------------------- the standard PEFT load
# Runs in a fresh interpreter that never imports glora: the base model is built from what the
# manifest records, then the README's own loading code runs on it.
PLAIN_LOAD = r'''
import hashlib, json, re, sys
import timm, torch
from safetensors.torch import load_file

folder, inputs = sys.argv[1], sys.argv[2]
base_record = json.load(open(f"{folder}/glora_adapters.json"))["base_model"]
assert hashlib.sha256(open(base_record["pretrained"], "rb").read()).hexdigest() == base_record["pretrained_sha256"]
base = timm.create_model(base_record["timm_model"], num_classes=base_record["num_classes"], **base_record["model_args"])
missing, unexpected = base.load_state_dict(load_file(base_record["pretrained"]), strict=False)
assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
code = re.search(r"```python\n(.*?)```", open(f"{folder}/README.md").read(), re.S).group(1)
exec(code)
x = torch.load(inputs)["x"]
with torch.no_grad():
    torch.save(model(x), f"{inputs}.out")
assert not any(name == "glora" or name.startswith("glora.") for name in sys.modules)
'''


def merged_logits(tmp, subnet: dict, x: torch.Tensor) -> torch.Tensor:
    """Our model for ``subnet`` on the checkpoint of ``supernet_run``, merged into plain linears."""
    from glora.run.backbone import build_model
    ours = build_model("vit_tiny_patch16_224", 10, str(tmp / "bb.safetensors"), TINY_VIT_KWARGS, 0.0)
    names = glora.inject_glora(ours, RANK)
    glora.load_trained_state(ours, torch.load(tmp / "sn" / "eurosat.pt", weights_only=True)["state_dict"])
    glora.set_subnet(ours, [subnet[n] for n in names])
    with torch.no_grad():
        return glora.merge_glora(ours.eval())(x)


def test_each_export_loads_with_plain_peft_in_a_process_without_glora(supernet_run, capsys):
    """Fails if `PeftModel.from_pretrained(base, folder)` on a --single-adapter export (or the README's
    snippet on a multi-adapter export) gives another model than the merged subnet, if the export does
    not record its base model (timm name, model_args, backbone sha256) in the manifest and in
    base_model_name_or_path, or if the single adapter's extra size is not stated."""
    import hashlib
    import subprocess
    import sys

    tmp = supernet_run
    names = [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    rng = random.Random(5)
    subnet = {name: sample_choice(rng, RANK) for name in names}
    subnet[names[0]] = {"A": "LoRA_4", "B": "vector", "C": "LoRA_4", "D": "vector", "E": "constant"}
    subnet[names[1]] = {"A": "constant", "B": "none", "C": "none", "D": "none", "E": "none"}
    (tmp / "subnet.yaml").write_text(yaml.safe_dump({"rank": RANK, "layers": subnet}))
    x = torch.randn(3, 3, 32, 32)
    torch.save({"x": x}, tmp / "x.pt")
    want = merged_logits(tmp, subnet, x)
    sha = hashlib.sha256((tmp / "bb.safetensors").read_bytes()).hexdigest()
    common = ["--checkpoint", str(tmp / "sn" / "eurosat.pt"), "--subnet", str(tmp / "subnet.yaml")]
    for flags in ([], ["--single-adapter"]):
        out = tmp / ("single" if flags else "multi")
        cli([*common, "--out", str(out), *flags])
        printed = capsys.readouterr().out
        manifest = json.loads((out / "glora_adapters.json").read_text())
        ckpt = torch.load(tmp / "sn" / "eurosat.pt", weights_only=True)
        assert manifest["base_model"] == {"timm_model": "vit_tiny_patch16_224", "model_args": TINY_VIT_KWARGS,
                                          "num_classes": 10, "pretrained": str(tmp / "bb.safetensors"),
                                          "pretrained_sha256": sha, "backbone": ckpt["backbone"]}
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "vit_tiny_patch16_224"
        assert (len(manifest["adapters"]) == 1) == bool(flags)
        size = manifest["stored_numbers"]
        assert size["subnet_params"] == glora.count_params(tiny_glora_vit(), [subnet[n] for n in names])
        if flags:
            assert size["stored"] > size["per_configuration"]
            cost = f"(the single adapter costs {size['stored'] / size['per_configuration'] - 1:+.1%})"
            assert cost in printed and cost in (out / "README.md").read_text()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out), str(tmp / "x.pt")], check=True, cwd=tmp, env=env)
        got = torch.load(tmp / "x.pt.out", weights_only=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def tiny_glora_vit():
    """The layer shapes of ``supernet_run``'s model, for parameter counts."""
    model = make_tiny_vit(num_classes=10)
    glora.inject_glora(model, RANK)
    return model


def test_single_adapter_widens_bias_free_and_mixed_layers_exactly(tmp_path):
    """Fails if the single adapter misses a layer's choice when layers differ (a 'none' support or a
    smaller rank must become zeros of the wider form) or mishandles layers without bias."""
    from peft import PeftModel

    for qkv_bias in (True, False):
        model = make_tiny_vit(qkv_bias=qkv_bias)
        glora.inject_glora(model, RANK)
        randomize_glora(model)
        rng = random.Random(11)
        subnet = []
        for _, layer in glora.glora_layers(model):
            choice = sample_choice(rng, RANK)
            if layer.bias is None:
                choice.update(C="none", E="none")
            subnet.append(choice)
        subnet[-1] = {"A": "LoRA_2", "B": "none", "C": "none", "D": "none", "E": "none"}
        glora.set_subnet(model, subnet)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            want = model.eval()(x)
        out = tmp_path / f"single_{qkv_bias}"
        (plan,) = export_peft(model, out, single_adapter=True)
        assert plan.name == "default" and plan.layers == [n for n, _ in glora.glora_layers(model)]
        reloaded = PeftModel.from_pretrained(base_copy(model), str(out)).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- --out is never lost
def test_out_is_refused_unless_overwrite_and_then_only_a_previous_export(supernet_run, monkeypatch, capsys):
    """Fails if --out deletes what it is given: a folder of notes, the supernet folder holding the
    checkpoint being exported (even with a planted manifest), a file (once hidden as .name.old), the
    current folder (once a traceback); or if --overwrite cannot replace a previous export."""
    tmp = supernet_run
    ckpt = tmp / "sn" / "eurosat.pt"
    base = ["--checkpoint", str(ckpt), "--subnet", "lora"]
    notes = tmp / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    (tmp / "file.txt").write_text("a file")
    (tmp / "sn" / "glora_adapters.json").write_text("{}")
    checkpoint_bytes = ckpt.read_bytes()

    def refused(out, *flags) -> str:
        with pytest.raises(SystemExit) as err:
            cli([*base, "--out", str(out), *flags])
        assert "\n" not in str(err.value)
        return str(err.value)

    assert refused(notes) == (f"error: --out {notes} exists; give --overwrite to replace a previous PEFT export "
                              "there, or choose a new folder")
    assert refused(notes, "--overwrite") == (f"error: --out {notes} is not a previous PEFT export (it is a folder "
                                             "without glora_adapters.json); refusing to replace it (choose a new folder)")
    assert refused(tmp / "sn", "--overwrite") == (f"error: --out {tmp / 'sn'} holds {ckpt}, an input of this export; "
                                                  "refusing to replace it (choose a new folder)")
    assert refused(tmp / "file.txt", "--overwrite").startswith(f"error: --out {tmp / 'file.txt'} is not a previous PEFT export")
    monkeypatch.chdir(tmp / "notes")
    assert refused(".") == ("error: --out . exists; give --overwrite to replace a previous PEFT export there, "
                            "or choose a new folder")
    assert refused(".", "--overwrite") == ("error: --out . is not a previous PEFT export (it is a folder without "
                                           "glora_adapters.json); refusing to replace it (choose a new folder)")
    (notes / "glora_adapters.json").write_text("{}")  # even a folder that looks like an export
    assert refused(".", "--overwrite") == ("error: . is the current folder or holds it; refusing to replace it "
                                           "(give a new folder)")
    monkeypatch.chdir(tmp)
    assert (notes / "todo.txt").read_text() == "keep me" and (tmp / "file.txt").read_text() == "a file"
    assert ckpt.read_bytes() == checkpoint_bytes
    assert not [p for p in tmp.rglob(".*") if p.name.endswith((".old", ".tmp"))]
    cli([*base, "--out", str(tmp / "peft")])
    first = json.loads((tmp / "peft" / "glora_adapters.json").read_text())
    cli([*base, "--out", str(tmp / "peft"), "--overwrite", "--single-adapter"])
    second = json.loads((tmp / "peft" / "glora_adapters.json").read_text())
    assert first["single_adapter"] is False and second["single_adapter"] is True
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []
