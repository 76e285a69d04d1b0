"""Core Context Aware attention (``heads="cca"``): the reference against the authors' mask and pooling written out
query by query, its known answers (g = 1 and w ≥ T are causal softmax), and the SDPA fast path against the
reference (outputs and every gradient, odd shapes, cached queries, float64 / float32 / bfloat16, gradcheck)."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.attention.core import attend_reference
from attnlab.attention.heads.cca import cca_reference, cca_sdpa
from attnlab.attention.normalisers.softmax import Softmax
from attnlab.checks import liven
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from attnlab.model.config import ModelConfig
from tolerances import lm_atol, order_bound, scale_of, unit_roundoff

SOFTMAX = Softmax()


def qkvp(t_q: int, t_k: int, h: int = 2, d: int = 8, dtype: torch.dtype = torch.float64):
    """q [2, H, Tq, d], k, v and the pooling queries [2, H, Tk, d]."""
    return (torch.randn(2, h, t, d, dtype=dtype) for t in (t_q, t_k, t_k, t_k))


def by_the_authors(q, k, v, pool_q, group: int, window: int) -> torch.Tensor:
    """CCA one query at a time, with the visibility of the authors' ``generate_mask`` (chenyaofo/CCA-Attention,
    ``codebase/core/cca_attn.py``, 1-based row r): core token p (1-based) is visible iff r > w and ⌊(r − w)/g⌋ ≥ p;
    token c iff r − w' < c ≤ r with w' = w + max(r − max(⌊(r − w)/g⌋·g, 0) − w, 0). Pooling: the group's last query's
    softmax over its keys (``fast_calculate_fusion_weights``), applied to keys and values (``_weight_pooling``)."""
    t_q, t_k, d = q.shape[2], k.shape[2], q.shape[-1]
    scale = d**-0.5
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            cores = []
            for p in range(t_k // group):
                members = range(p * group, (p + 1) * group)
                s = [float(pool_q[b, h, (p + 1) * group - 1] @ k[b, h, j]) * scale for j in members]
                a = [math.exp(x) / sum(math.exp(y) for y in s) for x in s]
                cores.append(
                    (
                        sum(a[i] * k[b, h, j] for i, j in enumerate(members)),
                        sum(a[i] * v[b, h, j] for i, j in enumerate(members)),
                    )
                )
            for i in range(t_q):
                r = t_k - t_q + i + 1
                pooled = max(math.floor((r - window) / group) * group, 0)
                wide = window + max(r - pooled - window, 0)
                keys = [cores[p - 1] for p in range(1, len(cores) + 1) if r > window and (r - window) // group >= p]
                keys += [(k[b, h, c - 1], v[b, h, c - 1]) for c in range(1, t_k + 1) if r - wide < c <= r]
                s = [float(q[b, h, i] @ kk) * scale for kk, _ in keys]
                z = sum(math.exp(x) for x in s)
                out[b, h, i] = sum(math.exp(x) / z * vv for x, (_, vv) in zip(s, keys, strict=True))
    return out


@pytest.mark.parametrize(
    ("t_q", "t_k", "group", "window"), [(11, 11, 2, 3), (11, 11, 3, 4), (4, 13, 3, 2), (1, 12, 4, 3), (9, 9, 2, 20)]
)
def test_reference_is_the_authors_mask_and_pooling_query_by_query(t_q: int, t_k: int, group: int, window: int) -> None:
    q, k, v, p = qkvp(t_q, t_k)
    got = cca_reference(q, k, v, p, normaliser=SOFTMAX, group=group, window=window).out
    torch.testing.assert_close(got, by_the_authors(q, k, v, p, group, window), atol=1e-12, rtol=0)


@pytest.mark.parametrize("fn", ["reference", "fast"])
def test_group_one_or_a_window_over_everything_is_causal_softmax(fn: str) -> None:
    """g = 1: each core token is its own token (α = 1); w ≥ T: nothing is pooled. Either way, causal softmax."""
    q, k, v, p = qkvp(10, 10)
    want = attend_reference(q, k, v, normaliser=SOFTMAX).out
    for group, window in ((1, 1), (1, 4), (3, 10), (5, 64)):
        if fn == "reference":
            got = cca_reference(q, k, v, p, normaliser=SOFTMAX, group=group, window=window).out
        else:
            got = cca_sdpa(q, k, v, p, group=group, window=window, tile=4)
        torch.testing.assert_close(got, want, atol=1e-13, rtol=0)


def test_every_earlier_token_is_reached_once_and_the_weights_give_the_output() -> None:
    q, k, v, p = qkvp(17, 17)
    res = cca_reference(q, k, v, p, normaliser=SOFTMAX, group=3, window=4)
    w = res.weights
    assert (w >= 0).all()
    # every earlier token, pooled or in the window, keeps weight; no future token has any
    assert torch.equal(w > 0, torch.ones(17, 17, dtype=torch.bool).tril().expand_as(w))
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-13, rtol=0)
    torch.testing.assert_close(w @ v, res.out, atol=1e-13, rtol=0)


SHAPES = [(13, 13, 2, 3), (5, 13, 3, 4), (1, 17, 4, 4), (70, 70, 4, 16), (33, 300, 7, 20), (64, 64, 5, 7)]


@pytest.mark.parametrize(("t_q", "t_k", "group", "window"), SHAPES)
def test_fast_path_equals_the_reference_outputs_and_gradients_float64(t_q, t_k, group, window) -> None:
    q, k, v, p = (t.requires_grad_() for t in qkvp(t_q, t_k))
    grad = torch.randn(2, 2, t_q, 8, dtype=torch.float64)
    want = cca_reference(q, k, v, p, normaliser=SOFTMAX, group=group, window=window).out
    got = cca_sdpa(q, k, v, p, group=group, window=window, tile=16)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    for g, w in zip(
        torch.autograd.grad(got, (q, k, v, p), grad), torch.autograd.grad(want, (q, k, v, p), grad), strict=True
    ):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_equals_the_reference_in_low_precision(dtype: torch.dtype) -> None:
    """Both compute in float32 from the same inputs (bfloat16 is upcast): they differ by the summation order of the
    pooling, the scores, the softmax rows and weights · v (depth 4 over ≤ Tk terms), plus, in bfloat16, the output's
    final rounding (one unit roundoff each side)."""
    t = 45
    q, k, v, p = (x.to(dtype).requires_grad_() for x in qkvp(t, t, 4, 16))
    want = cca_reference(q, k, v, p, normaliser=SOFTMAX, group=3, window=7).out
    got = cca_sdpa(q, k, v, p, group=3, window=7, tile=12)
    bound = order_bound(torch.float32, t, depth=4) + (2 * unit_roundoff(dtype) if dtype != torch.float32 else 0)
    torch.testing.assert_close(got.double(), want.double(), atol=bound * scale_of(want), rtol=0)
    grad = torch.randn_like(want)
    for g, w in zip(
        torch.autograd.grad(got, (q, k, v, p), grad), torch.autograd.grad(want, (q, k, v, p), grad), strict=True
    ):
        torch.testing.assert_close(g.double(), w.double(), atol=2 * bound * scale_of(w), rtol=0)


def test_gradcheck_of_both_paths_in_float64() -> None:
    q, k, v, p = (t.requires_grad_() for t in qkvp(6, 9, 1, 3))
    torch.autograd.gradcheck(lambda *x: cca_sdpa(*x, group=2, window=2, tile=4), (q, k, v, p))
    torch.autograd.gradcheck(lambda *x: cca_reference(*x, normaliser=SOFTMAX, group=2, window=2).out, (q, k, v, p))


def layer(backend: str, **attention) -> torch.nn.Module:
    cfg = AttentionConfig(heads="cca", heads_args={"group": 3, "window": 4}, backend=backend, **attention)
    return build_attention(cfg, AttentionSite(d_model=32, n_heads=4, seq_len=32))


def test_the_layer_takes_the_fast_path_and_it_equals_the_reference_path_with_every_parameter_gradient() -> None:
    fast = liven(layer("auto")).double()
    slow = layer("reference").double()
    slow.load_state_dict(fast.state_dict())
    assert fast.choose_path(t_q=19).path == "heads_sdpa" and slow.choose_path(t_q=19).path == "heads"
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    outs = [m(x) for m in (fast, slow)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=0)
    outs[0].square().sum().backward()
    outs[1].square().sum().backward()
    for (name, p), p2 in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p2.grad, atol=1e-10, rtol=0, msg=name)


def test_rotated_keys_carry_the_rotated_queries_for_the_pooling(make_lm) -> None:
    model = make_lm(heads="cca", heads_args={"group": 2, "window": 3})
    with capture(model, ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"]) as acts:
        model(torch.randint(0, 31, (2, 7)))
    q, k = acts["blocks.0.attn.hook_rot_q"], acts["blocks.0.attn.hook_rot_k"]
    assert k.shape == (2, 8, 7, 8)
    torch.testing.assert_close(k[:, 4:], q, atol=0, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 5])
@torch.no_grad()
def test_cached_decoding_across_group_boundaries_equals_the_full_pass(make_lm, chunk: int) -> None:
    model = make_lm(heads="cca", heads_args={"group": 2, "window": 3}).double()
    tokens = torch.randint(0, 31, (2, 15))
    cache = model.new_cache()
    decoded = torch.cat([model(tokens[:, i : i + chunk], cache) for i in range(0, 15, chunk)], dim=1)
    full = model(tokens)
    torch.testing.assert_close(decoded, full, atol=lm_atol(full), rtol=0)


def test_unsupported_uses_are_refused() -> None:
    site = AttentionSite(d_model=32, n_heads=4, causal=False, seq_len=16)
    for bad in (
        lambda: ModelConfig(vocab_size=31, d_model=32, n_heads=4, mode="encoder", attention={"heads": "cca"}),
        lambda: ModelConfig(vocab_size=31, d_model=32, n_heads=4, attention={"heads": "cca", "position": "alibi"}),
        lambda: AttentionConfig(heads="cca", heads_args={"window": 0}),
        lambda: AttentionConfig(heads="cca").check_site(site),
    ):
        with pytest.raises(ConfigError) as err:
            bad()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"window=4: heads='cca' has its own block structure"):
        layer("auto", window=4)(torch.randn(1, 6, 32))
    module = layer("auto")
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match="expects keys packed with their pooling queries"):
        module.heads.attend_sdpa(q, q, q)  # keys without the pooling queries (a cache that rotates them itself)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_path_equals_the_reference_on_cuda() -> None:
    q, k, v, p = (t.cuda().float().requires_grad_() for t in qkvp(37, 37, 4, 16))
    want = cca_reference(q, k, v, p, normaliser=SOFTMAX, group=3, window=7).out
    got = cca_sdpa(q, k, v, p, group=3, window=7, tile=12)
    # float32 matmuls as on the CPU (PyTorch leaves TF32 off for them by default): the float32 bound above
    bound = order_bound(torch.float32, 37, depth=4)
    torch.testing.assert_close(got, want, atol=bound * scale_of(want), rtol=0)
