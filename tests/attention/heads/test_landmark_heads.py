"""Landmark attention (``heads="landmark"``): the reference against the paper's definition written out query by
query, its known answers, and the fast path against the reference (outputs and every gradient, odd shapes, cached
queries, GQA, float64 / float32 / bfloat16, gradcheck), in the layer and on its own."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.attention.core import attend_reference
from attnlab.attention.heads.landmark import landmark_positions, landmark_reference, landmark_tiled
from attnlab.attention.normalisers.softmax import Softmax
from attnlab.checks import liven
from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from tolerances import lm_atol, order_bound, scale_of, unit_roundoff

SOFTMAX = Softmax()


def qkv(t_q: int, t_k: int, h: int = 4, h_kv: int = 2, d: int = 8, dtype: torch.dtype = torch.float64):
    return (
        torch.randn(2, h, t_q, d, dtype=dtype),
        torch.randn(2, h_kv, t_k, d, dtype=dtype),
        torch.randn(2, h_kv, t_k, d, dtype=dtype),
    )


def by_the_paper(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, top_k: int | None = None
) -> torch.Tensor:
    """The grouped softmax of Mohtashami & Jaggi (arXiv:2305.16300, §3.1) one query and one key at a time: the query
    group is its block's regular tokens so far and the landmarks of earlier blocks (with ``top_k``, of the k earlier
    blocks whose landmarks score highest); a token of an earlier block gets its landmark's share of the query group
    times its share of its own block."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    t_q, t_k, period = q.shape[2], k.shape[2], block + 1
    out = torch.zeros_like(q[..., :1].expand(*q.shape[:-1], v.shape[-1])).clone()
    scale = q.shape[-1] ** -0.5
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(t_q):
                t = t_k - t_q + i
                s = [float(q[b, h, i] @ k[b, h, j]) * scale for j in range(t_k)]
                cur = t // period
                group = [j for j in range(t + 1) if j // period == cur and j % period != block]
                landmarks = sorted((bb * period + block for bb in range(cur)), key=lambda j: -s[j])
                read = {j // period for j in landmarks[: top_k or len(landmarks)]}
                group += [bb * period + block for bb in read]
                z = sum(math.exp(s[j]) for j in group)
                for j in range(t + 1):
                    if j % period == block:
                        continue  # a landmark gates, it is never read
                    if j // period == cur:
                        w = math.exp(s[j]) / z
                    elif j // period not in read:
                        continue
                    else:
                        own = [bb for bb in range(t_k) if bb // period == j // period and bb % period != block]
                        gate = math.exp(s[(j // period) * period + block]) / z
                        w = gate * math.exp(s[j]) / sum(math.exp(s[jj]) for jj in own)
                    out[b, h, i] += w * v[b, h, j]
    return out


@pytest.mark.parametrize("top_k", [None, 1, 2])
@pytest.mark.parametrize(("t_q", "t_k", "block"), [(11, 11, 3), (4, 11, 3), (1, 10, 2), (9, 9, 1)])
def test_reference_is_the_papers_grouped_softmax_query_by_query(t_q: int, t_k: int, block: int, top_k) -> None:
    q, k, v = qkv(t_q, t_k)
    got = landmark_reference(q, k, v, normaliser=SOFTMAX, block=block, top_k=top_k).out
    torch.testing.assert_close(got, by_the_paper(q, k, v, block, top_k), atol=1e-12, rtol=0)


def test_top_k_of_at_least_every_block_is_the_full_grouped_softmax() -> None:
    q, k, v = qkv(13, 13)
    want = landmark_reference(q, k, v, normaliser=SOFTMAX, block=2).out
    for top_k in (4, 5, 100):  # 13 positions in blocks of 3: at most 4 earlier blocks
        got = landmark_reference(q, k, v, normaliser=SOFTMAX, block=2, top_k=top_k).out
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        torch.testing.assert_close(landmark_tiled(q, k, v, block=2, top_k=top_k), want, atol=1e-13, rtol=0)


def test_top_k_reads_only_the_best_blocks() -> None:
    q, k, v = qkv(1, 16, h=2, h_kv=2)
    w = landmark_reference(q, k, v, normaliser=SOFTMAX, block=3, top_k=1).weights  # 4 blocks; the query is in block 3
    read = (w[..., :12].view(2, 2, 1, 3, 4).sum(-1) > 0).sum(-1)  # earlier blocks with any weight
    assert (read == 1).all()
    best = k[..., 3:12:4, :].mul(q).sum(-1).argmax(-1)  # the earlier landmark with the highest score, per head
    assert torch.equal(w[..., :12].view(2, 2, 1, 3, 4).sum(-1).argmax(-1).squeeze(-1), best)


@pytest.mark.parametrize("fn", ["reference", "fast"])
def test_one_block_is_causal_softmax_over_it(fn: str) -> None:
    """Before the first landmark there is nothing to gate: the query group is every earlier token."""
    q, k, v = qkv(7, 7)
    want = attend_reference(q, k, v, normaliser=SOFTMAX).out
    for block in (7, 8, 50):
        got = (
            landmark_reference(q, k, v, normaliser=SOFTMAX, block=block).out
            if fn == "reference"
            else landmark_tiled(q, k, v, block=block)
        )
        torch.testing.assert_close(got, want, atol=1e-13, rtol=0)


def test_weights_are_a_distribution_with_zeros_on_landmarks_and_future_keys_and_give_the_output() -> None:
    q, k, v = qkv(13, 13)
    res = landmark_reference(q, k, v, normaliser=SOFTMAX, block=3)
    w = res.weights
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-13, rtol=0)
    assert (w[..., landmark_positions(13, 3)] == 0).all()
    assert (w[..., torch.ones(13, 13, dtype=torch.bool).triu(1)] == 0).all()
    torch.testing.assert_close(w @ v.repeat_interleave(2, 1), res.out, atol=1e-13, rtol=0)


def test_a_block_gets_the_mass_its_landmark_wins() -> None:
    """Raising one landmark's key towards the query moves mass onto exactly that block's tokens."""
    q, k, v = qkv(1, 12, h=1, h_kv=1)
    base = landmark_reference(q, k, v, normaliser=SOFTMAX, block=3).weights
    k2 = k.clone()
    k2[:, :, 3] += 5 * q[:, :, 0] / q[:, :, 0].norm()  # the landmark of block 0
    moved = landmark_reference(q, k2, v, normaliser=SOFTMAX, block=3).weights
    assert (moved[..., :3].sum(-1) > base[..., :3].sum(-1) + 0.1).all()
    # within block 0, its tokens keep their relative shares (their own softmax did not change)
    torch.testing.assert_close(
        moved[..., :3] / moved[..., :3].sum(-1, keepdim=True), base[..., :3] / base[..., :3].sum(-1, keepdim=True)
    )


SHAPES = [(13, 13, 3, 4, 2), (5, 13, 3, 4, 4), (1, 17, 4, 2, 1), (70, 70, 6, 4, 2), (33, 300, 7, 2, 2)]


@pytest.mark.parametrize("top_k", [None, 2])
@pytest.mark.parametrize(("t_q", "t_k", "block", "h", "h_kv"), SHAPES)
def test_fast_path_equals_the_reference_outputs_and_gradients_float64(t_q, t_k, block, h, h_kv, top_k) -> None:
    q, k, v = (t.requires_grad_() for t in qkv(t_q, t_k, h, h_kv))
    grad = torch.randn(2, h, t_q, 8, dtype=torch.float64)
    want = landmark_reference(q, k, v, normaliser=SOFTMAX, block=block, top_k=top_k).out
    got = landmark_tiled(q, k, v, block=block, top_k=top_k, tile=16)  # several tiles, not aligned to the queries
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad), strict=True):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_equals_the_reference_in_low_precision(dtype: torch.dtype) -> None:
    """Both compute in float32 from the same inputs (bfloat16 is upcast, as the reference does): they differ by the
    summation order of scores, log-sum-exps, softmax rows and weights · v (depth 4 over ≤ Tk terms), plus, in
    bfloat16, the output's final rounding (one unit roundoff each side)."""
    t = 45
    q, k, v = (x.to(dtype).requires_grad_() for x in qkv(t, t, 4, 2, 16))
    want = landmark_reference(q, k, v, normaliser=SOFTMAX, block=5).out
    got = landmark_tiled(q, k, v, block=5, tile=12)
    bound = order_bound(torch.float32, t, depth=4) + (2 * unit_roundoff(dtype) if dtype != torch.float32 else 0)
    torch.testing.assert_close(got.double(), want.double(), atol=bound * scale_of(want), rtol=0)
    grad = torch.randn_like(want)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad), strict=True):
        torch.testing.assert_close(g.double(), w.double(), atol=2 * bound * scale_of(w), rtol=0)


def test_gradcheck_of_both_paths_in_float64() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(6, 9, 2, 1, 3))
    torch.autograd.gradcheck(lambda *x: landmark_tiled(*x, block=2, tile=3), (q, k, v))
    torch.autograd.gradcheck(lambda *x: landmark_reference(*x, normaliser=SOFTMAX, block=2).out, (q, k, v))
    torch.autograd.gradcheck(lambda *x: landmark_tiled(*x, block=2, top_k=1, tile=3), (q, k, v))


