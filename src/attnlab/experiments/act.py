"""ACT: at inference, move part of the attention that hidden sinks receive back to the other tokens.

Yu, Wang, Fu, Shi, Shaikh, Lin, "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models
without Training through Attention Calibration" (ICML 2024, arXiv:2406.15765); code ``GATECH-EIC/ACT``
(``models/llama_modelling_aug.py``: ``atten_process_eval``; ``scripts/evaluation.sh``: β = 0.4, τ = 0.1).

For a selected head with post-softmax pattern ``A`` [Tq, Tk] (computed afresh for every input)::

    α_k = Σ_t A[t, k] / (number of queries that see k)        (metrics.hidden_sinks; the authors' column score)
    S   = {k ≥ 1 : α_k > τ}                                    hidden sinks (the first token is kept as it is)
    A'[t, k] = β · A[t, k]                                     for k ∈ S
    A'[t, j] = A[t, j] + (1 − β) · Σ_{k∈S} A[t, k] · A[t, j] / Σ_{i∉S} A[t, i]    for j ∉ S

Rows keep their sum (1 for softmax); the mass taken from the sinks goes to the other tokens in proportion to their
weights. A row with no mass outside S is left unchanged (nothing to give the mass to). Then ``z = A' V``.

How it is wired. attnlab's attention computes ``z = A V`` *before* calling ``hook_pattern``, so replacing the
pattern in a hook would not change ``z``. ``act_calibration`` therefore hooks three points of a calibrated layer:
``hook_v`` (records V), ``hook_pattern`` (returns A', so later hooks and captures see the calibrated pattern) and
``hook_z`` (replaces the calibrated heads' slices by ``A' · repeat_kv(V)``; other heads untouched). Hooking the
pattern makes that layer use the reference attention, whose output is exactly ``A V``; ``check_calibratable``
refuses layers where that is not so (heads, normalisers or positions with their own ``attend``, normalisers that
are not row-stochastic). Full forward passes only: with a KV cache ``hook_v`` holds only the new values.

Differences from the authors' code: (1) they drop the *first qualifying* column (``indices[1:]``), which is key 0
only when key 0 passes τ; here key 0 is never a hidden sink (``hidden_sinks``' convention). (2) They apply it to
batch element 0; here every sequence of the batch gets its own S. (3) The head lists: the authors try each head of
layers ≥ 2 alone on a calibration set and keep those that improve accuracy; ``search_heads`` does that with a loss
given by the caller. Third-party summaries describe the sink criterion as "attention > α/N"; that is unverified
against the paper text (arXiv:2406.15765, which was not read here), so the code's fixed τ on the column score is
used (``threshold``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import Tensor, nn

from attnlab.attention.core import repeat_kv
from attnlab.attention.normalisers import NORMALISERS
from attnlab.errors import ConfigError
from attnlab.experiments.tables import cell
from attnlab.hook_points import capture, hooks
from attnlab.lens.interventions import Head, check_heads, model_heads
from attnlab.lens.losses import text_loss
from attnlab.lens.metrics import hidden_sinks

BETA = 0.4  # scripts/evaluation.sh
THRESHOLD = 0.1


def _check_params(beta: float, threshold: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ConfigError("beta", beta, "must be in [0, 1] (the share of a sink's attention it keeps)")
    if threshold <= 0.0:
        raise ConfigError("threshold", threshold, "must be > 0")


def sink_mask(
    P: Tensor, threshold: float = THRESHOLD, exclude_last: int = 0, causal: bool = True, heads: Iterable[int] = ()
) -> Tensor:
    """Hidden sinks per sequence and head: bool [B, H, Tk], True at key k ≥ 1 with α_k > ``threshold``.

    ``P`` [B, H, Tq, Tk]. α_k is ``metrics.hidden_sinks``' column score, computed for each sequence of the batch
    on its own (as ACT does for its input). Only the heads listed in ``heads`` can have sinks (all others False).
    """
    if P.dim() != 4:
        raise ValueError(f"P must be a pattern [batch, head, q, k]; got shape {tuple(P.shape)}")
    mask = torch.zeros(P.shape[0], P.shape[1], P.shape[-1], dtype=torch.bool, device=P.device)
    wanted = torch.zeros(P.shape[1], dtype=torch.bool, device=P.device)
    wanted[list(heads)] = True
    if not wanted.any():
        return mask
    for b in range(P.shape[0]):
        idx, _ = hidden_sinks(P[b : b + 1], threshold=threshold, exclude_last=exclude_last, causal=causal)
        mask[b, idx[:, 0], idx[:, 1]] = True
    return mask & wanted[None, :, None]


def calibrate_pattern(P: Tensor, sinks: Tensor, beta: float = BETA) -> Tensor:
    """ACT's calibrated pattern (module docstring): sink columns × β, the freed mass spread proportionally.

    ``P`` [B, H, Tq, Tk]; ``sinks`` bool [B, H, Tk] (``sink_mask``). Row sums are preserved; rows with no sink
    mass are returned unchanged, as are rows with all their mass on sinks.
    """
    _check_params(beta, THRESHOLD)
    if sinks.shape != (P.shape[0], P.shape[1], P.shape[-1]):
        raise ValueError(
            f"sinks must be [B, H, Tk] = {(P.shape[0], P.shape[1], P.shape[-1])}; got {tuple(sinks.shape)}"
        )
    cols = sinks[:, :, None, :]  # [B, H, 1, Tk]
    sink_mass = (P * cols).sum(-1, keepdim=True)  # [B, H, Tq, 1]
    rest = P.masked_fill(cols, 0.0)
    rest_mass = rest.sum(-1, keepdim=True)
    share = rest / rest_mass.clamp_min(torch.finfo(P.dtype).tiny)
    keep = torch.where(cols, torch.full_like(P[..., :1, :], beta), torch.ones_like(P[..., :1, :]))
    out = P * keep + (1.0 - beta) * sink_mass * share
    return torch.where(rest_mass > 0, out, P)


def check_calibratable(model: nn.Module, layer: int) -> None:
    """ConfigError unless layer ``layer`` computes ``z = pattern · repeat_kv(V)`` from a row-stochastic pattern."""
    attn = model.get_submodule(f"blocks.{layer}.attn")
    reasons = []
    for part in ("heads", "normaliser", "position"):
        if hasattr(getattr(attn, part, None), "attend"):
            reasons.append(f"its {part} computes the attention itself")
    if getattr(attn.site, "cross", False):
        reasons.append("it is cross-attention")
    norm = attn.cfg.normaliser_at(attn.site)
    if not NORMALISERS.capabilities(norm).row_stochastic:
        reasons.append(f"normaliser {norm!r} is not row-stochastic")
    if reasons:
        raise ConfigError(
            "layer", layer, "ACT needs softmax-like attention whose output is pattern · V: " + "; ".join(reasons)
        )


def _is_causal(attn: nn.Module) -> bool:
    """Whether a layer's queries see only earlier keys (self-attention with a causal mask): ``hidden_sinks`` then
    averages a key's column over the queries that can see it."""
    return bool(attn.site.causal) and not bool(attn.site.cross)


