"""Supernet sampling observed through the model: which choice each layer really computed, per forward.

Each GLoRA layer's output is matched against the outputs of all 432 choices, computed here from
the layer's stored tensors by the spec's formula. So the tests see what the model did, not how
the code draws (a per-layer draw, a whole-subnet draw per step, a hook: all the same to them).
"""
import collections
import contextlib
import itertools

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

import glora
from glora.run import supernet
from tests.helpers import make_tiny_vit, randomize_glora, write_tiny_setup

RANK = 4
# The default space at rank 4, written out independently of glora.space.
OPTIONS = {"A": ("LoRA_4", "vector", "constant", "none"), "B": ("LoRA_4", "vector", "constant", "none"),
           "C": ("LoRA_4", "vector", "none"), "D": ("vector", "constant", "none"),
           "E": ("vector", "constant", "none")}
CHOICES = [dict(zip(OPTIONS, combo)) for combo in itertools.product(*OPTIONS.values())]


def _matrix_support(option, down, up):
    """A/B/C as a dense value: LoRA_4 product, first column of the down factor, its corner, or 0."""
    if option == "LoRA_4":
        return down @ up
    if option == "vector":
        return down[:, 0:1]
    if option == "constant":
        return down[0, 0]
    return torch.zeros(())


def _vector_support(option, vec):
    return {"vector": vec, "constant": vec[0], "none": torch.zeros(())}[option]


@torch.no_grad()
def identify(layer, x, y):
    """The one choice (dict) whose output on ``x`` (n, in) equals ``y`` (n, out); error otherwise.

    The output is additive over supports, y = x W0ᵀ + b0 + Σ_s f_s, so all 432 outputs are a
    broadcast sum of 4 + 4 + 3 + 3 + 3 terms.
    """
    w0, b0 = layer.weight, layer.bias
    base = x @ w0.T + b0
    f_a = torch.stack([x @ (w0 * _matrix_support(o, layer.glora_Ad, layer.glora_Au)).expand_as(w0).T
                       for o in OPTIONS["A"]])
    f_b = torch.stack([x @ _matrix_support(o, layer.glora_Bd, layer.glora_Bu).expand_as(w0).T
                       for o in OPTIONS["B"]])
    f_c = torch.stack([(w0 @ _matrix_support(o, layer.glora_Cd, layer.glora_Cu).expand(w0.shape[1], 1))
                       .squeeze(1).expand_as(base) for o in OPTIONS["C"]])
    f_d = torch.stack([(b0 * _vector_support(o, layer.glora_D)).expand_as(base) for o in OPTIONS["D"]])
    f_e = torch.stack([_vector_support(o, layer.glora_E).expand_as(base) for o in OPTIONS["E"]])
    # (4, 4, 3, 3, 3, n, out): every combination, in the order of CHOICES
    outputs = (base + f_a[:, None, None, None, None] + f_b[None, :, None, None, None]
               + f_c[None, None, :, None, None] + f_d[None, None, None, :, None] + f_e[None, None, None, None, :])
    err = (outputs.reshape(len(CHOICES), *y.shape) - y).abs().amax(dim=(1, 2))
    tol = 1e-4 * (1 + y.abs().max())
    matches = (err <= tol).nonzero().flatten().tolist()
    assert len(matches) == 1, f"output matches {len(matches)} choices (best error {err.min():.2e})"
    return CHOICES[matches[0]]


class ChoiceLog:
    """Records, per forward of the model, the choice each GLoRA layer actually computed."""

    def __init__(self):
        self.calls = []  # (layer module, training?, choice) in call order

    def hook(self, module, inputs, output):
        if isinstance(module, glora.GLoRALinear):
            x = inputs[0].detach().reshape(-1, module.in_features)[:4].float()
            y = output.detach().reshape(-1, module.out_features)[:4].float()
            self.calls.append((module, module.training, identify(module, x, y)))

    def per_forward(self, num_layers, training=None):
        """[[choice of layer 0, ..., layer L-1], ...], one row per forward of the whole model."""
        calls = [c for _, t, c in self.calls if training is None or t == training]
        assert len(calls) % num_layers == 0
        return [calls[i:i + num_layers] for i in range(0, len(calls), num_layers)]


def key(choice):
    return tuple(choice[s] for s in OPTIONS)


def sampling_model(seed=5):
    model = make_tiny_vit()
    glora.inject_glora(model, RANK)
    randomize_glora(model, seed=3, scale=0.3)  # every choice gives a different output
    glora.set_subnet(model, None, seed=seed)
    log = ChoiceLog()
    for _, layer in glora.glora_layers(model):
        layer.register_forward_hook(log.hook)
    return model.eval(), log


def run_forwards(model, n):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(n):
            model(x)


def test_identify_recovers_every_fixed_choice():
    """Fails if the identification used by these tests is wrong (it must name each of the 432 choices)."""
    model = make_tiny_vit()
    glora.inject_glora(model, RANK)
    randomize_glora(model, seed=3, scale=0.3)
    _, layer = glora.glora_layers(model)[3]  # fc2: 128 -> 32, in != out
    x = torch.randn(4, layer.in_features)
    for choice in CHOICES:
        layer.set_choice(choice)
        with torch.no_grad():
            assert identify(layer, x, layer(x)) == choice


