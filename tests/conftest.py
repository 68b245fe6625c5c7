"""Shared fixtures: tiny timm ViTs that run in milliseconds on the CPU."""
import pytest
import timm
import torch

TINY_VIT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def make_tiny_vit(num_classes: int = 5, seed: int = 0, **overrides) -> torch.nn.Module:
    """A deterministic tiny ViT (2 blocks, width 32, 32x32 input)."""
    torch.manual_seed(seed)
    kwargs = {**TINY_VIT_KWARGS, **overrides}
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **kwargs)
    with torch.no_grad():  # timm zero-initialises biases; a pretrained model's are not zero
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


def randomize_glora(model: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    """Give every glora_* tensor non-zero values so no support is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".glora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