def _as_layer_heads(model: nn.Module, heads: Mapping[int, Sequence[int]] | Sequence[Head]) -> dict[int, list[int]]:
    pairs = [(layer, h) for layer, hs in heads.items() for h in hs] if isinstance(heads, Mapping) else list(heads)
    out: dict[int, list[int]] = {}
    for layer, h in check_heads(model, pairs):
        out.setdefault(layer, [])
        if h not in out[layer]:
            out[layer].append(h)
    return out


@dataclass
class ActStats:
    """Counts gathered while calibrating: per head, forward passes seen and hidden-sink columns calibrated."""

    calls: dict[Head, int] = field(default_factory=dict)
    sinks: dict[Head, int] = field(default_factory=dict)

    def add(self, layer: int, heads: Sequence[int], mask: Tensor) -> None:
        """Count one forward pass of ``layer``: ``mask`` [B, H, Tk] marks the sinks found for each sequence."""
        per_head = mask.sum((0, 2))
        for h in heads:
            self.calls[(layer, h)] = self.calls.get((layer, h), 0) + mask.shape[0]
            self.sinks[(layer, h)] = self.sinks.get((layer, h), 0) + int(per_head[h])

    def total_sinks(self) -> int:
        """Sink columns calibrated, summed over heads, sequences and forward passes."""
        return sum(self.sinks.values())