def test_every_forward_draws_a_fresh_choice_for_every_layer():
    """Fails if a layer keeps its first draw (or any earlier draw) instead of drawing at every forward."""
    model, log = sampling_model()
    run_forwards(model, 40)
    rows = log.per_forward(8)
    assert len(rows) == 40
    for layer in range(8):
        seq = [key(row[layer]) for row in rows]
        # 40 uniform draws from 432 repeat a choice only a few times; a cached draw gives 1 distinct.
        assert len(set(seq)) >= 30, f"layer {layer}: only {len(set(seq))} distinct choices in 40 forwards"
        assert sum(a == b for a, b in zip(seq, seq[1:])) <= 2  # consecutive forwards differ


def test_layers_draw_independently_of_each_other():
    """Fails if layers share one draw per forward, or copy a support from another layer."""
    model, log = sampling_model()
    run_forwards(model, 200)
    rows = log.per_forward(8)
    assert all(len({key(c) for c in row}) > 1 for row in rows)
    for i, j in itertools.combinations(range(8), 2):
        same = sum(key(r[i]) == key(r[j]) for r in rows)
        assert same <= 5, f"layers {i} and {j} drew the same choice in {same} of 200 forwards"
    for s in OPTIONS:  # every pair of options of neighbouring layers occurs: no coupling
        pairs = {(r[i][s], r[i + 1][s]) for r in rows for i in range(7)}
        assert len(pairs) == len(OPTIONS[s]) ** 2, s


def test_draws_are_uniform_over_each_supports_options():
    """Fails if the sampler favours an option (e.g. always LoRA or never none) of any support."""
    model, log = sampling_model()
    run_forwards(model, 150)
    draws = [c for row in log.per_forward(8) for c in row]  # 1,200 draws
    for s, options in OPTIONS.items():
        counts = collections.Counter(c[s] for c in draws)
        expected = len(draws) / len(options)
        for option in options:  # binomial sd is about 15: a bound of 5 sd
            assert abs(counts[option] - expected) < 0.25 * expected, (s, dict(counts))


def test_same_seed_same_choices_other_seed_other_choices():
    """Fails if the draws ignore the sampler seed, or depend on anything but the seed."""
    def sequence(seed):
        model, log = sampling_model(seed)
        run_forwards(model, 10)
        return [[key(c) for c in row] for row in log.per_forward(8)]

    assert sequence(5) == sequence(5)
    assert sequence(5) != sequence(6)


def test_fixed_subnet_is_what_every_forward_computes():
    """Fails if set_subnet(model, subnet) leaves any layer sampling or computes another choice."""
    model, log = sampling_model()
    subnet = [CHOICES[(97 * i + 11) % len(CHOICES)] for i in range(8)]
    glora.set_subnet(model, subnet)
    run_forwards(model, 3)
    assert log.per_forward(8) == [subnet] * 3


@contextlib.contextmanager
def observe_all_glora_layers(log):
    """Global hooks: give every GLoRA layer non-zero supports before its first forward, then log it.

    Supports start at zero, where all 432 choices compute the same output; the randomisation
    (a private generator) makes the computed choice identifiable during real training.
    """
    gen, seen = torch.Generator().manual_seed(0), set()

    def randomize_once(module, inputs):
        if isinstance(module, glora.GLoRALinear) and id(module) not in seen:
            seen.add(id(module))
            with torch.no_grad():
                for name, p in module.named_parameters():
                    if name.startswith("glora_"):
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    handles = [register_module_forward_pre_hook(randomize_once), register_module_forward_hook(log.hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def train_supernet(config, out, seed):
    log = ChoiceLog()
    with observe_all_glora_layers(log):
        supernet.cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(out),
                      "--seed", str(seed)])
    return log


def test_supernet_training_draws_per_step_and_validates_on_fixed_subnets(tmp_path):
    """Fails if supernet.py trains one subnet (a draw cached for the run or an epoch), draws one choice
    for all layers, or validates on random paths instead of the same fixed subnets each time (and
    from the seed: the same in a rerun, others for another seed)."""
    config = write_tiny_setup(tmp_path, epochs=4, eval_every=2, lr="1e-3")
    log = train_supernet(config, tmp_path / "a", seed=42)
    steps = log.per_forward(8, training=True)
    assert len(steps) == 4 * 3  # 4 epochs of 48 images in batches of 16
    for layer in range(8):
        assert len({key(row[layer]) for row in steps}) >= 9, f"layer {layer} repeats its choice"
    assert all(len({key(c) for c in row}) > 1 for row in steps)
    evals = log.per_forward(8, training=False)  # 2 validations x 3 subnets x 1 batch of 16
    assert len(evals) == 6 and evals[:3] == evals[3:]
    assert len({tuple(map(key, row)) for row in evals[:3]}) == 3
    again = train_supernet(config, tmp_path / "b", seed=42)
    assert again.per_forward(8, training=True) == steps and again.per_forward(8, training=False) == evals
    other = train_supernet(config, tmp_path / "c", seed=7)
    assert other.per_forward(8, training=True) != steps and other.per_forward(8, training=False) != evals
