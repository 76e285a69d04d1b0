"""Known answers for the registry entries the per-mechanism files only checked by reduction or by invariants.

Every expected value is written out here from the mechanism's formula: explicit per-head, per-query loops over
the module's own weights, in float64, never a second call to the code under test. The other entries' known
answers live next to their mechanisms (tests/attention, tests/position).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionConfig, AttentionSite, KVCache, build_attention
from attnlab.attention.linear.feature_maps import FEATURE_MAPS, PerformerFeatureMap
from attnlab.hook_points import capture
from attnlab.position.fope import FoPE, FoPEParams

SITE = AttentionSite(d_model=16, n_heads=4)  # d_head = 4
B, T = 2, 6


def attention(heads: str, site: AttentionSite = SITE, position: str = "nope", **heads_args) -> torch.nn.Module:
    cfg = AttentionConfig(heads=heads, heads_args=heads_args, position=position)
    return build_attention(cfg, site).double()


def project(x: torch.Tensor, weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """x [B, T, D] @ Wᵀ, split into heads: [B, H, T, d]."""
    y = x @ weight.T
    return y.view(y.shape[0], y.shape[1], n_heads, -1).transpose(1, 2)


def merge(z: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] → [B, T, H·d], head h in columns h·d … h·d + d − 1."""
    return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], -1)


