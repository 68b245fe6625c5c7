"""GLoRA end to end on other timm families (tiny random-init builds, no download): targets from a
regex, supernet steps, search with EvolutionSearch and CandidateModel, merge, export, and a reload
with plain timm that gives the same logits."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import glora
from glora.export.timm_folder import export_timm_folder
from glora.merge import CandidateModel
from glora.run.preflight import check_targets_called
from glora.search import EvolutionSearch, feasible_range

RANK = 2
BLOCKS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
FAMILIES = {
    # name: (timm model, kwargs, image size, targets, expected number of GLoRA layers)
    "deit_distilled": ("deit_tiny_distilled_patch16_224",
                       dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 32, BLOCKS, 8),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4),
             32, r"layers\.\d+\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))", 8),
    # BEiT (relative position bias) reads qkv.weight directly when it has a q/v bias: qkv is left out.
    "beit": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
             32, r"blocks\.\d+\.(attn\.proj|mlp\.(fc1|fc2))", 6),
    # EVA-02 (rotary position embeddings): qkv has the same q/v bias as BEiT's.
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2),
              28, r"blocks\.\d+\.(attn\.proj|mlp\.(fc1|fc2))", 6),
}


def build(family: str):
    name, kwargs, size, targets, count = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4, **kwargs)
    with torch.no_grad():  # timm zero-initialises biases; give them values as a pretrained model has
        for pname, param in model.named_parameters():
            if pname.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval(), size, targets, count


def supernet_steps(model, x, y, steps: int = 4) -> None:
    """A few supernet steps: every layer draws its choice per forward from a seeded sampler."""
    glora.mark_trainable(model)
    glora.set_subnet(model, None, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_end_to_end(family, tmp_path):
    """Fails if any stage breaks on a timm family other than ViT: targets that inject the wrong
    layers (or ones the forward never calls), a supernet that does not train, a search whose
    scores differ from the subnet it names, or an export that plain timm reloads differently."""
    model, size, targets, count = build(family)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, size, size, generator=gen), torch.arange(8) % 4
    names = check_targets_called(model, targets, x[:1])
    assert glora.inject_glora(model, RANK, targets=targets) == names and len(names) == count
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".glora_Ad" in n}
    supernet_steps(model, x, y)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)

    candidate = CandidateModel(model)

    def score(subnet):
        with torch.no_grad():
            return -F.cross_entropy(candidate.load(subnet)(x), y).item()

    shapes = glora.layer_shapes(model)
    search = EvolutionSearch(score, shapes, RANK, population_num=6, select_num=3, mutation_num=3,
                             crossover_num=3, max_epochs=2, max_params=feasible_range(RANK, shapes)[1] // 2,
                             seed=0)
    result = search.run()
    assert result.num_evaluated > 6 and result.params <= feasible_range(RANK, shapes)[1] // 2

    glora.set_subnet(model, result.subnet)
    with torch.no_grad():
        unmerged = model(x)
    assert -F.cross_entropy(unmerged, y).item() == pytest.approx(result.fitness, abs=1e-5)
    merged = glora.merge_glora(copy.deepcopy(model))
    folder = export_timm_folder(merged, tmp_path / "merged", size, (0.5,) * 3, (0.5,) * 3)
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), unmerged, rtol=1e-5, atol=1e-5)


def test_beit_block_targets_are_refused_where_qkv_is_never_called():
    """Fails if GLoRA is let into BEiT's qkv, whose weight the attention reads directly when it has
    a q/v bias: the supports would train and merge but never change an output."""
    model, size, _, _ = build("beit")
    with pytest.raises(ValueError) as err:
        check_targets_called(model, BLOCKS, torch.randn(1, 3, size, size))
    message = str(err.value)
    assert "\n" not in message and message.startswith("blocks.0.attn.qkv and 1 more: matched by targets")
