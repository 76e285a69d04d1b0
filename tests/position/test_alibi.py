"""ALiBi: per-head slopes and a linear distance penalty on the scores."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference
from attnlab.position.alibi import ALiBi, alibi_slopes


def geometric(n: int) -> list[float]:
    """The paper's slopes for n a power of two: start 2^(−8/n), ratio 2^(−8/n)."""
    start = 2 ** (-8 / n)
    return [start * start**i for i in range(n)]


def test_eight_heads_have_slopes_one_half_to_one_over_256() -> None:
    assert alibi_slopes(8).tolist() == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]


def test_twelve_heads_take_eight_slopes_then_every_other_of_sixteen() -> None:
    expected = geometric(8) + geometric(16)[0::2][:4]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected, dtype=torch.float64))


def test_power_of_two_head_counts_use_the_geometric_sequence() -> None:
    for n in (1, 2, 4, 16):
        torch.testing.assert_close(alibi_slopes(n), torch.tensor(geometric(n), dtype=torch.float64))


def scores_with_alibi(causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    alibi = ALiBi(site=AttentionSite(d_model=16, n_heads=2, causal=causal))
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64) for _ in range(3))
    softmax = NORMALISERS.get("softmax")()
    res = attend_reference(q, k, v, normaliser=softmax, score_mod=alibi.score_mod(), causal=causal)
    return res.scores, q @ k.transpose(-1, -2) / 8**0.5


def test_causal_alibi_subtracts_slope_times_distance() -> None:
    scores, plain = scores_with_alibi(causal=True)
    for h, slope in enumerate([2**-4, 2**-8]):  # 2 heads: 2^(−8/2), 2^(−16/2)
        for i in range(5):
            for j in range(i + 1):
                expected = plain[0, h, i, j].item() - slope * (i - j)
                assert scores[0, h, i, j].item() == pytest.approx(expected, abs=1e-12)


def test_non_causal_alibi_uses_the_absolute_distance() -> None:
    scores, plain = scores_with_alibi(causal=False)
    distance = (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs()
    torch.testing.assert_close(scores[0, 0], plain[0, 0] - 2**-4 * distance)