def causal_softmax_by_hand(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sink_logits: list | None = None,
    sink_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """z_i = Σ_{j ≤ i} exp(s_ij) v_j / Σ exp(·), s_ij = q_i·k_j/√d, one query at a time.

    q, k, v [B, H, T, d] with as many key heads as query heads. ``sink_logits[h]``: extra logits in the
    denominator of every query of head h (their values ``sink_values[h]`` [n, d], zero if None).
    """
    b_, h_, t_, d = q.shape
    out = torch.zeros_like(q)
    for b in range(b_):
        for h in range(h_):
            for i in range(t_):
                logits = [(q[b, h, i] @ k[b, h, j]).item() / math.sqrt(d) for j in range(i + 1)]
                sinks: list[float] = []
                if sink_logits is not None:  # a list per head, or a function of the query
                    sinks = sink_logits[h](q[b, h, i]) if callable(sink_logits[h]) else sink_logits[h]
                top = max(logits + list(sinks))
                exps = [math.exp(s - top) for s in logits]
                sink_exps = [math.exp(s - top) for s in sinks]
                z = sum(exps) + sum(sink_exps)
                row = sum((e / z) * v[b, h, j] for j, e in enumerate(exps))
                if sink_values is not None:
                    row = row + sum((e / z) * sink_values[h, n] for n, e in enumerate(sink_exps))
                out[b, h, i] = row
    return out


def mha_by_hand(x: torch.Tensor, wq, wk, wv, wo, n_heads: int = 4) -> torch.Tensor:
    """softmax(Q Kᵀ/√d) V per head, concatenated, times W_oᵀ: Vaswani et al.'s formula, causal, no positions."""
    z = causal_softmax_by_hand(project(x, wq, n_heads), project(x, wk, n_heads), project(x, wv, n_heads))
    return merge(z) @ wo.T


def randomise(module: torch.nn.Module, std: float = 0.5) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


# --- heads ----------------------------------------------------------------------------------------------------


def test_mha_output_is_softmax_q_k_transpose_over_root_d_times_v_times_w_o() -> None:
    mha = attention("mha")
    randomise(mha)
    x = torch.randn(B, T, 16, dtype=torch.float64)
    h = mha.heads
    expected = mha_by_hand(x, h.q_proj.weight, h.k_proj.weight, h.v_proj.weight, h.o_proj.weight)
    torch.testing.assert_close(mha(x), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("heads", "n_kv_heads"), [("gqa", 2), ("mqa", 1)])
def test_grouped_heads_are_mha_with_each_key_value_head_repeated_over_its_query_group(
    heads: str, n_kv_heads: int
) -> None:
    """Query head h reads key/value head h // (H / n_kv): MHA whose K, V rows for head h are those of h // rep."""
    grouped = attention(heads, **({"n_kv_heads": n_kv_heads} if heads == "gqa" else {}))
    randomise(grouped)
    h, rep = grouped.heads, 4 // n_kv_heads
    assert h.k_proj.weight.shape == (n_kv_heads * 4, 16)

    def repeated(weight: torch.Tensor) -> torch.Tensor:  # rows of head g = rows of key head g // rep
        return torch.cat([weight[(g // rep) * 4 : (g // rep + 1) * 4] for g in range(4)])

    x = torch.randn(B, T, 16, dtype=torch.float64)
    expected = mha_by_hand(x, h.q_proj.weight, repeated(h.k_proj.weight), repeated(h.v_proj.weight), h.o_proj.weight)
    torch.testing.assert_close(grouped(x), expected, atol=1e-12, rtol=1e-10)


def test_lpa_is_mha_with_each_projection_the_product_of_its_two_rank_r_factors() -> None:
    """q = (x A_q) B_q, …, out = (z A_o) B_o with rank 3 < D: MHA with W = B A (nn.Linear stores Wᵀ's transpose)."""
    lpa = attention("lpa", rank=3)
    randomise(lpa)
    h = lpa.heads
    x = torch.randn(B, T, 16, dtype=torch.float64)
    wq, wk, wv = (getattr(h, f"{n}_up").weight @ getattr(h, f"{n}_down").weight for n in "qkv")
    expected = mha_by_hand(x, wq, wk, wv, h.o_proj.weight @ h.o_down.weight)
    torch.testing.assert_close(lpa(x), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("gate", ["linear", "mlp"])
def test_gated_heads_multiply_each_head_by_the_sigmoid_of_its_input_slice_gate(gate: str) -> None:
    """o_h = σ(G_h(x_h)) · z_h with x_h the h-th d_head slice of the block input; G linear or Linear-ReLU-Linear."""
    gated = attention("gated", gate=gate)
    randomise(gated)
    h = gated.heads
    x = torch.randn(B, T, 16, dtype=torch.float64)
    z = causal_softmax_by_hand(*(project(x, getattr(h, f"{n}_proj").weight, 4) for n in "qkv"))
    gated_z = torch.empty_like(z)
    for b in range(B):
        for t in range(T):
            for head in range(4):
                x_h = x[b, t, head * 4 : head * 4 + 4]
                if gate == "linear":
                    logit = (x_h @ h.w1[head, :, 0] + h.b1[head, 0]).item()
                else:
                    hidden = (x_h @ h.w1[head] + h.b1[head]).clamp(min=0)
                    logit = (hidden @ h.w2[head, :, 0] + h.b2[head, 0]).item()
                gated_z[b, head, t] = z[b, head, t] / (1 + math.exp(-logit))
    torch.testing.assert_close(gated(x), merge(gated_z) @ h.o_proj.weight.T, atol=1e-12, rtol=1e-10)


def test_moh_weights_each_head_by_its_shared_or_renormalised_top_k_gate_and_the_balance_pair() -> None:
    """H = 6, h_s = 2 shared, top 2 of E = 4 routed, per token:
    g_s = 2·softmax(x W_s),  g_r = 2·p·m / Σ(p·m) with p = softmax(x W_r), m the top-2 indicator,
    [α1, α2] = 2·softmax(x W_h);  out = W_o concat(α1 g_s ⧺ α2 g_r ⊙ heads)."""
    site = AttentionSite(d_model=24, n_heads=6)
    moh = attention("moh", site=site, n_shared=2, top_k=2)
    randomise(moh, std=0.7)
    h = moh.heads
    x = torch.randn(B, T, 24, dtype=torch.float64)
    z = causal_softmax_by_hand(*(project(x, getattr(h, f"{n}_proj").weight, 6) for n in "qkv"))

    def softmax(logits: list[float]) -> list[float]:
        exps = [math.exp(s - max(logits)) for s in logits]
        return [e / sum(exps) for e in exps]

    gated = torch.empty_like(z)
    for b in range(B):
        for t in range(T):
            xt = x[b, t]
            shared = [2 * p for p in softmax((h.shared_router.weight @ xt).tolist())]
            probs = softmax((h.routed_router.weight @ xt).tolist())
            top = sorted(range(4), key=lambda e: -probs[e])[:2]
            routed = [2 * probs[e] / sum(probs[i] for i in top) if e in top else 0.0 for e in range(4)]
            alpha = [2 * a for a in softmax((h.balance_router.weight @ xt).tolist())]
            gates = [alpha[0] * g for g in shared] + [alpha[1] * g for g in routed]
            for head in range(6):
                gated[b, head, t] = gates[head] * z[b, head, t]
    torch.testing.assert_close(moh(x), merge(gated) @ h.o_proj.weight.T, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", ["kv", "logit"])
def test_sinks_add_learned_logits_to_every_softmax_denominator_and_their_values_to_the_output(kind: str) -> None:
    """kv: sink n scores q_i·σ_k,n/√d and adds σ_v,n; logit (gpt-oss): head h's logit ℓ_h,n with value 0."""
    sinks = attention("sinks", n_sinks=2, kind=kind)
    randomise(sinks)
    h = sinks.heads
    x = torch.randn(B, T, 16, dtype=torch.float64)
    q, k, v = (project(x, getattr(h, f"{n}_proj").weight, 4) for n in "qkv")
    if kind == "kv":
        logits = [lambda qi, g=g: [(qi @ h.sink_k[g, n]).item() / 2.0 for n in range(2)] for g in range(4)]
        z = causal_softmax_by_hand(q, k, v, logits, h.sink_v.detach())
    else:
        z = causal_softmax_by_hand(q, k, v, h.sink_logit.tolist())
    torch.testing.assert_close(sinks(x), merge(z) @ h.o_proj.weight.T, atol=1e-12, rtol=1e-10)


# --- positions ------------------------------------------------------------------------------------------------


def test_nope_scores_are_the_unrotated_q_dot_k_over_root_d_at_any_position() -> None:
    """No position anywhere: with a KV cache at offset 4 the new query still scores q·k/√d on the raw projections."""
    layer = attention("mha", position="nope")
    randomise(layer)
    h = layer.heads
    x = torch.randn(1, 7, 16, dtype=torch.float64)
    kv = KVCache(1)
    layer(x[:, :4], cache=kv[0])
    with capture(layer, ["hook_attn_scores"]) as seen:
        layer(x[:, 4:], cache=kv[0])
    q, k = project(x[:, 4:], h.q_proj.weight, 4), project(x, h.k_proj.weight, 4)
    for head in range(4):
        for i in range(3):
            for j in range(4 + i + 1):
                expected = (q[0, head, i] @ k[0, head, j]).item() / 2.0
                assert seen["hook_attn_scores"][0, head, i, j].item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_absolute_positions_add_their_row_for_the_absolute_position_to_the_token_embedding(make_lm, position) -> None:
    """Residual stream entering layer 0 = E[token] + P[position], also for tokens decoded after a cache of 5."""
    model = make_lm(position=position)
    tokens = torch.randint(0, 31, (2, 8))
    cache = model.new_cache()
    model(tokens[:, :5], cache)
    with capture(model, ["blocks.0.hook_resid_pre"]) as seen:
        model(tokens[:, 5:], cache)
    for b in range(2):
        for t, pos in enumerate(range(5, 8)):
            if position == "learned":
                row = model.pos.table.weight[pos]
            else:  # P[m, 2i] = sin(m / 10000^(2i/D)), P[m, 2i+1] = cos(·)
                row = torch.tensor(
                    [(math.sin if c % 2 == 0 else math.cos)(pos / 10000 ** (2 * (c // 2) / 32)) for c in range(32)]
                )
            expected = model.embed.weight[tokens[b, 5 + t]] + row
            torch.testing.assert_close(seen["blocks.0.hook_resid_pre"][b, t], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("sin_pad", [0.0, 1.0], ids=["zero-frequency", "released-code"])
def test_fope_without_mixing_scores_as_floor_clipped_rope(sin_pad: float) -> None:
    """σ = 0, n_out = D_in (d = 16, L = 64: pairs 0–2 kept, 3–7 clipped), written as the score q'_m · k'_n:

        Σ_{j kept} [(a_q a_k + b_q b_k) cos((m − n) w_j) + (a_q b_k − b_q a_k) sin((m − n) w_j)]
      + (1 + s²) · Σ_{j clipped} (a_q a_k + b_q b_k)          s = sin of the padded pairs

    Zero-frequency padding (s = 0) is floor-clipped RoPE; the released code's s = 1 doubles the clipped pairs."""
    params = FoPEParams(sigma=0.0, n_out=8, sin_pad=sin_pad)
    fope = FoPE(params, AttentionSite(d_model=32, n_heads=2, seq_len=64)).double()
    q, k = torch.randn(1, 2, 5, 16, dtype=torch.float64), torch.randn(1, 2, 5, 16, dtype=torch.float64)
    positions = torch.tensor([0, 3, 9, 20, 41])
    rq, rk = fope.rotate(q, k, positions)
    scores = rq @ rk.transpose(-1, -2)
    freqs = [10000 ** (-2 * j / 16) for j in range(8)]
    kept = [j for j in range(8) if freqs[j] >= 2 * math.pi / 64]
    assert kept == [0, 1, 2]
    for h in range(2):
        for m in range(5):
            for n in range(5):
                delta = (positions[m] - positions[n]).item()
                total = 0.0
                for j in range(8):
                    aq, bq, ak, bk = (
                        t[0, h, i, c].item() for t, i, c in ((q, m, j), (q, m, j + 8), (k, n, j), (k, n, j + 8))
                    )
                    if j in kept:
                        total += (aq * ak + bq * bk) * math.cos(delta * freqs[j])
                        total += (aq * bk - bq * ak) * math.sin(delta * freqs[j])
                    else:
                        total += (1 + sin_pad**2) * (aq * ak + bq * bk)
                assert scores[0, h, m, n].item() == pytest.approx(total, abs=1e-10)


# --- kernel normalisers and feature maps -------------------------------------------------------------------------


def test_hedgehog_weights_are_l1_normalised_dot_products_of_the_two_softmax_feature_maps() -> None:
    """φ(x) = [softmax(x W_h + b_h), softmax(−x W_h − b_h)] clamped at 1e-6, separate maps for q and k, no 1/√d;
    a_ij = φ_q(q_i)·φ_k(k_j) / (Σ_{j' ≤ i} φ_q(q_i)·φ_k(k_j') + 1e-12)."""
    entry = NORMALISERS.entry("hedgehog")
    hedgehog = entry.factory(entry.params.model_validate({"feature_dim": 3}), AttentionSite(d_model=16, n_heads=2))
    hedgehog = hedgehog.double()
    randomise(hedgehog)
    q, k, v = (torch.randn(2, 2, 6, 8, dtype=torch.float64) for _ in range(3))
    pq, pk, scale = hedgehog.prepare(q, k, None)
    res = hedgehog.attend(pq, pk, v, normaliser=hedgehog, score_mod=None, causal=True, scale=scale, window=None)

    def phi(x: torch.Tensor, fmap: torch.nn.Module, h: int) -> list[float]:
        z = [(x @ fmap.weight[h, :, f]).item() + fmap.bias[h, f].item() for f in range(3)]
        feats = []
        for sign in (1, -1):
            exps = [math.exp(sign * s) for s in z]
            feats += [max(e / sum(exps), 1e-6) for e in exps]
        return feats

    for b in range(2):
        for h in range(2):
            for i in range(6):
                fq = phi(q[b, h, i], hedgehog.q_map, h)
                kern = [
                    sum(a * c for a, c in zip(fq, phi(k[b, h, j], hedgehog.k_map, h), strict=True))
                    for j in range(i + 1)
                ]
                expected = [x / (sum(kern) + 1e-12) for x in kern] + [0.0] * (5 - i)
                torch.testing.assert_close(res.weights[b, h, i], torch.tensor(expected, dtype=torch.float64))
                torch.testing.assert_close(res.out[b, h, i], sum(w * v[b, h, j] for j, w in enumerate(expected)))


def test_identity_feature_map_gives_the_plain_signed_dot_product_kernel() -> None:
    identity = FEATURE_MAPS.get("identity")
    q, k = torch.randn(3, 5, dtype=torch.float64), -torch.randn(4, 5, dtype=torch.float64)
    kernel = identity(q) @ identity(k).T
    for i in range(3):
        for j in range(4):
            assert kernel[i, j].item() == pytest.approx(
                sum(q[i, c].item() * k[j, c].item() for c in range(5)), abs=1e-12
            )


def test_performer_features_are_exp_of_w_x_minus_half_the_squared_norm_over_root_m_with_the_stored_projection() -> None:
    fmap = PerformerFeatureMap(d=6, n_features=10, seed=1).double()
    x = 0.5 * torch.randn(3, 6, dtype=torch.float64)
    feats = fmap(x)
    w = fmap.projection
    for i in range(3):
        sq = sum(x[i, c].item() ** 2 for c in range(6))
        for r in range(10):
            wx = sum(w[r, c].item() * x[i, c].item() for c in range(6))
            assert feats[i, r].item() == pytest.approx(math.exp(wx - sq / 2) / math.sqrt(10), rel=1e-12)
