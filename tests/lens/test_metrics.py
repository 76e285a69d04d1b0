"""Known answers for the lens metrics on hand-built patterns [batch, head, q, k]."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.lens.metrics import (
    attention_entropy,
    detection_score,
    duplicate_token_score,
    head_output_norm,
    head_table,
    hidden_sinks,
    induction_detection_pattern,
    induction_score,
    mean_attended_distance,
    negative_mass,
    previous_token_score,
    sink_rate,
    sink_scores,
)

T = 9


def first_token_sink(t: int = T, batch: int = 2, heads: int = 3) -> torch.Tensor:
    P = torch.zeros(batch, heads, t, t)
    P[..., 0] = 1.0
    return P


def uniform_causal(t: int = T) -> torch.Tensor:
    P = torch.ones(t, t).tril()
    return (P / P.sum(-1, keepdim=True))[None, None]  # [1, 1, T, T]


def sub_diagonal(t: int = T) -> torch.Tensor:
    """A[i, i−1] = 1; row 0 has no previous token and stays empty."""
    return torch.diag(torch.ones(t - 1), -1)[None, None]


def induction_stripe(n: int) -> torch.Tensor:
    """[BOS] + x + x: second-copy query i attends to i − n + 1; BOS and the first copy attend to BOS."""
    P = torch.zeros(1, 1, 2 * n + 1, 2 * n + 1)
    P[..., : n + 1, 0] = 1.0
    for i in range(n + 1, 2 * n + 1):
        P[..., i, i - n + 1] = 1.0
    return P


def test_first_token_sink_has_alpha_one() -> None:
    torch.testing.assert_close(sink_scores(first_token_sink()), torch.ones(3))


def test_first_token_sink_gives_sink_rate_one() -> None:
    assert sink_rate(first_token_sink(), eps=0.3).item() == 1.0


def test_first_token_sink_has_zero_entropy() -> None:
    torch.testing.assert_close(attention_entropy(first_token_sink()), torch.zeros(3))


def test_uniform_causal_row_i_has_entropy_log_i_plus_one() -> None:
    expected = torch.log(torch.arange(1, T + 1, dtype=torch.float))
    torch.testing.assert_close(attention_entropy(uniform_causal(), per_query=True)[0], expected)


def test_uniform_causal_mean_entropy_is_log_factorial_over_t() -> None:
    torch.testing.assert_close(attention_entropy(uniform_causal()), torch.tensor([math.lgamma(T + 1) / T]))


def test_uniform_causal_alpha_zero_is_mean_of_one_over_i_plus_one() -> None:
    expected = sum(1 / (i + 1) for i in range(T)) / T
    torch.testing.assert_close(sink_scores(uniform_causal()), torch.tensor([expected]))


def test_sink_rate_averages_over_layers_and_heads() -> None:
    sink, no_sink = first_token_sink(heads=2), sub_diagonal().expand(2, 2, T, T)  # α_0 = 1/T: 2 of 4 heads sink
    assert sink_rate({0: sink, 1: no_sink}).item() == 0.5


def test_sink_rate_thresholds_each_sample_before_averaging() -> None:
    P = torch.zeros(2, 1, T, T)
    P[0, ..., 0] = 1.0  # sample 0 sinks (α = 1); sample 1 does not (α = 0): batch-mean α 0.5 would pass ε
    assert sink_rate(P).item() == 0.5


def test_hidden_sink_beyond_first_token_is_found() -> None:
    P = first_token_sink(batch=1, heads=2)
    P[:, 1, 3:, 0] = P[:, 1, 3:, 3] = 0.5  # head 1: every query that can see key 3 gives it half its mass
    indices, scores = hidden_sinks(P, threshold=0.1)
    assert indices.tolist() == [[1, 3]]
    torch.testing.assert_close(scores, torch.tensor([0.5]))


def test_perfect_induction_stripe_scores_one() -> None:
    torch.testing.assert_close(induction_score(induction_stripe(5), seq_half=5), torch.ones(1))


def test_perfect_induction_stripe_has_no_previous_token_score() -> None:
    torch.testing.assert_close(previous_token_score(induction_stripe(5)), torch.zeros(1))


def test_perfect_induction_stripe_has_transformerlens_mul_score_one() -> None:
    x = torch.tensor([3, 7, 1, 4, 9])
    tokens = torch.cat([torch.tensor([0]), x, x])
    score = detection_score(induction_stripe(5), induction_detection_pattern(tokens))
    torch.testing.assert_close(score, torch.ones(1))


def test_perfect_sub_diagonal_is_a_previous_token_head() -> None:
    torch.testing.assert_close(previous_token_score(sub_diagonal()), torch.ones(1))


def test_duplicate_token_pattern_built_from_tokens_scores_one() -> None:
    tokens = torch.tensor([0, 5, 6, 5, 7, 6, 5, 8])
    P = torch.zeros(1, 1, 8, 8)
    for i in range(8):
        copies = [j for j in range(1, i) if tokens[j] == tokens[i]]
        for j in copies or [0]:  # no earlier copy: attend to BOS
            P[0, 0, i, j] = 1.0 / max(len(copies), 1)
    torch.testing.assert_close(duplicate_token_score(P, tokens), torch.ones(1))


def test_signed_pattern_negative_mass() -> None:
    P = torch.tensor([[1.0, 0.0], [1.5, -0.5]])[None, None]  # |w| sums to 1 + 2; negative 0.5
    torch.testing.assert_close(negative_mass(P), torch.tensor([0.5 / 3]))


def test_sub_diagonal_mean_attended_distance_is_one() -> None:
    torch.testing.assert_close(mean_attended_distance(sub_diagonal()), torch.ones(1))


def test_head_output_norm_of_a_3_4_vector_is_5() -> None:
    z = torch.zeros(2, 3, 5, 4)
    z[..., 0], z[..., 1] = 3.0, -4.0
    z[:, 2] *= 2
    torch.testing.assert_close(head_output_norm(z), torch.tensor([5.0, 5.0, 10.0]))


def test_head_table_has_one_row_per_layer_and_head_sorted_by_a_column() -> None:
    rows = head_table({0: first_token_sink(heads=2), 1: sub_diagonal().expand(2, 2, T, T)}, sort_by="previous_token")
    assert [(r["layer"], r["previous_token"]) for r in rows] == [(1, 1.0), (1, 1.0), (0, 0.0), (0, 0.0)]


def test_induction_score_rejects_a_length_that_is_not_bos_plus_two_copies() -> None:
    with pytest.raises(ValueError, match="2·seq_half"):
        induction_score(induction_stripe(5), seq_half=4)


def test_windowed_attention_distance_by_hand() -> None:
    from attnlab.lens.metrics import windowed_attention_distance

    # query 3 puts 0.5 on key 0 (distance 3 → clipped to 2), 0.25 on key 2 (1) and 0.25 on itself (0)
    P = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    P[0, 0, 3] = torch.tensor([0.5, 0.0, 0.25, 0.25])
    P[0, 0, 2, 1] = 1.0  # previous token: 1
    P[0, 0, 0, 0] = 1.0  # itself: 0
    waad = windowed_attention_distance(P, window=2)[0, 0]
    torch.testing.assert_close(waad[[0, 2, 3]], torch.tensor([0.0, 1.0, 0.5 * 2 + 0.25], dtype=torch.float64))
    assert torch.isnan(waad[1])  # query 1 has no mass
    assert windowed_attention_distance(P, window=10)[0, 0, 3] == pytest.approx(0.5 * 3 + 0.25)
    sigmoid_rows = P * 3.0  # unnormalised rows are L1-normalised first
    torch.testing.assert_close(
        windowed_attention_distance(sigmoid_rows, 2), windowed_attention_distance(P, 2), equal_nan=True
    )


def test_future_attention_influence_by_hand() -> None:
    from attnlab.lens.metrics import future_attention_influence

    # a causal uniform pattern over 4 tokens: key 0 gets 1/2, 1/3, 1/4 from queries 1..3
    P = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    P = (P / P.sum(-1, keepdim=True))[None, None]
    fai = future_attention_influence(P)[0, 0]
    expected = torch.tensor([(1 / 2 + 1 / 3 + 1 / 4) / 3, (1 / 2 + 1 / 3 + 1 / 4 - 1 / 2) / 2, 1 / 4], dtype=P.dtype)
    torch.testing.assert_close(fai[:3], expected)
    assert torch.isnan(fai[3])  # no query after the last key
