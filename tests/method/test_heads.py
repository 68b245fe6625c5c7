"""Every classifier head trains, is saved and is exported: timm's pretrained_cfg['classifier'] names
them (a distilled DeiT has two), and modules_to_save names a Hugging Face model's."""
import json

import pytest
import timm
import torch

import glora
from glora.run import evolution, supernet
from tests.helpers import make_noah_task, require

DEIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_head_names_come_from_timm_and_modules_to_save():
    """Fails if a distilled DeiT's head_dist is not a head, or a named module is not honoured."""
    deit = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, **DEIT)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, **DEIT)
    assert glora.head_names(deit) == ("head", "head_dist") and glora.head_names(vit) == ("head",)
    assert glora.head_names(vit, ["blocks.1.mlp.fc2"]) == ("blocks.1.mlp.fc2",)
    with pytest.raises(ValueError, match="modules_to_save: 'classifier' is not a module"):
        glora.head_names(vit, ["classifier"])


def test_distilled_deit_trains_saves_and_exports_both_heads(tmp_path):
    """Fails if head_dist stays frozen at a random init, is left out of the checkpoint, or is built
    again under another seed by the search (the two builds then disagree on most predictions)."""
    make_noah_task(tmp_path / "data", "eurosat", num_classes=10)
    common = ["--dataset", "eurosat", "--data-path", str(tmp_path / "data"), "--model", "deit_tiny_distilled_patch16_224",
              "--model-kwargs", json.dumps(DEIT), "--input-size", "32", "--pretrained", "none", "--no-progress",
              "--batch-size", "16"]
    supernet.cli([*common, "--save_path", str(tmp_path / "s"), "--epochs", "2", "--eval-every", "2", "--lr", "1e-2",
                  "--subnet", "lora"])
    ckpt = torch.load(tmp_path / "s" / "eurosat.pt", weights_only=True)
    assert {"head.weight", "head_dist.weight"} <= set(ckpt["state_dict"])
    torch.manual_seed(ckpt["backbone"]["init_seed"])
    fresh = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, drop_path_rate=0.1, **DEIT)
    assert not torch.equal(fresh.head_dist.weight, ckpt["state_dict"]["head_dist.weight"])  # it trained
    evolution.cli([*common, "--load_path", str(tmp_path / "s"), "--save_path", str(tmp_path / "e")])
    result = json.loads((tmp_path / "e" / "results.json").read_text())
    assert result["head_params"] == 2 * (10 * 32 + 10)
    assert result["test_acc1"] == result["test_acc1_merged"]
    merged = timm.create_model(f"local-dir:{tmp_path / 'e' / 'merged'}", pretrained=True)
    torch.testing.assert_close(merged.state_dict()["head_dist.weight"], ckpt["state_dict"]["head_dist.weight"])


def test_hugging_face_classifier_trains_with_modules_to_save():
    """Fails if a Hugging Face sequence classifier's head (``score``) stays frozen or is not saved
    when named in modules_to_save, or if the merged model's logits differ."""
    transformers = require("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, num_labels=3,
                                      pad_token_id=0, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(config)
    glora.inject_glora(model, rank=2, targets=r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj")
    trained = glora.mark_trainable(model, modules_to_save=["score"])
    assert "score.weight" in trained
    assert "score.weight" in glora.glora_state_dict(model, modules_to_save=["score"])
    glora.set_subnet(model, [{"A": "LoRA_2", "B": "vector", "C": "none", "D": "none", "E": "none"}] * 3)
    ids = torch.randint(1, 32, (2, 6))
    loss = model(input_ids=ids, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in glora.glora_state_dict(model, modules_to_save=["score"]).values():
            p.add_(0.05)
        before = model(input_ids=ids).logits
        after = glora.merge_glora(model)(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
