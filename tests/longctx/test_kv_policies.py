"""KV-cache policies (attnlab.longctx.kv): known answers on tiny models, hand-built states and hand-built attention."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention.build import KVCache
from attnlab.errors import ConfigError
from attnlab.lens.capture import patterns, run_with_cache
from attnlab.longctx.kv import POLICIES, HeadState, PolicyKVCache, PolicyLayerCache, decode, make_policy, prefill
from attnlab.longctx.kv.cache import visible
from attnlab.longctx.kv.pyramidkv import pyramid
from attnlab.position.base import NoPE

N, PROMPT = 24, 16
GQA = {"heads": "gqa", "heads_args": {"n_kv_heads": 2}}
SMALL = {"window": 4, "kernel": 3}  # SnapKV-family windows that fit a 16-token prompt


def params(name: str) -> dict:
    return (
        {**SMALL, **({"n_recent": 4} if name == "taskkv" else {})} if name in ("snapkv", "pyramidkv", "taskkv") else {}
    )


def plain_logits(model, tokens, chunk: int) -> torch.Tensor:
    """The full cache: attnlab's own ``KVCache``, fed the prompt in one call and the rest ``chunk`` at a time."""
    cache = KVCache(len(model.blocks))
    out = [model(tokens[:, :PROMPT], cache)[:, -1:]]
    out += [model(tokens[:, s : s + chunk], cache) for s in range(PROMPT, tokens.shape[1], chunk)]
    return torch.cat(out, dim=1)


def policy_logits(model, tokens, cache, chunk: int) -> torch.Tensor:
    out = [prefill(model, tokens[:, :PROMPT], cache)[:, None]]
    out += list(decode(model, tokens[:, PROMPT:], cache, chunk))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("positions", ["cache", "original"])
@pytest.mark.parametrize("name", list(POLICIES))
@torch.no_grad()
def test_a_budget_of_at_least_the_length_is_the_full_cache_exactly(make_lm, name, positions, chunk) -> None:
    """At prefill and while decoding, for every policy: the same logits as attnlab's plain KV cache, bit for bit."""
    if positions not in POLICIES[name].positions:
        pytest.skip(f"{name} supports positions {POLICIES[name].positions}")
    model = make_lm(**GQA)
    tokens = torch.randint(0, 31, (2, N))
    cache = PolicyKVCache(model, make_policy(name, N, **params(name)), positions=positions)
    assert torch.equal(policy_logits(model, tokens, cache, chunk), plain_logits(model, tokens, chunk).float())
    assert cache.kept().eq(N).all()


@torch.no_grad()
def test_recycled_attention_with_stride_1_is_full_attention(make_lm) -> None:
    model = make_lm(**GQA)
    tokens = torch.randint(0, 31, (1, N))
    cache = PolicyKVCache(model, make_policy("recycled", 3, stride=1), positions="original")
    assert torch.equal(policy_logits(model, tokens, cache, 1), plain_logits(model, tokens, 1).float())


