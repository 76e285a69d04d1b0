"""T5 relative position bias: bucketed key − query offsets, a learned bias per (bucket, head)."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionSite
from attnlab.attention.core import index_grids
from attnlab.position.t5 import T5Params, T5RelativeBias, relative_position_bucket

# relative position r = key − query → bucket, worked by hand for num_buckets = 32, max_distance = 128:
# causal: 16 exact buckets (n = −r ≥ 0), then 16 + ⌊ln(n/16) / ln(8) · 16⌋, capped at 31
CAUSAL = {0: 0, -1: 1, -15: 15, -16: 16, -20: 17, -32: 21, -64: 26, -127: 31, -128: 31, -1000: 31, 5: 0}
# bidirectional: 16 buckets per sign (r > 0 adds 16), 8 exact, then 8 + ⌊ln(n/8) / ln(16) · 8⌋, capped at 15
BIDIRECTIONAL = {0: 0, -1: 1, 1: 17, -7: 7, 7: 23, -8: 8, -20: 10, 20: 26, -127: 15, -200: 15, 200: 31}


def test_causal_buckets_match_the_hand_table() -> None:
    r = torch.tensor(list(CAUSAL))
    assert relative_position_bucket(r, bidirectional=False).tolist() == list(CAUSAL.values())


def test_bidirectional_buckets_match_the_hand_table() -> None:
    r = torch.tensor(list(BIDIRECTIONAL))
    assert relative_position_bucket(r, bidirectional=True).tolist() == list(BIDIRECTIONAL.values())


def test_score_mod_adds_the_bias_of_the_bucket_and_head() -> None:
    t5 = T5RelativeBias(T5Params(), AttentionSite(d_model=8, n_heads=2, causal=True)).double()
    b, h, q_idx, kv_idx = index_grids(1, 2, 1, 41, torch.device("cpu"))  # one query at position 40
    scores = torch.randn(1, 2, 1, 41, dtype=torch.float64)
    biased = t5.score_mod()(scores, b, h, q_idx, kv_idx)
    for key, bucket in ((40, 0), (39, 1), (20, 17), (8, 21)):  # distances 0, 1, 20, 32
        for head in range(2):
            expected = scores[0, head, 0, key] + t5.bias[bucket, head]
            assert biased[0, head, 0, key].item() == expected.item()


def test_non_causal_bias_tells_left_from_right() -> None:
    t5 = T5RelativeBias(T5Params(), AttentionSite(d_model=8, n_heads=2, causal=False)).double()
    b, h, q_idx, kv_idx = index_grids(1, 2, 3, 3, torch.device("cpu"))
    bias = t5.score_mod()(torch.zeros(1, 2, 3, 3, dtype=torch.float64), b, h, q_idx, kv_idx)
    assert bias[0, 0, 1, 0].item() == t5.bias[1, 0].item()  # key one to the left: bucket 1
    assert bias[0, 0, 1, 2].item() == t5.bias[17, 0].item()  # key one to the right: bucket 17


def test_an_encoder_with_t5_bias_sees_later_tokens(make_lm) -> None:
    model = make_lm(mode="encoder", position="t5")
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 7] = (tokens[:, 7] + 1) % 31
    assert not torch.allclose(model(tokens)[:, 0], model(edited)[:, 0], atol=1e-4)
