"""Each normaliser's reference equals its paper's formula, written here from scratch with plain loops.

The known answers never call attnlab: scores, visible counts, softplus and clipping are spelled out in
float64 Python so a shared mistake in the library cannot hide in both sides of a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference

SITE = AttentionSite(d_model=8, n_heads=2, seq_len=12)  # d_head = 4
Matrix = list[list[float]]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def unit(a: list[float]) -> list[float]:
    norm = math.sqrt(dot(a, a))
    return [x / norm for x in a]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def visible(t_q: int, t_k: int, causal: bool) -> list[list[bool]]:
    """Queries are the last t_q positions: query i sees key j iff j <= i + (t_k - t_q)."""
    return [[not causal or j <= i + t_k - t_q for j in range(t_k)] for i in range(t_q)]


def dot_scores(q: Matrix, k: Matrix) -> Matrix:
    d = len(q[0])
    return [[dot(qi, kj) / math.sqrt(d) for kj in k] for qi in q]


def softmax_rows(s: Matrix, vis: list[list[bool]]) -> Matrix:
    out = []
    for row, seen in zip(s, vis, strict=True):
        z = sum(math.exp(x) for x, ok in zip(row, seen, strict=True) if ok)
        out.append([math.exp(x) / z if ok else 0.0 for x, ok in zip(row, seen, strict=True)])
    return out


def l1_rows(u: Matrix, eps: float) -> Matrix:
    return [[x / (sum(row) + eps) for x in row] for row in u]


def known_softmax(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
    return softmax_rows(dot_scores(q, k), vis)


def known_sigmoid(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
    b = args.get("bias", -math.log(SITE.seq_len))
    s = dot_scores(q, k)
    return [
        [1 / (1 + math.exp(-(x + b))) if ok else 0.0 for x, ok in zip(row, seen, strict=True)]
        for row, seen in zip(s, vis, strict=True)
    ]


def known_cog(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
    out = []
    for row, seen in zip(dot_scores(q, k), vis, strict=True):
        z = sum(math.exp(abs(x)) for x, ok in zip(row, seen, strict=True) if ok)
        out.append([math.copysign(1, x) * math.exp(abs(x)) / z if ok else 0.0 for x, ok in zip(row, seen, strict=True)])
    return out


def known_clipped_softmax(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
    gamma = -args["alpha"] / SITE.seq_len if "alpha" in args else args.get("gamma", -0.025)
    zeta = args.get("zeta", 1.0)
    p = softmax_rows(dot_scores(q, k), vis)
    return [
        [min(max((zeta - gamma) * x + gamma, 0.0), 1.0) if ok else 0.0 for x, ok in zip(row, seen, strict=True)]
        for row, seen in zip(p, vis, strict=True)
    ]


def known_lssa(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
    d = len(q[0])
    u = []
    for qi, seen in zip(q, vis, strict=True):
        n_i = sum(seen)
        cos = [dot(unit(qi), unit(kj)) for kj in k]  # cosine scores, no 1/sqrt(d)
        u.append([softplus(math.log(d) * math.log(n_i) * c) if ok else 0.0 for c, ok in zip(cos, seen, strict=True)])
    return l1_rows(u, 1e-8)


def known_lssar(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
    p = args.get("power", 15.0)
    a = known_lssa(q, k, vis, args)
    r = []
    for row, seen in zip(a, vis, strict=True):
        n_i = sum(seen)
        offset = 0.0 if n_i <= 3 else 1.0
        r.append([max(n_i * x - offset, 0.0) ** p if ok else 0.0 for x, ok in zip(row, seen, strict=True)])
    return l1_rows(r, 1e-8)


def known_relu_power(power: int, default_alpha: float) -> Callable[..., Matrix]:
    def known(q: Matrix, k: Matrix, vis: list[list[bool]], args: dict[str, Any]) -> Matrix:
        alpha = args.get("alpha", default_alpha)
        s = dot_scores(q, k)
        rows = []
        for row, seen in zip(s, vis, strict=True):
            n_i = sum(seen)
            rows.append([max(x, 0.0) ** power / n_i**alpha if ok else 0.0 for x, ok in zip(row, seen, strict=True)])
        return rows

    return known


KNOWN_ANSWERS: dict[str, Callable[..., Matrix]] = {
    "relu": known_relu_power(1, 1.0),
    "relu2": known_relu_power(2, 2.0),
    "softmax": known_softmax,
    "sigmoid": known_sigmoid,
    "cog": known_cog,
    "clipped_softmax": known_clipped_softmax,
    "lssa": known_lssa,
    "lssar": known_lssar,
}

# Non-default arguments whose formulas differ from the defaults.
EXTRA_CASES = [
    ("clipped_softmax", {"alpha": 4.0}),
    ("clipped_softmax", {"gamma": -0.1, "zeta": 1.2}),
    ("sigmoid", {"bias": -0.5}),
    ("lssar", {"power": 3.0}),
    ("relu", {"alpha": 0.5}),
]
SHAPES = [(6, 6, True), (6, 6, False), (2, 6, True)]  # (Tq, Tk, causal); Tq < Tk is decoding


def make_normaliser(name: str, args: dict[str, Any] | None = None) -> torch.nn.Module:
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params.model_validate(args or {}), SITE)


def reference_weights(name: str, args: dict[str, Any], q, k, v, causal: bool):
    normaliser = make_normaliser(name, args)
    q, k, scale = normaliser.prepare(q, k, None)  # what the Attention module does first
    return attend_reference(q, k, v, normaliser=normaliser, causal=causal, scale=scale)


def check_against_known_answer(name: str, args: dict[str, Any], t_q: int, t_k: int, causal: bool) -> None:
    assert name in KNOWN_ANSWERS, f"normaliser {name!r} is registered but has no known-answer function in KNOWN_ANSWERS"
    # Scores spread wide enough that clipping, sign flips and the ReLU re-weighting all happen.
    q = 2.5 * torch.randn(2, 2, t_q, 4, dtype=torch.float64)
    k = 2.5 * torch.randn(2, 2, t_k, 4, dtype=torch.float64)
    v = torch.randn(2, 2, t_k, 3, dtype=torch.float64)
    res = reference_weights(name, args, q, k, v, causal)
    vis = visible(t_q, t_k, causal)
    expected = torch.tensor(
        [[KNOWN_ANSWERS[name](q[b, h].tolist(), k[b, h].tolist(), vis, args) for h in range(2)] for b in range(2)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(res.weights, expected, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(res.out, expected @ v, atol=1e-10, rtol=1e-9)


# Normalisers that map scores to weights; kernel attention (its own ``attend``) has its own formula tests.
SCORE_NORMALISERS = [n for n in NORMALISERS.names() if not hasattr(NORMALISERS.get(n), "attend")]


@pytest.mark.parametrize(("t_q", "t_k", "causal"), SHAPES)
@pytest.mark.parametrize("name", SCORE_NORMALISERS)
def test_reference_matches_the_papers_formula(name: str, t_q: int, t_k: int, causal: bool) -> None:
    check_against_known_answer(name, {}, t_q, t_k, causal)


@pytest.mark.parametrize(("name", "args"), EXTRA_CASES, ids=lambda x: str(x))
def test_reference_matches_the_formula_with_non_default_arguments(name: str, args: dict[str, Any]) -> None:
    check_against_known_answer(name, args, 6, 6, True)


def test_clipped_softmax_gives_exact_zeros_to_visible_keys_with_small_softmax() -> None:
    q, k, v = (3 * torch.randn(1, 1, 8, 4, dtype=torch.float64) for _ in range(3))
    res = reference_weights("clipped_softmax", {}, q, k, v, causal=True)
    visible_keys = torch.isfinite(res.scores)
    small = visible_keys & (torch.softmax(res.scores, dim=-1) < 0.025 / 1.025)  # (ζ − γ)·p + γ <= 0
    assert small.any(), "the input should contain visible keys with a small softmax"
    assert torch.equal(res.weights[small], torch.zeros_like(res.weights[small]))


def test_lssar_first_three_rows_have_no_offset() -> None:
    """With O_i = 0 for N_i <= 3, row 0 (one visible key) keeps all its weight on that key."""
    q, k, v = (torch.randn(1, 1, 5, 4, dtype=torch.float64) for _ in range(3))
    res = reference_weights("lssar", {}, q, k, v, causal=True)
    assert res.weights[0, 0, 0, 0].item() == pytest.approx(1.0, abs=1e-7)
    assert (res.weights[0, 0, :3].sum(-1) > 0.99).all()
