"""ReLU and squared-ReLU attention: w = ReLU(s)^p / L^α, never negative, rows free to sum to anything."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.func import functional_call

from attnlab.attention import NORMALISERS, AttentionConfig, AttentionSite, attend_reference, build_attention
from attnlab.errors import ConfigError
from tolerances import lm_atol

SITE = AttentionSite(d_model=8, n_heads=2, seq_len=12)  # d_head = 4


def make_normaliser(name: str, args: dict[str, Any] | None = None, site: AttentionSite = SITE) -> torch.nn.Module:
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params.model_validate(args or {}), site)


def known_relu_weights(q: list, k: list, t_q: int, t_k: int, causal: bool, power: int, alpha: float, length: str):
    """Plain-Python ReLU(q·k/√d)^power / L^alpha; L = keys visible to the row, or the site's seq_len."""
    d = len(q[0])
    rows = []
    for i in range(t_q):
        seen = [not causal or j <= i + t_k - t_q for j in range(t_k)]
        big_l = sum(seen) if length == "visible" else SITE.seq_len
        row = []
        for j in range(t_k):
            s = sum(a * b for a, b in zip(q[i], k[j], strict=True)) / math.sqrt(d)
            row.append(max(s, 0.0) ** power / big_l**alpha if seen[j] else 0.0)
        rows.append(row)
    return rows


CASES = [
    ("relu", {}),
    ("relu2", {}),
    ("relu", {"length": "seq_len"}),
    ("relu", {"alpha": 0.5}),
    ("relu2", {"length": "seq_len", "alpha": 1.0}),
]
SHAPES = [(6, 6, True), (6, 6, False), (2, 6, True)]  # (Tq, Tk, causal); Tq < Tk is decoding


@pytest.mark.parametrize(("t_q", "t_k", "causal"), SHAPES)
@pytest.mark.parametrize(("name", "args"), CASES, ids=str)
def test_reference_matches_relu_over_length_to_the_alpha(
    name: str, args: dict[str, Any], t_q: int, t_k: int, causal: bool
) -> None:
    q, k = 2 * torch.randn(2, 2, t_q, 4, dtype=torch.float64), 2 * torch.randn(2, 2, t_k, 4, dtype=torch.float64)
    v = torch.randn(2, 2, t_k, 3, dtype=torch.float64)
    res = attend_reference(q, k, v, normaliser=make_normaliser(name, args), causal=causal)
    power, alpha = (1, 1.0) if name == "relu" else (2, 2.0)
    alpha, length = args.get("alpha", alpha), args.get("length", "visible")
    expected = torch.tensor(
        [
            [
                known_relu_weights(q[b, h].tolist(), k[b, h].tolist(), t_q, t_k, causal, power, alpha, length)
                for h in range(2)
            ]
            for b in range(2)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(res.weights, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(res.out, expected @ v, atol=1e-12, rtol=1e-10)


def test_relu2_with_unit_scale_is_the_gau_kernel_relu_of_qk_over_n_squared() -> None:
    """Hua et al.'s gated attention unit: relu(q·k / n)², no 1/√d, n the sequence length (full attention)."""
    q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    res = attend_reference(q, k, v, normaliser=make_normaliser("relu2"), causal=False, scale=1.0)
    torch.testing.assert_close(res.weights, (q @ k.transpose(-1, -2) / 7).relu().square(), atol=1e-14, rtol=0)


@pytest.mark.parametrize("name", ["relu", "relu2"])
def test_weights_are_never_negative_and_rows_need_not_sum_to_one(name: str) -> None:
    q, k, v = (3 * torch.randn(2, 2, 8, 4, dtype=torch.float64) for _ in range(3))
    weights = attend_reference(q, k, v, normaliser=make_normaliser(name), causal=True).weights
    assert (weights >= 0).all()
    assert (weights == 0).any(), "negative scores should give exact zeros"
    assert (weights.sum(-1) - 1).abs().max() > 0.1, "rows should not be normalised to 1"


@pytest.mark.parametrize("name", ["relu", "relu2"])
def test_future_keys_get_exactly_zero_weight_even_with_positive_scores(name: str) -> None:
    q = torch.ones(1, 1, 5, 4)  # every score positive, so only the mask can give a zero
    weights = attend_reference(q, q.clone(), q.clone(), normaliser=make_normaliser(name), causal=True).weights
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.equal(weights[0, 0][future], torch.zeros(int(future.sum())))
    assert (weights[0, 0][~future] > 0).all()


@pytest.mark.parametrize("name", ["relu", "relu2"])
def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm, name: str) -> None:
    model = make_lm(normaliser=name)
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 5] = (tokens[:, 5] + 1) % 31
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("length", ["visible", "seq_len"])
@pytest.mark.parametrize("name", ["relu", "relu2"])
@torch.no_grad()
def test_cached_decoding_one_token_at_a_time_matches_the_full_forward(make_lm, name: str, length: str) -> None:
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py).
    model = make_lm(normaliser=name, normaliser_args={"length": length}).double()
    tokens = torch.randint(0, 31, (2, 8))
    cache = model.new_cache()
    steps = torch.cat([model(tokens[:, t : t + 1], cache) for t in range(8)], dim=1)
    torch.testing.assert_close(steps, model(tokens), atol=lm_atol(model(tokens)), rtol=0)


@pytest.mark.parametrize("name", ["relu", "relu2"])
def test_attention_module_gradients_match_finite_differences(name: str) -> None:
    module = build_attention(AttentionConfig(normaliser=name), AttentionSite(d_model=8, n_heads=2, seq_len=8)).double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


def test_seq_len_length_without_a_training_length_is_a_config_error() -> None:
    cfg = AttentionConfig(normaliser="relu", normaliser_args={"length": "seq_len"})
    with pytest.raises(ConfigError, match=r"normaliser_args\.length='seq_len'.*allowed: visible"):
        cfg.check_site(AttentionSite(d_model=8, n_heads=2))
