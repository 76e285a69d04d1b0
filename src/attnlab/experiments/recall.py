"""Memory against context in factual recall: answer rates, the heads that decide, and the rates after editing them.

On counterfactual prompts (``attnlab.experiments.prompts.recall``: "The capital of Poland is London. The capital
of Poland is") a model answers from memory (" Warsaw") or from the context (" London"). Jin et al. 2024, "Cutting
Off the Head Ends the Conflict" (arXiv:2402.18154), find *memory heads* and *context heads* whose pruning moves
this choice either way; Yu, Merullo & Pavlick 2023 (arXiv:2310.15910) find heads whose output decides it and
scale them. Here, on the prompts used for selection:

- **rates**: the fraction of prompts whose top-1 next token is the memory answer, the context answer or neither,
  and the mean logit difference ``logit(memory) − logit(context)`` at the last token, with and without the
  counterfactual sentence (the bare query: "The capital of Poland is");
- **activation patching** of ``hook_z`` per head at the last token: the with-context run with one head's output
  at the last position taken from the bare run (same query, no context), normalised so 0 is the with-context
  run's logit difference and 1 the bare run's. The two runs have different lengths, so only the last position
  (the one that predicts the answer) is patched: the source is the with-context run with that position replaced;
- **direct logit attribution** of every head along ``W_U[memory] − W_U[context]`` on the with-context run
  (``attnlab.lens.attribution``): positive heads push the memory answer, negative ones the context answer.

The *memory heads* are the ``top`` heads with the largest positive attribution, the *context heads* those with the
most negative one (a signed, direct measure; a positive patching score says only that the head's output with the
context differs from its output without, in a way that moves the answer to the context: a head through which the
context acts, or one that recalls the fact when no context competes). ``edit_rates`` then measures prompts that
were not used to select them (held-out facts) with each set zero-ablated or scaled
(``attnlab.lens.interventions.scale_heads``), and with as many random heads ablated as a control.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.ioi import length_chunks, top_heads
from attnlab.experiments.prompts.recall import Fact, RecallPrompts, bare_tokens
from attnlab.lens.attribution import attribution_names, direct_logit_attribution
from attnlab.lens.capture import run_with_cache
from attnlab.lens.interventions import Head, scale_heads, z_hook_name
from attnlab.lens.patching import activation_patching, logit_diff, logit_diff_metric, normalised
from attnlab.lens.residual import at_position


@dataclass(frozen=True)
class Rates:
    """Top-1 answer rates over ``n`` prompts and the mean logit difference memory − context."""

    n: int
    memory: float
    context: float
    logit_diff: float

    @property
    def other(self) -> float:
        """The fraction whose top-1 token is neither answer."""
        return 1.0 - self.memory - self.context


@dataclass(frozen=True)
class Edit:
    """One intervention: ``heads`` scaled by ``coef`` (0 = zero-ablation); no heads = the unedited model."""

    label: str
    heads: tuple[Head, ...] = ()
    coef: float = 0.0

    def applied(self, model: nn.Module) -> Any:
        """The context manager that runs ``model`` with the edit."""
        return scale_heads(model, dict.fromkeys(self.heads, self.coef)) if self.heads else nullcontext()


def _counts(logits_at: Tensor, memory: Tensor, counter: Tensor) -> tuple[float, float, float]:
    """(top-1 = memory count, top-1 = context count, Σ logit diff) of logits [B, V] at the answer position."""
    top = logits_at.argmax(-1)
    diff = logits_at.gather(1, memory[:, None]) - logits_at.gather(1, counter[:, None])
    return float((top == memory).sum()), float((top == counter).sum()), float(diff.sum())


def _rates(parts: Iterator[tuple[Tensor, Tensor, Tensor]], n: int) -> Rates:
    sums = [0.0, 0.0, 0.0]
    for logits_at, memory, counter in parts:
        sums = [s + c for s, c in zip(sums, _counts(logits_at, memory, counter), strict=True)]
    return Rates(n=n, memory=sums[0] / n, context=sums[1] / n, logit_diff=sums[2] / n)


@torch.no_grad()
def recall_rates(model: nn.Module, prompts: RecallPrompts, bare: bool = False, prompt_batch: int = 16) -> Rates:
    """The answer rates on the context prompts (or, ``bare=True``, on the queries alone)."""

    def parts() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for part in length_chunks(prompts, prompt_batch):
            tokens, end = (part.bare, part.bare_end) if bare else (part.context, part.end)
            yield at_position(model(tokens), end, 1), part.memory, part.counter

    return _rates(parts(), len(prompts))


@torch.no_grad()
def known_facts(
    model: nn.Module, tokenizer: Any, facts: Sequence[Fact], bos: int | None = None, pad: int = 0, batch: int = 32
) -> list[Fact]:
    """The facts whose bare query the model answers with the true answer as its top-1 token, in order."""
    from attnlab.experiments.prompts.recall import answer_token

    kept = []
    for start in range(0, len(facts), batch):
        group = list(facts[start : start + batch])
        tokens, end = bare_tokens(tokenizer, group, bos, pad)
        top = at_position(model(tokens), end, 1).argmax(-1)
        kept += [f for f, t in zip(group, top.tolist(), strict=True) if t == answer_token(tokenizer, f.answer)]
    return kept


@dataclass(frozen=True)
class RecallCircuit:
    """What ``recall_circuit`` measured on the selection prompts; grids are [layers, heads] means."""

    bare: Rates
    context: Rates
    patching: Tensor  # normalised: 0 = with context, 1 = bare query (last position patched)
    attribution: Tensor  # DLA of logit(memory) − logit(context), with context
    n_patched: int  # prompts the patching averaged over
    seconds: dict[str, float] = field(default_factory=dict)

    def heads(self, top: int) -> tuple[list[Head], list[Head]]:
        """(memory heads, context heads): the ``top`` heads whose attribution is most positive (they write the
        memory answer over the context one) and most negative (the reverse)."""
        grid = self.attribution
        return top_heads(grid.where(grid > 0, torch.nan), top), top_heads(grid.where(grid < 0, torch.nan), top, False)

    def restoring(self, top: int) -> list[Head]:
        """The ``top`` heads whose last-position output from the query alone moves the answer most towards memory
        (largest positive patching score): the heads through which the context acts, or that recall the fact."""
        return top_heads(self.patching.where(self.patching > 0, torch.nan), top)


def check_settings(batch_size: int, prompt_batch: int, top: int, patch_prompts: int | None = None) -> None:
    """ConfigError unless every setting is at least 1 (``patch_prompts``: 0 allowed, no patching)."""
    for name, value in (("batch_size", batch_size), ("prompt_batch", prompt_batch), ("top", top)):
        if value < 1:
            raise ConfigError(name, value, "must be at least 1")
    if patch_prompts is not None and patch_prompts < 0:
        raise ConfigError("patch_prompts", patch_prompts, "must be at least 0")


def spliced_source(context_z: Tensor, bare_z: Tensor, end: Tensor, bare_end: Tensor) -> Tensor:
    """The with-context ``hook_z`` [B, H, T, d] with each prompt's last position taken from the bare run's."""
    rows = torch.arange(context_z.shape[0])
    out = context_z.clone()
    out[rows, :, end] = bare_z[rows, :, bare_end].to(out.dtype)
    return out


@torch.no_grad()
def recall_circuit(
    model: nn.Module,
    prompts: RecallPrompts,
    batch_size: int = 16,
    prompt_batch: int = 8,
    patch_prompts: int | None = None,
) -> RecallCircuit:
    """Rates, per-head patching (on the first ``patch_prompts`` prompts; None = all) and attribution."""
    check_settings(batch_size, prompt_batch, 1, patch_prompts)
    if not len(prompts):
        raise ConfigError("prompts", 0, "needs at least one prompt")
    z_names = [z_hook_name(layer) for layer in range(len(model.blocks))]
    names = sorted(set(attribution_names(model)) | set(z_names))
    n, n_patch = len(prompts), len(prompts) if patch_prompts is None else min(patch_prompts, len(prompts))
    seconds = {"runs": 0.0, "patching": 0.0}
    attribution: Tensor | float = 0.0
    patched: Tensor | float = 0.0
    bare_parts, context_parts = [], []
    patched_bare = patched_context = 0.0
    for start in range(0, n, prompt_batch):  # in order, so that the first n_patch prompts are the patched ones
        part = prompts.select(range(start, min(start + prompt_batch, n)))
        t0 = time.perf_counter()
        bare_logits, bare = run_with_cache(model, part.bare, z_names)
        context_logits, context = run_with_cache(model, part.context, names)
        bare_parts.append((at_position(bare_logits, part.bare_end, 1), part.memory, part.counter))
        context_parts.append((at_position(context_logits, part.end, 1), part.memory, part.counter))
        attribution = attribution + direct_logit_attribution(
            model, context, part.memory, part.counter, part.end
        ).heads.sum(0)
        seconds["runs"] += time.perf_counter() - t0
        rows = torch.arange(max(0, min(len(part), n_patch - start)))
        if len(rows) < 1:
            continue
        t0 = time.perf_counter()
        memory, counter, end, bare_end = part.memory[rows], part.counter[rows], part.end[rows], part.bare_end[rows]
        base = {name: act[rows] for name, act in context.items()}
        source = {name: spliced_source(base[name], bare[name][rows], end, bare_end) for name in z_names}
        metric = logit_diff_metric(memory, counter, end)
        grid = activation_patching(model, part.context[rows], source, metric, "z", "head", batch_size, base)
        patched = patched + len(rows) * grid
        patched_bare += float(logit_diff(bare_logits[rows], memory, counter, bare_end).sum())
        patched_context += float(logit_diff(context_logits[rows], memory, counter, end).sum())
        seconds["patching"] += time.perf_counter() - t0
    assert isinstance(attribution, Tensor)
    if isinstance(patched, Tensor):
        patching = normalised(patched / n_patch, patched_bare / n_patch, patched_context / n_patch)
    else:
        patching = torch.full_like(attribution, torch.nan)
    return RecallCircuit(
        bare=_rates(iter(bare_parts), n),
        context=_rates(iter(context_parts), n),
        patching=patching,
        attribution=attribution / n,
        n_patched=n_patch,
        seconds=seconds,
    )


def head_edits(sets: dict[str, Sequence[Head]], scales: Sequence[float], random: Sequence[Head] = ()) -> list[Edit]:
    """The interventions a command measures: none, then each named head set scaled by each coefficient (0 =
    ablated), then ``random`` heads ablated (the control: as many heads, drawn without the selected ones)."""
    out = [Edit("none")]
    for name, heads in sets.items():
        for coef in scales:
            label = f"ablate {name} heads" if coef == 0 else f"{name} heads × {coef:g}"
            out += [Edit(label, tuple(heads), float(coef))] if heads else []
    if random:
        out.append(Edit(f"ablate {len(random)} random heads", tuple(random), 0.0))
    return out


@torch.no_grad()
def edit_rates(
    model: nn.Module, prompts: RecallPrompts, edits: Sequence[Edit], prompt_batch: int = 16
) -> list[tuple[Edit, Rates, Rates]]:
    """Per edit: (edit, rates with context, rates on the bare queries), measured with the edit applied."""
    out = []
    for edit in edits:
        with edit.applied(model):
            out.append(
                (
                    edit,
                    recall_rates(model, prompts, False, prompt_batch),
                    recall_rates(model, prompts, True, prompt_batch),
                )
            )
    return out
