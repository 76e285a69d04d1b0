"""RCMHA: causal depth-wise convolutions on q, k, v and Transformer-XL relative scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.attention.normalisers.softmax import Softmax

SITE = AttentionSite(d_model=16, n_heads=2)  # d_head = 8


def rcmha_module(max_distance: int = 3) -> torch.nn.Module:
    args = {"max_distance": max_distance}
    module = build_attention(AttentionConfig(heads="rcmha", heads_args=args, position="nope"), SITE).double()
    with torch.no_grad():  # the source initialises u, R, b to zero; draw them so every term shows
        for p in (module.heads.query_bias, module.heads.rel_key, module.heads.rel_bias):
            p.normal_()
    return module


@pytest.mark.parametrize(("t_q", "t_k"), [(6, 6), (2, 7)], ids=["full", "last-queries"])
def test_relative_scores_equal_a_loop_over_query_key_pairs(t_q: int, t_k: int) -> None:
    heads, p = rcmha_module(max_distance=3).heads, 3  # offsets beyond ±3 share the edge rows
    q, k, v = (torch.randn(2, 2, t, 8, dtype=torch.float64) for t in (t_q, t_k, t_k))
    scores = heads.attend(q, k, v, normaliser=Softmax(), causal=False, scale=0.5).scores
    expected = torch.empty(2, 2, t_q, t_k, dtype=torch.float64)
    for i in range(t_q):
        pos = i + t_k - t_q  # queries are the last t_q positions
        for j in range(t_k):
            row = min(max(j - pos, -p), p - 1) + p  # R_{i−j} is stored at row P − (i − j)
            for h in range(2):
                content = (q[:, h, i] + heads.query_bias[h]) @ k[:, h, j].T
                position = q[:, h, i] @ heads.rel_key[row, h] + heads.rel_bias[row, h]
                expected[:, h, i, j] = 0.5 * (content.diagonal() + position)
    torch.testing.assert_close(scores, expected, atol=1e-12, rtol=0)


def test_convolution_equals_a_trimmed_conv1d_as_in_the_source() -> None:
    conv = rcmha_module().heads.q_conv
    x = torch.randn(2, 2, 7, 8, dtype=torch.float64)  # [B, H, T, d]
    weight = conv.weight.unsqueeze(1)  # [d, 1, K], one kernel per channel
    # Conv1d(d, d, 3, groups=d, padding=2) over [B·H, d, T], last two outputs dropped.
    reference = F.conv1d(x.flatten(0, 1).transpose(1, 2), weight, conv.bias, padding=2, groups=8)[..., :-2]
    torch.testing.assert_close(conv(x), reference.transpose(1, 2).reshape(2, 2, 7, 8), atol=1e-12, rtol=0)


def test_identity_convolutions_and_zero_relative_terms_make_rcmha_mha() -> None:
    rcmha = rcmha_module()
    mha = build_attention(AttentionConfig(heads="mha", position="nope"), SITE).double()
    h = rcmha.heads
    with torch.no_grad():
        for conv in (h.q_conv, h.k_conv, h.v_conv):
            conv.weight.zero_()
            conv.weight[:, -1] = 1.0  # y_t = x_t
            conv.bias.zero_()
        for p in (h.query_bias, h.rel_key, h.rel_bias, h.v_proj.bias, h.o_proj.bias):
            p.zero_()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(mha.heads, name).weight.copy_(getattr(h, name).weight)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(rcmha(x), mha(x), atol=1e-12, rtol=0)
