"""What every normaliser's capability record promises about its weights, checked on real weights."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference, causal_mask
from conftest import score_normalisers
from tolerances import order_bound, unit_roundoff

SITE = AttentionSite(d_model=16, n_heads=2, seq_len=12)  # d_head = 8


def weights(name: str, q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    entry = NORMALISERS.entry(name)
    normaliser = entry.factory(entry.params(), SITE)
    v = torch.randn(*k.shape[:-1], 3)
    q, k, scale = normaliser.prepare(q, k, None)
    return attend_reference(q, k, v, normaliser=normaliser, causal=causal, scale=scale).weights


def random_qk(t_q: int = 7, t_k: int = 7, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    return spread * torch.randn(2, 2, t_q, 8), spread * torch.randn(2, 2, t_k, 8)


# Inputs tried when looking for a row that does not sum to 1: ordinary, sharp, and a zero query
# (every score equal, so every visible key looks the same).
CANDIDATE_INPUTS = {
    "random": lambda: random_qk(),
    "sharp": lambda: random_qk(spread=4.0),
    "zero_query": lambda: (torch.zeros(2, 2, 7, 8), torch.randn(2, 2, 7, 8)),
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", [n for n in score_normalisers() if NORMALISERS.capabilities(n).row_stochastic])
def test_row_stochastic_rows_sum_to_one(name: str, causal: bool) -> None:
    for label, make in CANDIDATE_INPUTS.items():
        w = weights(name, *make(), causal=causal)
        sums = w.sum(-1)
        # float32: the normaliser's row sum and this one (≤ 7 keys each: order_bound's 2·γ_7), one division (u);
        # lssa's l1 normalisation divides by (Σu + 1e-8): a row of N ≤ 7 keys has Σu ≥ N·softplus(−log 8·log N)
        # ≥ 0.12 (cosine scores ≥ −1, d = 8), so the ε takes at most 1e-8 / 0.12 < 1e-7 off the sum.
        atol = order_bound(torch.float32, n_terms=7) + unit_roundoff(torch.float32) + 1e-7
        torch.testing.assert_close(
            sums, torch.ones_like(sums), atol=atol, rtol=0, msg=lambda m, label=label: f"input {label}: {m}"
        )


@pytest.mark.parametrize("name", [n for n in score_normalisers() if not NORMALISERS.capabilities(n).row_stochastic])
def test_non_row_stochastic_rows_need_not_sum_to_one(name: str) -> None:
    worst = max((weights(name, *make()).sum(-1) - 1).abs().max().item() for make in CANDIDATE_INPUTS.values())
    assert worst > 1e-3, f"{name} is not declared row_stochastic, yet every row summed to 1"


@pytest.mark.parametrize("name", [n for n in score_normalisers() if NORMALISERS.capabilities(n).signed])
def test_signed_normalisers_give_negative_weights_on_random_input(name: str) -> None:
    assert (weights(name, *random_qk()) < 0).any()


@pytest.mark.parametrize("name", [n for n in score_normalisers() if not NORMALISERS.capabilities(n).signed])
def test_unsigned_normalisers_give_no_negative_weight(name: str) -> None:
    for make in CANDIDATE_INPUTS.values():
        assert (weights(name, *make()) >= 0).all()


@pytest.mark.parametrize(("t_q", "t_k"), [(7, 7), (3, 7), (1, 7)])
@pytest.mark.parametrize("name", score_normalisers())
def test_future_keys_get_exactly_zero_weight(name: str, t_q: int, t_k: int) -> None:
    hidden = ~causal_mask(t_q, t_k)
    for make in CANDIDATE_INPUTS.values():
        q, k = make()
        w = weights(name, q[:, :, :t_q], k[:, :, :t_k])
        assert torch.equal(w[..., hidden], torch.zeros_like(w[..., hidden]))
