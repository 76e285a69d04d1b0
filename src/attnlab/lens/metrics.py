"""Head metrics as pure functions of attention patterns (TransformerLens style).

Inputs are patterns ``P [B, H, Tq, Tk]`` (rows = queries, columns = keys, as ``blocks.{L}.attn.hook_pattern``
records them). Causal patterns are aligned bottom-right: query ``i`` sits at absolute position ``i + Tk − Tq``
(``Tq == Tk`` without a KV cache). Unless stated, a metric returns one value per head, ``[H]``, averaged over the
batch and the queries.

Patterns need not be softmax rows: sigmoid attention rows are non-negative but do not sum to 1, and signed
mechanisms (Cog, differential) have negative weights. Each docstring says how it treats them; the shared
convention is ``row_normalise``: divide a row by its L1 mass ``Σ_j |w_ij|`` (for non-negative rows this is Gu et
al.'s proxy score ``sim / Σ sim``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _check(P: Tensor, name: str = "P") -> None:
    if P.dim() != 4:
        raise ValueError(f"{name} must be a pattern [batch, head, q, k]; got shape {tuple(P.shape)}")


def _check_square(P: Tensor, what: str) -> None:
    _check(P)
    if P.shape[-2] != P.shape[-1]:
        raise ValueError(f"{what} indexes queries and keys by token position, so needs Tq == Tk; got {tuple(P.shape)}")


def _query_positions(P: Tensor) -> Tensor:
    """Absolute positions of the queries, [Tq] (bottom-right alignment)."""
    t_q, t_k = P.shape[-2:]
    return torch.arange(t_k - t_q, t_k, device=P.device)


def row_normalise(P: Tensor) -> Tensor:
    """``w_ij / Σ_j |w_ij|`` per row, signs kept; rows with no mass stay zero.

    For non-negative rows (softmax, sigmoid) this is Gu et al.'s proxy ``sim / Σ sim``; for signed rows the
    magnitudes sum to 1.
    """
    mass = P.abs().sum(-1, keepdim=True)
    return torch.where(mass > 0, P / mass.clamp_min(torch.finfo(P.dtype).tiny), torch.zeros_like(P))


def _alpha(P: Tensor, causal: bool = True, normalise: bool = False) -> Tensor:
    """α_k for every key, per sample: [B, H, Tk]. The column sum divided by the number of queries that see k."""
    _check(P)
    if normalise:
        P = row_normalise(P)
    t_q, t_k = P.shape[-2:]
    keys = torch.arange(t_k, device=P.device)
    # causal: the queries at positions max(k, Tk − Tq) .. Tk − 1 see key k; otherwise all Tq do
    seen_by = t_k - keys.clamp_min(t_k - t_q) if causal else torch.full_like(keys, t_q)
    return P.sum(-2) / seen_by.to(P.dtype)  # [B, H, Tk]


def sink_scores(P: Tensor, k: int = 0, causal: bool = True, normalise: bool = False) -> Tensor:
    """α_k per head, [H]: the mean attention key ``k`` receives from the queries that can see it.

    Gu et al., "When Attention Sink Emerges in Language Models: An Empirical View" (ICLR 2025, arXiv 2410.10781)::

        α_k^{l,h} = 1/(T − k) · Σ_{t=k}^{T−1} A^{l,h}[t, k]      (0-indexed; the paper's "k = 1" is our k = 0)

    as in the authors' ``compute_attention_sink`` (``A / arange(T, 0, -1)`` summed over queries); no queries are
    excluded. Averaged over the batch here. Weights are taken as given: a sigmoid head's α is on its own scale and
    a negative weight lowers α; ``normalise=True`` first applies ``row_normalise`` (the paper's proxy scores for
    attention without a normaliser). ``causal=False`` divides by Tq (every query sees every key).
    """
    return _alpha(P, causal, normalise)[..., k].mean(0)


def sink_rate(
    P: Tensor | Sequence[Tensor] | Mapping[int, Tensor],
    k: int = 0,
    eps: float = 0.3,
    causal: bool = True,
    normalise: bool = False,
) -> Tensor:
    """Sink_k^ε: the fraction (0..1, not percent) of heads with α_k > ε, a scalar tensor.

    Gu et al. (arXiv 2410.10781), default ε = 0.3::

        Sink_k^ε = 1/L · Σ_l 1/H · Σ_h 1[α_k^{l,h} > ε]     averaged over samples

    Following the authors' code, the indicator is taken per sample (α is not batch-averaged first), then averaged
    over samples, heads and layers. ``P``: one layer [B, H, Tq, Tk], a stacked [L, B, H, Tq, Tk], or a list / dict
    of per-layer patterns. The paper reports it at T = 64; the value depends strongly on T and ε.
    """
    if isinstance(P, Mapping):
        layers = list(P.values())
    elif isinstance(P, Tensor):
        layers = list(P) if P.dim() == 5 else [P]
    else:
        layers = list(P)
    if not layers:
        raise ValueError("sink_rate needs at least one layer's pattern")
    per_layer = [(_alpha(p, causal, normalise)[..., k] > eps).to(p.dtype).mean() for p in layers]
    return torch.stack(per_layer).mean()


def hidden_sinks(
    P: Tensor, threshold: float = 0.1, exclude_last: int = 0, causal: bool = True, normalise: bool = False
) -> tuple[Tensor, Tensor]:
    """Hidden attention sinks: keys after the first whose α_k (batch-averaged) exceeds ``threshold``.

    Yu et al., "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models without
    Training through Attention Calibration" (ACT, ICML 2024, arXiv:2406.15765; code ``GATECH-EIC/ACT``)::

        col_score_k = Σ_t A[t, k] / (T − k)        (the same normaliser as ``sink_scores``)
        S = {k ≥ 1 : col_score_k > τ},  τ = 0.1

    Returns ``(indices [N, 2] of (head, key), scores [N])``, ordered by head then key.

    Differences from the ACT code (UNVERIFIED against the paper text, arXiv:2406.15765): ACT drops the *first
    qualifying* column (``indices[1:]``), which is key 0 only if key 0 itself passes τ; here key 0 is always the
    initial sink and never reported. ACT computes scores per sample; here they are averaged over the batch. The
    last keys have tiny denominators (a final token attending to itself > τ is flagged); ``exclude_last`` drops
    that many final keys (ACT: 0).
    """
    alpha = _alpha(P, causal, normalise).mean(0)  # [H, Tk]
    keep = alpha > threshold
    keep[:, 0] = False
    if exclude_last:
        keep[:, -exclude_last:] = False
    indices = keep.nonzero()
    return indices, alpha[keep]


def induction_score(P: Tensor, seq_half: int) -> Tensor:
    """Induction (prefix-matching) score per head on ``[BOS] + x + x`` with ``len(x) = n = seq_half``.

    Olsson et al., "In-context Learning and Induction Heads" (2022); diagonal-mean form of the ARENA tutorials.
    Positions: BOS = 0, first copy 1..n, second copy n+1..2n (so ``T = 2n + 1``)::

        score = mean_{i = n+1..2n} A[i, i − n + 1]

    the attention from the second occurrence of r_j to the token after its first occurrence (r_{j+1}; for the last
    query that is position n + 1). Only second-copy queries count and BOS is never a target, so a perfect head
    scores 1. (ARENA's ``induction_attn_detector``, in the TransformerLens exercises of ``callummcdougall/ARENA_3.0``,
    takes ``pattern.diagonal(-n + 1).mean()``, which also counts queries n − 1 and n: they cannot be induction.)
    For TransformerLens's "mul" score see ``detection_score``. Weights are
    taken as given (not row-normalised).
    """
    _check_square(P, "induction_score")
    n, t = seq_half, P.shape[-1]
    if n < 1 or t != 2 * n + 1:
        raise ValueError(f"induction_score expects [BOS] + x + x, T = 2·seq_half + 1; got T={t}, seq_half={n}")
    queries = torch.arange(n + 1, 2 * n + 1, device=P.device)
    return P[..., queries, queries - n + 1].mean((0, 2))


def previous_token_score(P: Tensor, exclude_bos: bool = True) -> Tensor:
    """Previous-token score per head: the mean of the sub-diagonal ``A[i, i − 1]``.

    TransformerLens ``head_detector`` (previous-token detection pattern, diagonal-mean form). With ``exclude_bos``
    (TransformerLens's default zeroes attention to position 0) query 1, whose previous token is BOS, is left out:
    the mean runs over i = 2..T−1; otherwise over i = 1..T−1. Weights are taken as given.
    """
    _check_square(P, "previous_token_score")
    start = 2 if exclude_bos else 1
    if P.shape[-1] <= start:
        raise ValueError(f"previous_token_score needs T > {start}; got T={P.shape[-1]}")
    queries = torch.arange(start, P.shape[-1], device=P.device)
    return P[..., queries, queries - 1].mean((0, 2))


def duplicate_detection_pattern(tokens: Tensor, exclude_bos: bool = True) -> Tensor:
    """``D[b, i, j] = 1[tok_j == tok_i, j < i]`` (and ``j ≥ 1`` with ``exclude_bos``), [B, T, T] bool.

    TransformerLens ``get_duplicate_token_head_detection_pattern``, batched.
    """
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens  # [B, T]
    t = tokens.shape[-1]
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, T(q), T(k)]
    earlier = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril(-1)
    if exclude_bos:
        earlier[:, 0] = False
    return same & earlier


def induction_detection_pattern(tokens: Tensor) -> Tensor:
    """TransformerLens ``get_induction_head_detection_pattern``, batched, [B, T, T] bool.

    ``D[i, j] = dup[i, j − 1]`` (key j follows an earlier copy of token i), first column 0, lower-triangular.
    """
    dup = duplicate_detection_pattern(tokens, exclude_bos=False)
    shifted = torch.zeros_like(dup)
    shifted[..., 1:] = dup[..., :-1]
    return shifted & torch.ones_like(dup[0]).tril()


def duplicate_token_score(P: Tensor, tokens: Tensor, exclude_bos: bool = True) -> Tensor:
    """Duplicate-token score per head: attention from a token to earlier positions holding the same token.

    TransformerLens ``head_detector`` (duplicate-token detection pattern), diagonal-mean form::

        score = mean over queries i with an earlier copy of Σ_{j < i, tok_j = tok_i} A[i, j]

    averaged over every (sample, query) pair that has an earlier copy (others have no defined target). With
    ``exclude_bos`` position 0 is never a copy (TransformerLens zeroes attention to BOS). ``tokens``: [T] or
    [B, T]. Weights are taken as given.
    """
    _check_square(P, "duplicate_token_score")
    dup = duplicate_detection_pattern(tokens.to(P.device), exclude_bos).expand(P.shape[0], -1, -1)  # [B, T, T]
    if tuple(dup.shape[-2:]) != tuple(P.shape[-2:]):
        raise ValueError(f"tokens length {tokens.shape[-1]} does not match the pattern's T={P.shape[-1]}")
    has_copy = dup.any(-1)  # [B, T]
    if not has_copy.any():
        raise ValueError("duplicate_token_score: no token repeats in `tokens`, so no query has a target")
    to_copies = (P * dup[:, None]).sum(-1)  # [B, H, T]
    return (to_copies * has_copy[:, None]).sum((0, 2)) / has_copy.sum()


def detection_score(
    P: Tensor, detection: Tensor, exclude_bos: bool = True, exclude_current_token: bool = False
) -> Tensor:
    """TransformerLens ``detect_head`` "mul" score per head: ``Σ(A ⊙ D) / Σ A`` over batch, queries and keys.

    ``detection`` [T, T] or [B, T, T] (e.g. ``induction_detection_pattern``). ``exclude_bos`` zeroes column 0
    and ``exclude_current_token`` the diagonal of A first. Normalised by *all* remaining mass, including rows
    that cannot match (the first copy for induction), so a perfect head may score below 1 unless those rows
    attend only to BOS. Weights are taken as given.
    """
    _check(P)
    A = P.clone()
    if exclude_bos:
        A[..., 0] = 0
    if exclude_current_token:
        A = A * (1 - torch.eye(A.shape[-1], device=A.device, dtype=A.dtype))
    D = detection.to(A.dtype)
    D = D[:, None] if D.dim() == 3 else D  # [B, 1, T, T] or [T, T]
    return (A * D).sum((0, 2, 3)) / A.sum((0, 2, 3))


def attention_entropy(P: Tensor, per_query: bool = False) -> Tensor:
    """Shannon entropy (nats) of each attention row: ``H_i = −Σ_j p_ij log p_ij``, 0·log 0 = 0.

    Rows are first made distributions by ``p = |w| / Σ_j |w_ij|`` (``row_normalise`` then magnitudes): a no-op for
    softmax; sigmoid rows are rescaled to sum to 1; signed rows use their magnitudes. Masked (zero) weights add 0;
    rows with no mass are skipped. Returns [H] (mean over batch and queries) or, with ``per_query``, [H, Tq]
    (mean over batch). A uniform causal row i has entropy log(i + 1). Used per head vs context length by
    Entropy-ABF (Zhang, Li, Liu 2024).
    """
    _check(P)
    p = row_normalise(P).abs()
    entropy = -torch.special.xlogy(p, p).sum(-1)  # [B, H, Tq]
    entropy = entropy.masked_fill(P.abs().sum(-1) == 0, math.nan)
    return entropy.nanmean(0) if per_query else entropy.nanmean((0, 2))


def mean_attended_distance(P: Tensor) -> Tensor:
    """Mean attended distance per head: ``d_i = Σ_j |w_ij| (i − j) / Σ_j |w_ij|``, averaged over batch and queries.

    i is the query's absolute position (bottom-right alignment), so a sub-diagonal (previous-token) head has
    distance 1 and a first-token sink at query i has distance i. Magnitudes make it defined for signed and
    unnormalised rows; rows with no mass are skipped. For a non-causal pattern (i − j) can be negative.
    """
    _check(P)
    w = P.abs()
    distance = (_query_positions(P)[:, None] - torch.arange(P.shape[-1], device=P.device)[None, :]).to(P.dtype)
    mass = w.sum(-1)  # [B, H, Tq]
    d = (w * distance).sum(-1) / mass
    return d.masked_fill(mass == 0, math.nan).nanmean((0, 2))


def windowed_attention_distance(P: Tensor, window: int) -> Tensor:
    """Windowed average attention distance (WAAD) of every query: ``Σ_j p_ij · min(i − j, W)``, [B, H, Tq].

    Li et al. 2025, "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables Fine-Grained Policy
    Optimization" (arXiv:2510.13554, §3): how far back a token looks, with distances clipped at the window W so a
    few far keys (a first-token sink) do not dominate; locally focused heads give small values with a sawtooth
    across phrase boundaries. ``p`` is ``row_normalise``'s L1-normalised row (magnitudes for signed rows); i is the
    query's absolute position (bottom-right alignment); a row with no mass is NaN. Per query, not averaged: the
    paper reads it along the sequence.
    """
    _check(P)
    if window < 1:
        raise ValueError(f"window={window}: must be at least 1")
    p = row_normalise(P).abs()
    distance = _query_positions(P)[:, None] - torch.arange(P.shape[-1], device=P.device)[None, :]
    clipped = distance.clamp(min=0, max=window).to(P.dtype)  # keys after the query (non-causal) count as 0
    waad = (p * clipped).sum(-1)
    return waad.masked_fill(P.abs().sum(-1) == 0, math.nan)


def future_attention_influence(P: Tensor) -> Tensor:
    """Future attention influence (FAI) of every key: the mean weight it receives from the queries after it,
    ``(1 / |{i > j}|) Σ_{i > j} p_ij``, [B, H, Tk].

    Li et al. 2025 (arXiv:2510.13554, §3): a token's global importance for what follows, read off globally focused
    heads (its anchors receive attention long after they appear). ``p`` as in ``windowed_attention_distance``; a key
    that no later query sees (the last one) is NaN. Unlike ``sink_scores``, the key's own query is excluded.
    """
    _check(P)
    p = row_normalise(P).abs()
    later = _query_positions(P)[:, None] > torch.arange(P.shape[-1], device=P.device)[None, :]  # [Tq, Tk]
    count = later.sum(0).to(P.dtype)  # [Tk]
    total = (p * later.to(P.dtype)).sum(-2)  # [B, H, Tk]
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def negative_mass(P: Tensor) -> Tensor:
    """Share of a head's attention mass that is negative: ``Σ max(−w, 0) / Σ |w|`` over batch, queries, keys.

    0 for softmax and sigmoid; positive for signed mechanisms (Cog, differential attention).
    """
    _check(P)
    return (-P).clamp_min(0).sum((0, 2, 3)) / P.abs().sum((0, 2, 3))


def head_output_norm(z: Tensor) -> Tensor:
    """Mean L2 norm of each head's output ``z`` [B, H, T, d] (``hook_z``, before the output projection), [H]."""
    if z.dim() != 4:
        raise ValueError(f"z must be [batch, head, time, d_head]; got shape {tuple(z.shape)}")
    return z.norm(dim=-1).mean((0, 2))


def head_table(
    patterns: Mapping[int, Tensor],
    *,
    z: Mapping[int, Tensor] | None = None,
    tokens: Tensor | None = None,
    seq_half: int | None = None,
    sink_key: int = 0,
    sink_eps: float = 0.3,
    hidden_threshold: float = 0.1,
    sort_by: str | None = None,
) -> list[dict]:
    """One row per (layer, head): ``{"layer", "head", "sink_score", "sink_rate", "hidden_sinks", "entropy",
    "distance", "negative_mass", "previous_token"}``, plus ``"induction"`` with ``seq_half``, ``"duplicate"``
    with ``tokens`` and ``"output_norm"`` with ``z`` ({layer: hook_z}).

    ``sink_rate`` is this head's share of samples with α_{sink_key} > ``sink_eps`` (Sink_k of a single head);
    ``hidden_sinks`` lists key positions. Values are plain floats / ints; ``sort_by`` names a column to sort by,
    largest first.
    """
    rows: list[dict] = []
    for layer, P in sorted(patterns.items()):
        columns = {
            "sink_score": sink_scores(P, sink_key),
            "sink_rate": (_alpha(P)[..., sink_key] > sink_eps).to(P.dtype).mean(0),
            "entropy": attention_entropy(P),
            "distance": mean_attended_distance(P),
            "negative_mass": negative_mass(P),
            "previous_token": previous_token_score(P),
        }
        if seq_half is not None:
            columns["induction"] = induction_score(P, seq_half)
        if tokens is not None:
            columns["duplicate"] = duplicate_token_score(P, tokens)
        if z is not None:
            columns["output_norm"] = head_output_norm(z[layer])
        sink_idx, _ = hidden_sinks(P, hidden_threshold)
        for head in range(P.shape[1]):
            row: dict = {"layer": layer, "head": head}
            row.update({name: float(values[head]) for name, values in columns.items()})
            row["hidden_sinks"] = sink_idx[sink_idx[:, 0] == head, 1].tolist()
            rows.append(row)
    if sort_by is not None:
        if not rows or sort_by not in rows[0]:
            raise KeyError(f"sort_by={sort_by!r} is not a column; columns: {sorted(rows[0]) if rows else []}")
        rows.sort(key=lambda r: r[sort_by], reverse=True)
    return rows
