"""Every position entry added with the context-extension set keeps the promises its registry entry makes:
causal models stay causal, KV-cache decoding equals the full pass where claimed, gradients are right, and
relative encodings give scores that a common shift of positions leaves unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.func import functional_call

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.attention.core import index_grids
from attnlab.position import POSITIONS
from tolerances import lm_atol

# Arguments that make each entry do something visible in a tiny model (max_seq_len 16, 8 tokens).
ENTRIES: dict[str, dict[str, Any]] = {
    "rope_pi": {},
    "rope_ntk": {},
    "rope_ntk_dynamic": {"train_length": 4},  # 8 tokens > L: the base changes with the length
    "yarn": {},
    "rope_abf": {"entropy_scaling": True, "entropy_length": 4, "unscaled_layers": 1},
    "fope": {},
    "t5": {},
    "tpe2d": {"rows": 2, "cols": 3, "start": 1},
}
CACHED = [name for name in ENTRIES if POSITIONS.capabilities(name).kv_cache]
RELATIVE_ROTATIONS: dict[str, dict[str, Any]] = {
    "rope_pi": {},
    "rope_ntk": {},
    "yarn": {},
    "rope_abf": {},
    "fope": {"sigma": 0.0},
}


def edit_token(tokens: torch.Tensor, position: int) -> torch.Tensor:
    edited = tokens.clone()
    edited[:, position] = (tokens[:, position] + 1) % 31
    return edited


def test_the_set_is_registered_and_none_claims_cross_attention() -> None:
    for name in ENTRIES:
        assert name in POSITIONS, f"{name} is not registered"
        assert not POSITIONS.capabilities(name).cross, f"{name} is relative or positional; it cannot do cross"


def test_only_dynamic_ntk_declines_the_kv_cache() -> None:
    assert [name for name in ENTRIES if name not in CACHED] == ["rope_ntk_dynamic"]


@pytest.mark.parametrize("name", ENTRIES)
def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm, name: str) -> None:
    model = make_lm(position=name, position_args=ENTRIES[name])
    tokens = torch.randint(0, 31, (2, 8))
    before, after = model(tokens), model(edit_token(tokens, 5))
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("name", CACHED)
@torch.no_grad()
def test_decoding_one_token_at_a_time_equals_the_full_pass(make_lm, name: str) -> None:
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py).
    model = make_lm(position=name, position_args=ENTRIES[name]).double()
    tokens = torch.randint(0, 31, (2, 8))
    cache = model.new_cache()
    stepwise = torch.cat([model(tokens[:, i : i + 1], cache) for i in range(8)], dim=1)
    torch.testing.assert_close(stepwise, model(tokens), atol=lm_atol(model(tokens)), rtol=0)


@pytest.mark.parametrize("name", ENTRIES)
def test_attention_module_gradients_match_finite_differences(name: str) -> None:
    site = AttentionSite(d_model=8, n_heads=2, seq_len=8)  # d_head = 4
    args = {**ENTRIES[name], **({"train_length": 2} if name == "rope_ntk_dynamic" else {})}
    module = build_attention(AttentionConfig(position=name, position_args=args), site).double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


@pytest.mark.parametrize("name", RELATIVE_ROTATIONS)
def test_rotated_scores_are_invariant_to_a_common_shift(name: str) -> None:
    site = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d_head = 16
    entry = POSITIONS.entry(name)
    position = entry.factory(entry.params.model_validate(RELATIVE_ROTATIONS[name]), site).double()
    q, k = torch.randn(1, 2, 6, 16, dtype=torch.float64), torch.randn(1, 2, 6, 16, dtype=torch.float64)
    here = torch.arange(6)
    rq, rk = position.rotate(q, k, here)
    sq, sk = position.rotate(q, k, here + 37)
    torch.testing.assert_close(sq @ sk.transpose(-1, -2), rq @ rk.transpose(-1, -2), atol=1e-10, rtol=0)
    assert not torch.allclose(rq, q), "the rotation should not be the identity"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_t5_bias_depends_on_the_query_key_offset_only(causal: bool) -> None:
    entry = POSITIONS.entry("t5")
    t5 = entry.factory(entry.params(), AttentionSite(d_model=8, n_heads=2, causal=causal)).double()
    bias = t5.score_mod()
    b, h, q_idx, kv_idx = index_grids(1, 2, 40, 40, torch.device("cpu"))
    zeros = torch.zeros(1, 2, 40, 40, dtype=torch.float64)
    here, shifted = bias(zeros, b, h, q_idx, kv_idx), bias(zeros, b, h, q_idx + 300, kv_idx + 300)
    assert torch.equal(here, shifted)
    for offset in range(-39, 40):  # constant along every diagonal
        diagonal = torch.diagonal(here, offset=offset, dim1=-2, dim2=-1)
        assert torch.equal(diagonal, diagonal[..., :1].expand_as(diagonal)), f"offset {offset}"