@contextmanager
def act_calibration(
    model: nn.Module,
    heads: Mapping[int, Sequence[int]] | Sequence[Head],
    beta: float = BETA,
    threshold: float = THRESHOLD,
    exclude_last: int = 0,
    stats: ActStats | None = None,
) -> Iterator[ActStats]:
    """Run ``model`` with ACT on the given heads ({layer: [head, ...]} or [(layer, head), ...]).

    Yields an ``ActStats`` (the one passed in, or a new one) counting the sinks calibrated.
    """
    _check_params(beta, threshold)
    by_layer = _as_layer_heads(model, heads)
    for layer in by_layer:
        check_calibratable(model, layer)
    stats = stats if stats is not None else ActStats()
    fns: dict[str, Callable[[Tensor], Tensor | None]] = {}
    for layer, hs in by_layer.items():
        attn = model.get_submodule(f"blocks.{layer}.attn")
        causal = _is_causal(attn)
        state: dict[str, Tensor] = {}

        def on_v(v: Tensor, state: dict = state) -> None:
            state["v"] = v

        def on_pattern(P: Tensor, state: dict = state, hs: list = hs, causal: bool = causal, layer: int = layer):
            mask = sink_mask(P.detach(), threshold, exclude_last, causal, hs)
            stats.add(layer, hs, mask)
            state["pattern"] = calibrate_pattern(P, mask, beta)
            return state["pattern"]

        def on_z(z: Tensor, state: dict = state, hs: list = hs, layer: int = layer) -> Tensor:
            P, v = state.pop("pattern", None), state.pop("v", None)
            if P is None or v is None:
                raise ConfigError("layer", layer, "ACT saw no attention pattern / values in this forward pass")
            if v.shape[2] != P.shape[-1]:
                raise ConfigError("cache", "KV cache", "ACT needs a full forward pass (no KV cache)")
            v = repeat_kv(v, P.shape[1] // v.shape[1])
            idx = torch.tensor(hs, device=z.device)
            z = z.clone()
            z[:, idx] = (P[:, idx] @ v[:, idx].to(P.dtype)).to(z.dtype)
            return z

        fns[f"blocks.{layer}.attn.hook_v"] = on_v
        fns[f"blocks.{layer}.attn.hook_pattern"] = on_pattern
        fns[f"blocks.{layer}.attn.hook_z"] = on_z
    with hooks(model, fns):
        yield stats


@torch.no_grad()
def sink_heads(
    model: nn.Module,
    tokens: Tensor,
    threshold: float = THRESHOLD,
    min_layer: int = 2,
    exclude_last: int = 0,
) -> list[Head]:
    """Heads of layers ≥ ``min_layer`` with at least one hidden sink on some sequence of ``tokens`` [B, T].

    ACT changes nothing in a head without hidden sinks, so these are the only candidates worth trying (the
    authors start from layer 2). Layers that ``check_calibratable`` refuses are skipped.
    """
    counts = model_heads(model)
    layers = []
    for layer in sorted(counts):
        if layer < min_layer:
            continue
        try:
            check_calibratable(model, layer)
        except ConfigError:
            continue
        layers.append(layer)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    with capture(model, names) as cache:
        model(tokens)
    out = []
    for layer in layers:
        attn = model.get_submodule(f"blocks.{layer}.attn")
        causal = _is_causal(attn)
        P = cache[f"blocks.{layer}.attn.hook_pattern"]
        mask = sink_mask(P, threshold, exclude_last, causal, range(P.shape[1]))
        out += [(layer, int(h)) for h in mask.any(-1).any(0).nonzero().flatten().tolist()]
    return out


def search_heads(
    model: nn.Module,
    candidates: Sequence[Head],
    loss: Callable[[], float],
    beta: float = BETA,
    threshold: float = THRESHOLD,
    exclude_last: int = 0,
    min_gain: float = 0.0,
    on_head: Callable[[Head, float], None] | None = None,
) -> tuple[float, list[tuple[Head, float]]]:
    """ACT's head search: calibrate each candidate head alone; keep those that lower ``loss()`` by > ``min_gain``.

    ``loss`` evaluates the model on the calibration set (lower is better). Returns (the loss without calibration,
    [(head, loss with that head alone calibrated), ...] for the kept heads, best first). The authors do this per
    head of layers 2..L−1 on a calibration set with task accuracy; ``on_head(head, loss)`` reports each trial.
    """
    base = loss()
    kept = []
    for head in candidates:
        with act_calibration(model, [head], beta, threshold, exclude_last):
            value = loss()
        if on_head is not None:
            on_head(head, value)
        if value < base - min_gain:
            kept.append((head, value))
    return base, sorted(kept, key=lambda x: x[1])


# --------------------------------------------------------------------------------------------------- the experiment
@dataclass
class ActResult:
    """ACT on real text: loss on calibration and held-out chunks, without calibration and with two head sets."""

    beta: float
    threshold: float
    exclude_last: int
    calib_shape: tuple[int, int]
    heldout_shape: tuple[int, int]
    candidates: list[Head]
    selected: list[tuple[Head, float]]
    rows: list[tuple[str, list[Head], float, float, int]]  # label, heads, calibration loss, held-out loss, sinks

    def table(self) -> Table:
        """One row per head set: calibration and held-out loss, held-out perplexity and its change, sinks moved."""
        (nc, tc), (nh, th) = self.calib_shape, self.heldout_shape
        t = Table(
            title=f"ACT on real text (pydoc_data): calibration {nc}×{tc} tokens, held-out {nh}×{th}",
            caption=f"β = {self.beta:g}, τ = {self.threshold:g}, last {self.exclude_last} keys never sinks; "
            "losses in nats/token",
            title_justify="left",
            caption_justify="left",
        )
        for col in ("heads calibrated", "count", "calib loss", "held-out loss", "held-out ppl", "Δ held-out", "sinks"):
            t.add_column(col, justify="left" if col == "heads calibrated" else "right")
        base = self.rows[0][3]
        for label, heads, calib, held, sinks in self.rows:
            t.add_row(
                cell(label),
                str(len(heads)),
                f"{calib:.4f}",
                f"{held:.4f}",
                f"{math.exp(held):.3f}",
                f"{held - base:+.4f}",
                str(sinks),
            )
        return t


def act_experiment(
    model: nn.Module,
    calib_tokens: Tensor,
    heldout_tokens: Tensor,
    *,
    beta: float = BETA,
    threshold: float = THRESHOLD,
    min_layer: int = 2,
    exclude_last: int = 0,
    max_candidates: int | None = None,
    search: bool = True,
    on_head: Callable[[Head, float], None] | None = None,
) -> ActResult:
    """ACT's protocol on next-token loss: candidate heads = heads of layers ≥ ``min_layer`` with a hidden sink on
    the calibration chunks; each is calibrated alone and kept if it lowers the calibration loss
    (``search_heads``); then held-out loss without calibration, with every candidate, and with the kept heads.

    ``max_candidates`` keeps only the first candidates (layer order) to bound the time (None: all).
    ``exclude_last`` keys at the end are never sinks (their column score averages over very few queries; the
    authors use 0).
    """
    _check_params(beta, threshold)
    if exclude_last < 0:
        raise ConfigError("exclude_last", exclude_last, "must be >= 0")
    candidates = sink_heads(model, calib_tokens, threshold, min_layer, exclude_last)
    if max_candidates is not None:
        candidates = candidates[: max(0, max_candidates)]

    def calib_loss() -> float:
        return text_loss(model, calib_tokens)

    def measured(heads: Sequence[Head]) -> tuple[float, float, int]:
        if not heads:
            return calib_loss(), text_loss(model, heldout_tokens), 0
        with act_calibration(model, heads, beta, threshold, exclude_last) as stats:
            c = calib_loss()
            h = text_loss(model, heldout_tokens)
        return c, h, stats.total_sinks()

    rows = [("none", [], *measured([]))]
    selected: list[tuple[Head, float]] = []
    if candidates:
        rows.append(("every head with a hidden sink", list(candidates), *measured(candidates)))
    if search and candidates:
        _, selected = search_heads(model, candidates, calib_loss, beta, threshold, exclude_last, on_head=on_head)
        chosen = [h for h, _ in selected]
        rows.append(("heads kept by the search", chosen, *measured(chosen)))
    return ActResult(
        beta,
        threshold,
        exclude_last,
        tuple(calib_tokens.shape),
        tuple(heldout_tokens.shape),
        list(candidates),
        selected,
        rows,
    )
