"""Sparse prefill applied through hook points: with every block computed it reproduces the model's logits.

A tiny attnlab TransformerLM (GQA, RoPE): the hooks on ``hook_rot_q``, ``hook_rot_k``, ``hook_v`` and ``hook_z``
replace each layer's attention with the block-sparse kernel; the full pattern gives the model's own logits (with
and without the core's dense attention cut to one row), a sparse one changes them, and layers the kernel cannot
compute are refused with one line.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig
from attnlab.errors import ConfigError
from attnlab.longctx.prefill.apply import sparse_prefill
from attnlab.longctx.prefill.patterns import PatternSpec
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from tolerances import lm_atol


def tiny_lm(**attention) -> TransformerLM:
    torch.manual_seed(0)
    args = {"heads": "gqa", "heads_args": {"n_kv_heads": 2}} | attention
    cfg = ModelConfig(
        vocab_size=31, d_model=32, n_heads=4, n_layers=2, max_seq_len=256, attention=AttentionConfig(**args)
    )
    return TransformerLM(cfg).eval()


@pytest.mark.parametrize("skip_dense", [True, False])
@pytest.mark.parametrize("name", ["block-topk", "a-shape", "hip"])
def test_the_full_pattern_reproduces_the_logits(name: str, skip_dense: bool) -> None:
    model = tiny_lm()
    x = torch.randint(0, 31, (2, 203))
    with torch.no_grad():
        want = model(x)
    spec = PatternSpec(name, 16 * 64, 16)  # a budget over every block of 203 tokens
    with sparse_prefill(model, lambda layer, q, k, s: spec.build(q, k, s), skip_dense=skip_dense) as record:
        got = model(x)
    assert all(d == [1.0, 1.0] for d in record.density.values()) and sorted(record.density) == [0, 1]
    torch.testing.assert_close(got, want, atol=lm_atol(want, n_layers=2), rtol=0)


def test_a_sparse_pattern_changes_the_logits_and_records_its_density() -> None:
    model = tiny_lm()
    x = torch.randint(0, 31, (1, 200))
    with torch.no_grad():
        want = model(x)
    spec = PatternSpec("a-shape", 32, 16)
    with sparse_prefill(model, lambda layer, q, k, s: spec.build(q, k, s), keep_qkv=True) as record:
        got = model(x)
    assert (got - want).abs().max() > 1e-3
    assert 0 < record.density[0][0] < 1
    q, k, v = record.qkv[1]
    assert q.shape == (1, 4, 200, 8) and k.shape == (1, 2, 200, 8) and v.shape == (1, 2, 200, 8)


def test_a_dense_builder_equals_the_model() -> None:
    model = tiny_lm()
    x = torch.randint(0, 31, (1, 90))
    with torch.no_grad():
        want = model(x)
    with sparse_prefill(model, lambda *_: None):
        got = model(x)
    torch.testing.assert_close(got, want, atol=lm_atol(want, n_layers=2), rtol=0)


@pytest.mark.parametrize(
    ("attention", "problem"), [({"normaliser": "sigmoid"}, "normaliser"), ({"window": 8}, "window")]
)
def test_layers_the_kernel_cannot_compute_are_refused(attention: dict, problem: str) -> None:
    model = tiny_lm(**attention)
    with pytest.raises(ConfigError, match=problem), sparse_prefill(model, lambda *_: None):
        pass
