"""Sliding-window attention: each query sees only its last ``window`` keys, on every path."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS, attend_reference
from attnlab.attention.build import sdpa
from attnlab.attention.normalisers.softmax import Softmax
from tolerances import RETNET_CONDITION, lm_atol


def test_windowed_softmax_equals_softmax_over_the_last_w_keys() -> None:
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64) for _ in range(3))
    w = 3
    out = attend_reference(q, k, v, normaliser=Softmax(), causal=True, window=w).out
    for i in range(9):
        lo = max(0, i - w + 1)
        s = (q[:, :, i : i + 1] @ k[:, :, lo : i + 1].transpose(-1, -2)) / 2.0
        expected = s.softmax(-1) @ v[:, :, lo : i + 1]
        torch.testing.assert_close(out[:, :, i : i + 1], expected)


def test_non_causal_window_is_symmetric() -> None:
    q, k, v = (torch.randn(1, 1, 7, 4, dtype=torch.float64) for _ in range(3))
    weights = attend_reference(q, k, v, normaliser=Softmax(), causal=False, window=2).weights
    visible = weights[0, 0] > 0
    expected = (torch.arange(7)[:, None] - torch.arange(7)[None, :]).abs() < 2
    assert torch.equal(visible, expected)


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_with_a_window_equals_the_reference(causal: bool) -> None:
    q, k, v = (torch.randn(2, 4, 11, 8) for _ in range(3))
    expected = attend_reference(q, k, v, normaliser=Softmax(), causal=causal, window=4).out
    torch.testing.assert_close(sdpa(q, k, v, causal=causal, scale=None, window=4), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normaliser", NORMALISERS.names())
def test_windowed_model_decodes_with_the_cache_as_in_the_full_pass(make_supported_lm, normaliser: str) -> None:
    # float64: the check is of the cache, which is exact, not of float32 rounding (which reached 2.5e-5 against
    # atol 1e-5 on an AMD EPYC). Both passes compute the same sums in other orders (a 10-row GEMM against 1-row
    # ones): lm_atol, order_bound over the model's chain; RetNet's signed rows amplify it (RETNET_CONDITION).
    model = make_supported_lm(normaliser=normaliser, window=3).double()
    tokens = torch.randint(0, 31, (2, 10))
    full = model(tokens)
    cache = model.new_cache()
    steps = torch.cat([model(tokens[:, t : t + 1], cache) for t in range(10)], dim=1)
    condition = RETNET_CONDITION if normaliser == "retnet" else 1.0
    torch.testing.assert_close(steps, full, atol=lm_atol(full, condition=condition), rtol=0)


def test_a_token_outside_the_window_does_not_change_the_output(make_supported_lm) -> None:
    model = make_supported_lm(n_layers=1, window=3)
    tokens = torch.randint(0, 31, (1, 8))
    changed = tokens.clone()
    changed[0, 0] = (tokens[0, 0] + 1) % 31
    # With one layer, position 7 sees positions 5, 6, 7 only.
    torch.testing.assert_close(model(tokens)[0, 7], model(changed)[0, 7])