def layer(backend: str, block: int = 3, **attention) -> torch.nn.Module:
    cfg = AttentionConfig(heads="landmark", heads_args={"block": block}, backend=backend, **attention)
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


@pytest.mark.parametrize("top_k", [None, 1])
@pytest.mark.parametrize("chunk", [1, 3, 5])
@torch.no_grad()
def test_cached_decoding_across_block_boundaries_equals_the_full_pass(make_lm, chunk: int, top_k) -> None:
    model = make_lm(heads="landmark", heads_args={"block": 3, "top_k": top_k}).double()
    tokens = torch.randint(0, 31, (2, 15))
    cache = model.new_cache()
    decoded = torch.cat([model(tokens[:, i : i + chunk], cache) for i in range(0, 15, chunk)], dim=1)
    full = model(tokens)
    torch.testing.assert_close(decoded, full, atol=lm_atol(full), rtol=0)


def test_unsupported_uses_are_refused_in_one_line() -> None:
    site = AttentionSite(d_model=32, n_heads=4, causal=False, seq_len=16)
    for bad in (
        lambda: ModelConfig(vocab_size=31, d_model=32, n_heads=4, mode="encoder", attention={"heads": "landmark"}),
        lambda: ModelConfig(vocab_size=31, d_model=32, n_heads=4, attention={"heads": "landmark", "position": "alibi"}),
        lambda: AttentionConfig(heads="landmark", heads_args={"block": 0}),
        lambda: AttentionConfig(heads="landmark").check_site(site),
    ):
        with pytest.raises(ConfigError) as err:
            bad()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"window=4: heads='landmark' has its own block structure"):
        layer("auto", window=4)(torch.randn(1, 6, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_path_equals_the_reference_on_cuda() -> None:
    q, k, v = (t.cuda().float().requires_grad_() for t in qkv(37, 37, 4, 2, 16))
    want = landmark_reference(q, k, v, normaliser=SOFTMAX, block=5).out
    got = landmark_tiled(q, k, v, block=5, tile=12)
    # float32 matmuls as on the CPU (PyTorch leaves TF32 off for them by default): the float32 bound above
    bound = order_bound(torch.float32, 37, depth=4)
    torch.testing.assert_close(got, want, atol=bound * scale_of(want), rtol=0)
