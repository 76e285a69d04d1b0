"""Budgeted KV caches (StreamingLLM, H2O, recent window): known answers on tiny models and hand-built scores."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.experiments.kv_eviction import EvictionConfig, decode_with_eviction, eviction_table, policy_of
from attnlab.lens.capture import patterns, run_with_cache
from attnlab.longctx.kv import HeadState, PolicyLayerCache
from attnlab.position.base import NoPE

N = 20
GQA = {"heads": "gqa", "heads_args": {"n_kv_heads": 2}}


def token_sets(cache) -> list[list[int]]:
    """The kept token indices of every (layer, head), batch element 0."""
    return [idx[0, h].tolist() for layer in cache.layers for idx in [layer.token_index] for h in range(idx.shape[1])]


@pytest.mark.parametrize("positions", ["cache", "original"])
@pytest.mark.parametrize("policy", ["streaming", "h2o", "recent"])
@pytest.mark.parametrize("chunk", [1, 3])
@torch.no_grad()
def test_a_budget_of_at_least_the_length_reproduces_the_full_pass(make_lm, policy, positions, chunk) -> None:
    model = make_lm(**GQA).double()
    tokens = torch.randint(0, 31, (2, N))
    cfg = EvictionConfig(policy=policy, budget=N, positions=positions)
    res = decode_with_eviction(model, tokens, cfg, chunk=chunk, keep_logits=True)
    torch.testing.assert_close(res.logits, model(tokens).float(), atol=1e-6, rtol=1e-6)
    assert token_sets(res.cache) == [list(range(N))] * (2 * 2)


@torch.no_grad()
def test_the_nll_is_the_cross_entropy_of_the_full_pass(make_lm) -> None:
    model = make_lm().double()
    tokens = torch.randint(0, 31, (1, N))
    res = decode_with_eviction(model, tokens, EvictionConfig(budget=None), chunk=4)
    logp = model(tokens).log_softmax(-1)
    expected = -logp[0, :-1].gather(-1, tokens[0, 1:, None])[:, 0]
    torch.testing.assert_close(res.nll[0].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize(
    ("policy", "expected"),
    [("streaming", [0, 1, 2, 3, 16, 17, 18, 19]), ("recent", list(range(12, 20)))],
)
@torch.no_grad()
def test_streaming_and_recent_keep_exactly_the_right_tokens(make_lm, policy, expected, chunk) -> None:
    model = make_lm(**GQA)
    res = decode_with_eviction(model, torch.randint(0, 31, (1, N)), EvictionConfig(policy=policy, budget=8), chunk)
    assert token_sets(res.cache) == [expected] * 4
    assert res.cache.length == 8  # positions within the cache


def test_original_positions_keep_counting_tokens(make_lm) -> None:
    model = make_lm()
    cfg = EvictionConfig(policy="streaming", budget=8, positions="original")
    assert decode_with_eviction(model, torch.randint(0, 31, (1, N)), cfg).cache.length == N


@torch.no_grad()
def test_positions_within_the_cache_equal_a_fresh_pass_over_the_kept_tokens(make_lm) -> None:
    """StreamingLLM: after eviction the next token sees the kept tokens as one contiguous sequence (re-rotated keys).

    One layer, so that a cached key / value depends on its token alone (in deeper layers it also depends on the context
    the token had when it was decoded, which a fresh pass over the kept tokens does not reproduce).
    """
    model = make_lm(n_layers=1, **GQA).double()
    tokens = torch.randint(0, 31, (1, N + 1))
    res = decode_with_eviction(model, tokens, EvictionConfig(policy="streaming", budget=8), chunk=1, keep_logits=True)
    kept = [0, 1, 2, 3, 16, 17, 18, 19]  # the cache when token N arrives: 4 sinks + the 4 most recent
    fresh = model(tokens[:, [*kept, N]])[:, -1]
    torch.testing.assert_close(res.logits[:, -1], fresh.float(), atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_original_positions_differ_from_cache_positions_after_eviction(make_lm) -> None:
    model = make_lm().double()
    tokens = torch.randint(0, 31, (1, N))
    logits = {
        pos: decode_with_eviction(model, tokens, EvictionConfig(budget=8, positions=pos), keep_logits=True).logits
        for pos in ("cache", "original")
    }
    torch.testing.assert_close(logits["cache"][:, :9], logits["original"][:, :9])  # nothing evicted yet
    assert (logits["cache"][:, 10:] - logits["original"][:, 10:]).abs().max() > 1e-3


def test_h2o_scores_accumulate_a_hand_built_pattern_per_kv_head() -> None:
    cache = PolicyLayerCache(policy_of(EvictionConfig(policy="h2o", budget=3, n_recent=1)), positions="original")
    b, h_q, h_kv, d = 1, 4, 2, 2
    k, v = torch.zeros(b, h_kv, 5, d), torch.zeros(b, h_kv, 5, d)
    cache.extend_rotated(NoPE(), torch.zeros(b, h_q, 5, d), k, v)
    cache.store["acc"].zero_()  # drop the uniform weights of the zero queries: only the hand-built pattern counts
    w = torch.zeros(b, h_q, 5, 5)
    w[0, 0, :, 1] = 1.0  # query head 0 (KV group 0) puts everything on token 1
    w[0, 1, 4, 2] = 0.5  # query head 1 (KV group 0)
    w[0, 2, :, 3] = 0.25  # query head 2 (KV group 1)
    w[0, 3, 2, 0] = 2.0  # query head 3 (KV group 1)
    cache.observe(w)
    cache.observe(w)  # a second step adds again
    expected = 2 * torch.tensor([[[0.0, 5.0, 0.5, 0.0, 0.0], [2.0, 0.0, 0.0, 1.25, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(cache.score, expected)
    cache.compress(0, torch.tensor([3, 3]))  # keep the last token plus the two heaviest older ones, per KV head
    assert cache.token_index[0].tolist() == [[1, 2, 4], [0, 3, 4]]
    torch.testing.assert_close(cache.score, expected.gather(2, torch.tensor([[[1, 2, 4], [0, 3, 4]]])))


@pytest.mark.parametrize("chunk", [1, 4])
@torch.no_grad()
def test_h2o_scores_are_the_column_sums_of_the_full_pass_patterns(make_lm, chunk) -> None:
    model = make_lm(**GQA)
    tokens = torch.randint(0, 31, (1, N))
    res = decode_with_eviction(model, tokens, EvictionConfig(policy="h2o", budget=N), chunk)  # never evicts
    _, cache = run_with_cache(model, tokens, lambda name: name.endswith("hook_pattern"))
    for layer, P in patterns(cache).items():  # [1, 4, N, N]; query heads 0, 1 share KV head 0, heads 2, 3 KV head 1
        expected = P.sum(2).reshape(1, 2, 2, N).sum(2).double()
        torch.testing.assert_close(res.cache[layer].score, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_h2o_keeps_the_recent_window_and_the_heaviest_older_tokens(make_lm) -> None:
    model = make_lm(**GQA)
    res = decode_with_eviction(model, torch.randint(0, 31, (1, N)), EvictionConfig(policy="h2o", budget=8), chunk=1)
    for layer in res.cache.layers:
        for h in range(2):
            kept = layer.token_index[0, h].tolist()
            assert kept[-4:] == [16, 17, 18, 19] and len(kept) == 8 == len(set(kept))
            assert kept[:4] == sorted(kept[:4]) and max(kept[:4]) < 16


def kept_slots(cfg: EvictionConfig, size: int, scores: list[float] | None = None) -> list[int]:
    """The slots ``cfg``'s policy keeps of a one-head cache of ``size`` tokens (``scores``: H2O's sums)."""
    valid = torch.ones(1, 1, size, dtype=torch.bool)
    stats = {"acc": torch.tensor([[scores]], dtype=torch.float64)} if scores is not None else {}
    state = HeadState(valid, torch.arange(size).expand(1, 1, size), stats)
    keep = policy_of(cfg).select(0, state, torch.tensor([min(cfg.budget, size)]))
    return keep[0, 0].nonzero()[:, 0].tolist()


def test_the_policies_keep_known_slots() -> None:
    assert kept_slots(EvictionConfig(policy="streaming", budget=6, n_sink=2), 10) == [0, 1, 6, 7, 8, 9]
    assert kept_slots(EvictionConfig(policy="recent", budget=6), 10) == [4, 5, 6, 7, 8, 9]
    assert kept_slots(EvictionConfig(policy="recent", budget=6), 5) == [0, 1, 2, 3, 4]
    scores = [5.0, 1.0, 3.0, 3.0, 0.0, 9.0, 0.0]
    assert kept_slots(EvictionConfig(policy="h2o", budget=4, n_recent=2), 7, scores) == [0, 2, 5, 6]  # tie 2/3: older
    assert kept_slots(EvictionConfig(policy="h2o", budget=3, n_recent=0), 7, scores) == [0, 2, 5]


def test_bad_settings_are_one_line_config_errors(make_lm) -> None:
    with pytest.raises(ConfigError, match=r"^EvictionConfig.n_sink=4: must be below the budget 4$"):
        EvictionConfig(policy="streaming", budget=4)
    with pytest.raises(ConfigError, match=r"^EvictionConfig.policy=.lru.: not an allowed value"):
        EvictionConfig(policy="lru", budget=4)
    with pytest.raises(ConfigError, match=r"^chunk=0"):
        decode_with_eviction(make_lm(), torch.randint(0, 31, (1, 8)), EvictionConfig(budget=6), chunk=0)
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn='mla'"):
        decode_with_eviction(
            make_lm(heads="mla", heads_args={"kv_rank": 8}), torch.randint(0, 31, (1, 8)), EvictionConfig(budget=6)
        )


def test_the_table_has_the_full_cache_and_every_policy_and_budget(make_lm) -> None:
    rows = eviction_table(make_lm(), torch.randint(0, 31, (1, N)), budgets=[8, 12], chunk=4)
    assert [(r.policy, r.budget) for r in rows] == [("full", None)] + [
        (p, b) for b in (8, 12) for p in ("streaming", "h2o", "recent")
    ]
    assert all(r.perplexity > 1 for r in rows)
