"""The parameter budget: the counting rule against the tensors a choice reads, and a search whose
budget really binds (most uniform draws of the tiny model fall outside it)."""
import json
import random

import pytest
import torch
import yaml

from glora.run import evolution
import glora
from glora.run import supernet
from glora.layer import GLoRALinear
from tests.helpers import make_tiny_vit, parse_subnet_key, write_tiny_setup

OPTIONS = {"A": ("LoRA_4", "LoRA_2", "vector", "constant"), "B": ("LoRA_4", "LoRA_1", "vector", "constant"),
           "C": ("LoRA_4", "LoRA_3", "vector"), "D": ("vector", "constant"), "E": ("vector", "constant")}
NONE = {s: "none" for s in "ABCDE"}
# The tiny ViT's GLoRA layers (in, out), in injection order: qkv, proj, fc1, fc2 per block.
TINY_SHAPES = [(32, 96), (32, 32), (32, 128), (128, 32)] * 2


def spec_params(choice, in_f, out_f):
    """The budget rule of the spec, written out: LoRA_k k(in+out) (C: k(in+1)); vector out (C: in);
    constant 1; none 0."""
    total = 0
    for s, option in choice.items():
        if option.startswith("LoRA_"):
            k = int(option[5:])
            total += k * (in_f + 1) if s == "C" else k * (in_f + out_f)
        elif option == "vector":
            total += in_f if s == "C" else out_f
        elif option == "constant":
            total += 1
    return total


@pytest.mark.parametrize("in_f,out_f", [(6, 5), (5, 9)])
@pytest.mark.parametrize("support,option", [(s, o) for s, opts in OPTIONS.items() for o in opts])
def test_count_equals_the_stored_entries_the_option_reads(support, option, in_f, out_f):
    """Fails if an option's parameter count differs from the number of stored entries that change
    the layer's output, e.g. C = vector counted as out_features instead of in_features."""
    torch.manual_seed(0)
    layer = GLoRALinear(torch.randn(out_f, in_f), torch.randn(out_f), rank=4)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("glora_"):
                p.copy_(torch.randn_like(p))
    choice = {**NONE, support: option}
    layer.set_choice(choice)
    x = torch.randn(7, in_f)
    (layer(x) * torch.randn(7, out_f)).sum().backward()
    influential = sum(int((p.grad != 0).sum()) for name, p in layer.named_parameters()
                      if name.startswith("glora_") and p.grad is not None)
    assert influential == spec_params(choice, in_f, out_f)
    assert glora.choice_params(choice, in_f, out_f) == influential


def test_count_params_of_the_tiny_vit_by_hand():
    """Fails if count_params swaps in/out for C or A/B vectors, or drops layers: hand sums over the
    tiny ViT's (32->96, 32->32, 32->128, 128->32) x 2 layers."""
    model = make_tiny_vit()
    glora.inject_glora(model, 4)
    c_vector = [{**NONE, "C": "vector"}] * 8
    assert glora.count_params(model, c_vector) == 2 * (32 + 32 + 32 + 128)
    a_vector = [{**NONE, "A": "vector"}] * 8
    assert glora.count_params(model, a_vector) == 2 * (96 + 32 + 128 + 32)
    c_lora = [{**NONE, "C": "LoRA_4"}] * 8
    assert glora.count_params(model, c_lora) == 2 * 4 * (33 + 33 + 33 + 129)
    rng = random.Random(0)
    for _ in range(20):
        subnet = [{s: rng.choice(o + ("none",)) for s, o in OPTIONS.items()} for _ in range(8)]
        assert glora.count_params(model, subnet) == sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, TINY_SHAPES))


LO, HI = 3500, 4000  # 0.0035 M to 0.004 M


def uniform_draw(rng):
    space = {"A": ("LoRA_4", "vector", "constant", "none"), "B": ("LoRA_4", "vector", "constant", "none"),
             "C": ("LoRA_4", "vector", "none"), "D": ("vector", "constant", "none"),
             "E": ("vector", "constant", "none")}
    return [{s: rng.choice(o) for s, o in space.items()} for _ in TINY_SHAPES]


def test_the_window_binds_for_uniform_draws():
    """Fails if the end-to-end budget test below could pass with the budget ignored: most uniform
    draws of the tiny model must fall outside [LO, HI], on both sides."""
    rng = random.Random(0)
    totals = [sum(spec_params(c, i, o) for c, (i, o) in zip(uniform_draw(rng), TINY_SHAPES)) for _ in range(4000)]
    below, above = sum(t < LO for t in totals) / 4000, sum(t > HI for t in totals) / 4000
    assert below > 0.4 and above > 0.2


def test_search_keeps_every_candidate_inside_a_binding_budget(tmp_path):
    """Fails if evolution.py ignores --param-limits or --min-param-limits (random draws, mutants or
    crossovers outside the window are evaluated), or if the params it records are not the spec's count."""
    config = write_tiny_setup(tmp_path)
    supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "sup"),
                  "--epochs", "1"])
    evolution.cli(["--config", str(config), "--dataset", "eurosat", "--load_path", str(tmp_path / "sup"),
                   "--save_path", str(tmp_path / "s"), "--min-param-limits", str(LO / 1e6),
                   "--param-limits", str(HI / 1e6), "--population-num", "10", "--select-num", "4",
                   "--mutation-num", "5", "--crossover-num", "5", "--max-epochs", "3"])
    history = [json.loads(line) for line in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert len(history) >= 30 and {r["generation"] for r in history} == {0, 1, 2, 3}
    for record in history:
        subnet = parse_subnet_key(record["key"])
        params = sum(spec_params(c, i, o) for c, (i, o) in zip(subnet, TINY_SHAPES))
        assert params == record["params"] and LO <= params <= HI, record
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert LO <= results["params"] <= HI
    assert (results["param_limit_M"], results["min_param_limit_M"]) == (HI / 1e6, LO / 1e6)
    doc = yaml.safe_load((tmp_path / "s" / "subnet.yaml").read_text())
    chosen = list(doc["layers"].values())
    assert doc["params"] == results["params"] == sum(spec_params(c, i, o) for c, (i, o) in zip(chosen, TINY_SHAPES))
