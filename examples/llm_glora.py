"""GLoRA on a Hugging Face LLaMA-style model: supernet, search, merge, PEFT adapters.

    pip install -r requirements-extras.txt && python examples/llm_glora.py

A tiny model built from a config (no download) learns a toy task (sequences that count up modulo
the vocabulary). Swap in ``LlamaForCausalLM.from_pretrained(...)`` and your own data and metric.
"""
import copy
import warnings

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import glora
from glora.export.peft import export_peft, load_peft
from glora.merge import CandidateModel
from glora.search import EvolutionSearch

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notices
TARGETS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VOCAB, RANK = 16, 2


def counting(seed: int, n: int = 16, length: int = 12) -> torch.Tensor:
    start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(length)) % VOCAB  # (n, length) token ids


def loss_of(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits  # (n, length, vocab)
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


torch.manual_seed(0)
config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
model = LlamaForCausalLM(config).eval()
base = LlamaForCausalLM(config).eval()
base.load_state_dict(model.state_dict())  # an untouched copy, to load PEFT adapters onto later
train, val = counting(0), counting(1)

names = glora.inject_glora(model, RANK, targets=TARGETS)  # 7 projections x 2 layers
glora.mark_trainable(model)
glora.set_subnet(model, None, seed=0)  # supernet: every layer draws a choice per forward
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
for step in range(30):
    loss = loss_of(model, train)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"{len(names)} GLoRA layers; supernet loss after 30 steps {loss.item():.3f}")

candidate = CandidateModel(model)  # scores each candidate with plain merged linears
score = lambda subnet: -loss_of(candidate.load(subnet), val).item()  # your metric, higher is better
search = EvolutionSearch(score, glora.layer_shapes(model), RANK, population_num=10, select_num=4,
                         mutation_num=4, crossover_num=4, max_epochs=3, max_params=20_000, seed=0)
with torch.no_grad():
    best = search.run()
print(f"best subnet: {best.params} params, val loss {-best.fitness:.3f}")

glora.set_subnet(model, best.subnet)
with torch.no_grad():
    logits = model(input_ids=val).logits
    merged = glora.merge_glora(copy.deepcopy(model))  # plain nn.Linear; bias-free ones may gain a bias
    print("merged logits equal:", torch.allclose(merged(input_ids=val).logits, logits, atol=1e-5))

# PEFT keeps bias-free layers bias-free, so its adapters need C and E 'none' there (D is dropped).
glora.set_subnet(model, [{**choice, "C": "none", "E": "none"} for choice in best.subnet])
plans = export_peft(model, "runs/llm_peft", overwrite=True)  # replaces only a previous export
with torch.no_grad():
    ours = model(input_ids=val).logits
    theirs = load_peft(base, "runs/llm_peft")(input_ids=val).logits
print(f"{len(plans)} PEFT adapter(s) in runs/llm_peft; logits equal:", torch.allclose(theirs, ours, atol=1e-5))
