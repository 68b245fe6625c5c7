"""Targets given by the user: every mistake is one clear line, never a silent no-op."""
import pytest
import torch
from torch import nn

import glora
from glora.run.preflight import check_targets_called
from tests.helpers import make_tiny_vit


def one_line_error(model, targets) -> str:
    with pytest.raises(ValueError) as err:
        glora.inject_glora(model, 2, targets=targets)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_regex_that_matches_nothing_is_refused():
    """Fails if a regex that matches no module (e.g. a substring, since matching is on whole
    names) injects nothing silently."""
    message = one_line_error(make_tiny_vit(), r"qkv")
    assert message.startswith("targets 'qkv' matches no module of VisionTransformer")


def test_a_match_that_is_not_a_linear_is_refused():
    """Fails if a regex that also hits a Conv2d (patch_embed.proj) is silently narrowed to the
    linears it matches, or if a container module passes as a target."""
    message = one_line_error(make_tiny_vit(), r".*proj")
    assert message == "targets '.*proj' matches patch_embed.proj, a Conv2d and not an nn.Linear; narrow the regex"
    message = one_line_error(make_tiny_vit(), r"blocks\.\d+\.attn")
    assert "matches blocks.0.attn, a Attention and not an nn.Linear (1 more such)" in message


def test_a_linear_subclass_read_by_weight_is_refused():
    """Fails if nn.MultiheadAttention's out_proj (a Linear subclass whose weight the attention reads
    directly) is accepted as a target: GLoRA there would never act."""
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    message = one_line_error(model, r"0\.out_proj|1")
    assert "0.out_proj, a NonDynamicallyQuantizableLinear and not an nn.Linear" in message


def test_an_invalid_regex_and_a_second_injection_are_refused():
    """Fails if a malformed regex raises re.error with a traceback, or if injecting twice wraps a
    GLoRA layer again."""
    assert one_line_error(make_tiny_vit(), r"blocks\.(").startswith(
        "targets 'blocks\\\\.(' is not a valid regular expression")
    model = make_tiny_vit()
    glora.inject_glora(model, 2)
    assert one_line_error(model, None) == "blocks.0.attn.qkv already holds GLoRA supports; inject once per model"


def test_probe_passes_called_targets_and_leaves_the_model_unchanged():
    """Fails if the forward probe refuses layers that are called, leaves hooks behind, or
    disagrees with the names injection then replaces."""
    model = make_tiny_vit().eval()
    x = torch.randn(1, 3, 32, 32)
    names = check_targets_called(model, None, x)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert glora.inject_glora(model, 2) == names