@torch.no_grad()
def test_recycled_steps_attend_to_the_top_k_of_the_last_full_step_and_the_new_tokens() -> None:
    layer = PolicyLayerCache(make_policy("recycled", 2, stride=3), positions="original")
    k = torch.zeros(1, 1, 5, 2)
    k[0, 0, 1, 0], k[0, 0, 3, 0] = 4.0, 8.0  # the last query (e_0) attends most to token 3, then token 1
    q = torch.zeros(1, 1, 5, 2)
    q[0, 0, -1, 0] = 1.0
    layer.extend_rotated(NoPE(), q, k, torch.arange(10.0).reshape(1, 1, 5, 2))  # call 0: a full step
    for call in (1, 2):
        _, kk, vv = layer.extend_rotated(
            NoPE(), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2)
        )
        assert kk.shape[2] == 2 + call and vv[0, 0, :2, 0].tolist() == [2.0, 6.0]  # values of tokens 1 and 3
    _, kk, _ = layer.extend_rotated(NoPE(), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert kk.shape[2] == 8  # call 3: full again


@pytest.mark.parametrize("name", ["snapkv", "h2o", "tova", "recycled"])
@torch.no_grad()
def test_fork_of_a_tracked_prompt_equals_the_policy_run_from_the_start(make_lm, name) -> None:
    model = make_lm(**GQA)
    tokens = torch.randint(0, 31, (1, N))
    policy = make_policy(name, 6, **params(name))
    positions = "original"
    direct = PolicyKVCache(model, policy, positions=positions)
    tracked = PolicyKVCache(model, None, positions=positions, track={"acc", "window", "last", "head_out"}, **SMALL)
    prefill(model, tokens[:, :PROMPT], tracked)
    forked = tracked.fork(policy)
    forked.compress()
    expected = policy_logits(model, tokens, direct, 2)
    got = torch.cat(list(decode(model, tokens[:, PROMPT:], forked, 2)), dim=1)
    assert torch.equal(got, expected[:, 1:])
    assert all(torch.equal(a.token_index, b.token_index) for a, b in zip(forked.layers, direct.layers, strict=True))


@torch.no_grad()
def test_the_cache_measures_the_statistics_of_the_layers_own_patterns(make_lm) -> None:
    model = make_lm(**GQA).double()
    tokens = torch.randint(0, 31, (1, PROMPT))
    cache = PolicyKVCache(model, None, positions="original", track={"acc", "window", "last", "head_out"}, **SMALL)
    prefill(model, tokens, cache)
    _, run = run_with_cache(model, tokens, lambda name: name.endswith(("hook_pattern", "hook_z")))
    for layer, P in patterns(run).items():  # [1, 4, T, T]: query heads 0, 1 share KV head 0; 2, 3 KV head 1
        grouped = P.reshape(1, 2, 2, PROMPT, PROMPT)
        window = F.avg_pool1d(grouped[..., -4:, :].sum(3).reshape(4, 1, PROMPT), 3, 1, 1).reshape(1, 2, 2, -1).mean(2)
        z = run[f"blocks.{layer}.attn.hook_z"].reshape(1, 2, 2, PROMPT, -1)[..., -4:, :].mean((2, 3))
        got = cache.layers[layer]
        torch.testing.assert_close(got.score, grouped.sum((2, 3)), rtol=0, atol=1e-12)
        torch.testing.assert_close(got.store["window"], window, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.store["last"], grouped[..., -1, :].mean(2), rtol=0, atol=1e-12)
        torch.testing.assert_close(got.head_out, z, rtol=0, atol=1e-12)


def state_of(scores: dict[str, list[list[float]]], size: int, heads: int = 1) -> HeadState:
    stats = {name: torch.tensor([rows], dtype=torch.float64) for name, rows in scores.items()}
    return HeadState(torch.ones(1, heads, size, dtype=torch.bool), torch.arange(size).expand(1, heads, size), stats)


def kept(keep: torch.Tensor) -> list[list[int]]:
    return [row.nonzero()[:, 0].tolist() for row in keep[0]]


def test_tova_keeps_what_the_newest_query_attends_to_averaged_over_every_head() -> None:
    state = state_of({"last": [[0.1, 0.5, 0.0, 0.2, 0.2], [0.3, 0.0, 0.4, 0.1, 0.2]]}, 5, heads=2)
    keep = make_policy("tova", 2).select(0, state, torch.tensor([2, 2]))  # means 0.2, 0.25, 0.2, 0.15, 0.2
    assert kept(keep) == [[0, 1], [0, 1]]  # the same tokens in every head; ties go to the older token


def test_snapkv_keeps_its_window_and_the_heaviest_pooled_tokens_per_head() -> None:
    state = state_of({"window": [[0.9, 0.1, 0.0, 0.8, 0.0, 0.0], [0.0, 0.2, 0.7, 0.0, 0.1, 0.0]]}, 6, heads=2)
    keep = make_policy("snapkv", 4, window=2).select(0, state, torch.tensor([4, 4]))
    assert kept(keep) == [[0, 3, 4, 5], [1, 2, 4, 5]]


def test_h2o_keeps_its_recent_window_and_the_heavy_hitters() -> None:
    state = state_of({"acc": [[5.0, 1.0, 3.0, 0.0, 9.0, 0.0, 0.0]]}, 7)
    assert kept(make_policy("h2o", 4, n_recent=1).select(0, state, torch.tensor([4]))) == [[0, 2, 4, 6]]


def test_tova_end_to_end_drops_the_token_a_hand_built_query_ignores() -> None:
    layer = PolicyLayerCache(make_policy("tova", 3), positions="original")
    k = torch.eye(4)[None, None] * 5.0  # token j's key is 5·e_j
    q = torch.zeros(1, 1, 4, 4)
    q[0, 0, -1] = torch.tensor([1.0, 1.0, -1.0, 1.0])  # the newest query looks away from token 2
    layer.extend_rotated(NoPE(), q, k, torch.zeros(1, 1, 4, 4))
    layer.compress(0, torch.tensor([3]))
    assert layer.token_index[0, 0].tolist() == [0, 1, 3]


def test_streaming_and_recent_keep_sinks_and_windows_with_budgets_per_head() -> None:
    state = state_of({}, 10, heads=2)
    assert kept(make_policy("streaming", 5, n_sink=2).select(0, state, torch.tensor([5, 4]))) == [
        [0, 1, 7, 8, 9],
        [0, 1, 8, 9],
    ]
    assert kept(make_policy("recent", 5).select(0, state, torch.tensor([3, 5]))) == [[7, 8, 9], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize(("layers", "mean", "length"), [(30, 512, 2048), (30, 1500, 2048), (4, 7, 100), (5, 3, 3)])
def test_pyramid_budgets_sum_to_the_total_and_shrink_with_depth(layers, mean, length) -> None:
    b = pyramid(layers, mean, length, beta=20)
    assert sum(b) == layers * min(mean, length)
    assert all(x >= y for x, y in itertools.pairwise(b)) and max(b) <= length and min(b) >= 0


@torch.no_grad()
def test_pyramidkv_layers_keep_their_budgets(make_lm) -> None:
    model = make_lm(n_layers=4, **GQA)
    cache = PolicyKVCache(model, make_policy("pyramidkv", 8, beta=4, **SMALL), positions="original")
    prefill(model, torch.randint(0, 31, (1, PROMPT)), cache)
    counts = cache.kept()[:, 0]  # [layers, Hkv]
    assert counts[:, 0].tolist() == pyramid(4, 8, PROMPT, 4) and counts.sum() == 4 * 2 * 8
    assert (counts[:, 0] == counts[:, 1]).all()


@torch.no_grad()
def test_taskkv_gives_the_farthest_heads_full_caches_and_the_rest_sinks_recent_middle(make_lm) -> None:
    model = make_lm(n_layers=2, heads="gqa", heads_args={"n_kv_heads": 4})
    tokens = torch.randint(0, 31, (1, PROMPT))
    policy = make_policy("taskkv", 8, window=4, kernel=3, n_sink=2, n_recent=2)  # layer budget 32 = 16 + 3 · 5
    cache = PolicyKVCache(model, policy, positions="original")
    prefill(model, tokens, cache)
    for layer in cache.layers:
        counts = layer.kept()[0]
        z = layer.head_out[0]
        far = int((z - z.mean(0)).norm(dim=-1).argmax())
        assert counts[far] == PROMPT and sorted(counts.tolist()) == [5, 5, 5, 16]
        for h in range(4):
            idx = layer.token_index[0, h][layer.valid[0, h]].tolist()
            assert h == far or (idx[:2] == [0, 1] and idx[-2:] == [14, 15])
    assert torch.isfinite(torch.cat(list(decode(model, torch.randint(0, 31, (1, 4)), cache, 2)), 1)).all()


@pytest.mark.parametrize("scale", [None, 0.3])
def test_a_ragged_cache_attends_to_each_heads_own_tokens(scale) -> None:
    """The −inf channel: SDPA over right-aligned heads of 3, 5 and 2 tokens equals each head's attention alone."""
    q, k, v = torch.randn(1, 6, 2, 8, dtype=torch.float64), torch.randn(1, 3, 6, 8, dtype=torch.float64), None
    v = torch.randn(1, 3, 6, 8, dtype=torch.float64)
    mask = torch.zeros(1, 3, 6, dtype=torch.bool)
    mask[0, 0, [1, 3, 5]], mask[0, 1, [0, 2, 3, 4, 5]], mask[0, 2, [4, 5]] = True, True, True
    qq, kk, vv = visible(q, k, v, mask, scale)
    out = F.scaled_dot_product_attention(
        qq, kk, vv, attn_mask=torch.ones(2, 5, dtype=torch.bool).tril(3), scale=scale, enable_gqa=True
    )
    for h in range(6):
        idx = mask[0, h // 2].nonzero()[:, 0]
        ref = F.scaled_dot_product_attention(
            q[:, h : h + 1],
            k[:, h // 2 : h // 2 + 1, idx],
            v[:, h // 2 : h // 2 + 1, idx],
            attn_mask=torch.ones(2, len(idx), dtype=torch.bool).tril(len(idx) - 2),
            scale=scale,
        )
        torch.testing.assert_close(out[:, h : h + 1], ref, rtol=0, atol=1e-12)


def test_bad_policies_and_caches_are_one_line_config_errors(make_lm) -> None:
    with pytest.raises(ConfigError, match=r"^policy='lru': unknown KV-cache policy \(allowed: streaming, h2o"):
        make_policy("lru", 4)
    with pytest.raises(ConfigError, match=r"^StreamingPolicy.n_sink=4: must be below the budget 4$"):
        make_policy("streaming", 4)
    with pytest.raises(ConfigError, match=r"^positions='cache': not supported by recycled"):
        PolicyKVCache(make_lm(), make_policy("recycled", 4), positions="cache")
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn='sigmoid / mha / rope': this policy reads softmax"):
        PolicyKVCache(make_lm(normaliser="sigmoid"), make_policy("h2o", 4))
    with pytest.raises(ConfigError, match=r"^policy='h2o': needs \['acc'\]"):
        PolicyKVCache(make_lm(), None).fork(make_policy("h2o", 4))
