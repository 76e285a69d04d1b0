"""``next_token_nll``: the logit at t − 1 scores the token at t, over any span of targets; known answers."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.lens.losses import next_token_nll, text_loss

V = 7


def sure_logits(tokens: torch.Tensor, right_from: int) -> torch.Tensor:
    """Uniform logits everywhere (loss log V), except that from position ``right_from − 1`` on each position puts
    logit 100 on the next token (loss e^-100-ish: 0 in float32)."""
    logits = torch.zeros(tokens.shape[0], tokens.shape[1], V)
    for t in range(right_from, tokens.shape[1]):
        logits[torch.arange(tokens.shape[0]), t - 1, tokens[:, t]] = 100.0
    return logits


def test_each_target_is_scored_by_the_previous_position() -> None:
    tokens = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(0))
    nll = next_token_nll(sure_logits(tokens, right_from=3), tokens)
    assert nll.shape == (2, 5)  # targets 1 … 5
    # targets 1, 2 uniform (log V); targets 3 … 5 certain. float32: log-softmax of 7 logits is exact to a few ulp
    torch.testing.assert_close(nll[:, :2], torch.full((2, 2), math.log(V)), rtol=1e-6, atol=0)
    assert float(nll[:, 2:].max()) == 0.0  # exp(−100) vanishes next to 1 in float32


def test_spans_and_reductions_agree() -> None:
    tokens = torch.randint(0, V, (3, 8), generator=torch.Generator().manual_seed(1))
    logits = torch.randn(3, 8, V, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    every = next_token_nll(logits, tokens)  # float64: sums below agree to rounding of a dozen terms
    span = next_token_nll(logits, tokens, slice(3, 6))
    torch.testing.assert_close(span, every[:, 2:5], rtol=0, atol=0)
    assert float(next_token_nll(logits, tokens, slice(3, 6), "sum")) == pytest.approx(float(span.sum()), rel=1e-14)
    assert float(next_token_nll(logits, tokens, slice(3, 6), "mean")) == pytest.approx(float(span.mean()), rel=1e-14)


def test_logits_without_the_last_position_score_every_target() -> None:
    """A model that unembeds only positions 0 … T − 2 (the last one predicts nothing scored) gives the same NLL."""
    tokens = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(3))
    logits = torch.randn(1, 6, V, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(next_token_nll(logits[:, :-1], tokens), next_token_nll(logits, tokens), rtol=0, atol=0)


def test_half_precision_logits_are_scored_in_float32() -> None:
    tokens = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    logits = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(6)).bfloat16()
    nll = next_token_nll(logits, tokens)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, next_token_nll(logits.float(), tokens), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [slice(0, 3), slice(1, 6, 2), slice(4, 2)])
def test_a_span_that_is_not_a_run_of_targets_is_refused(bad: slice) -> None:
    tokens = torch.zeros(1, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="targets must be a contiguous slice"):
        next_token_nll(torch.zeros(1, 6, V), tokens, bad)


def test_a_single_token_has_no_target() -> None:
    """Decoding one token at a time, the first call scores nothing: an empty [B, 0] result, not an error."""
    assert next_token_nll(torch.zeros(2, 1, V), torch.zeros(2, 1, dtype=torch.long)).shape == (2, 0)


def test_logits_too_short_for_the_span_are_refused() -> None:
    tokens = torch.zeros(1, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="do not cover"):
        next_token_nll(torch.zeros(1, 3, V), tokens)


def test_text_loss_is_the_mean_over_every_prediction_in_chunks() -> None:
    tokens = torch.randint(0, V, (5, 6), generator=torch.Generator().manual_seed(7))
    logits = torch.randn(5, 6, V, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            start = next(i for i in range(5) if torch.equal(tokens[i], x[0]))
            return logits[start : start + x.shape[0]]

    # float64 over 25 terms, summed in chunks of 2 rows: rounding far below 1e-12
    expected = float(next_token_nll(logits, tokens).mean())
    assert text_loss(Fixed(), tokens, chunk=2) == pytest.approx(expected, rel=1e-12)
