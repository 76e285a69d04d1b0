"""The IOI circuit of a model, found with the lens: logit difference, patching, attribution and the head classes.

Wang et al. 2023, "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small"
(arXiv:2211.00593). On IOI prompts (``attnlab.experiments.prompts.ioi``) the metric is the logit difference
``logit(IO) − logit(S)`` at the last token. ``ioi_circuit`` measures, over every head:

- **activation patching** of ``hook_z`` per head (``attnlab.lens.patching``): the corrupted run with that head's
  clean output written in, normalised so 0 is the corrupted run and 1 the clean one;
- **direct logit attribution** (``attnlab.lens.attribution``): each head's write at the last token, along
  ``W_U[IO] − W_U[S]`` through the final norm frozen from the clean run;
- **attention** from the last token to the IO, to S1 and to S2, and from S2 to S1 (the clean patterns);
- **path patching via q** (``attnlab.lens.path_patching``): each head's corrupted output sent only into the name
  movers' queries, as the change of the logit difference relative to the clean one (§3.2 of the paper).

and names the paper's classes (and one more) by their signatures (at most ``top`` heads each):

- *name movers*: positive attribution, and from the last token they attend to the IO more than to S (S1 and S2
  together), with at least ``min_attention`` of their weight;
- *negative name movers*: the same attention with a negative attribution (they write against the IO);
- *S suppression*: positive attribution while attending from the last token to S (S1 and S2) more than to the
  IO, with at least ``min_attention`` of their weight (they write against the name they read, like the copy
  suppression head of McDougall et al. 2023, arXiv:2310.04625; not a class of the IOI paper);
- *S-inhibition*: the heads whose path into the name movers' queries lowers the logit difference most, by at
  least ``min_effect`` of it;
- *duplicate-token*: the heads that attend from S2 to S1 with at least ``min_attention`` of their weight.

Prompts run in groups of ``prompt_batch`` of similar lengths; ``batch_size`` patched copies share each forward
pass, so one pass holds ``batch_size · prompt_batch`` sequences (and their logits over the whole vocabulary).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import IOIPrompts
from attnlab.lens.attribution import attribution_names, direct_logit_attribution
from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.interventions import Head, head_label
from attnlab.lens.patching import activation_patching, logit_diff, logit_diff_metric, normalised, patching_names
from attnlab.lens.path_patching import path_patch_heads, path_patching_names

CLASSES = ("name mover", "negative name mover", "S suppression", "S-inhibition", "duplicate-token")


@dataclass(frozen=True)
class IOIResult:
    """Everything ``ioi_circuit`` measured; every grid is [layers, heads], averaged over the prompts."""

    n_prompts: int
    clean_diff: float  # mean logit(IO) − logit(S), clean prompts
    corrupted_diff: float  # the same ids on the corrupted prompts
    accuracy: float  # fraction of clean prompts with logit(IO) > logit(S)
    patching: Tensor  # normalised: 0 = corrupted, 1 = clean
    attribution: Tensor  # direct logit attribution at the last token
    attention_io: Tensor  # last token → IO
    attention_s1: Tensor  # last token → S1
    attention_s2: Tensor  # last token → S2
    attention_s2_s1: Tensor  # S2 → S1
    path_q: Tensor  # (path-patched − clean) / |clean| via the receivers' (name movers') q; NaN: no path
    classes: dict[str, list[Head]]
    seconds: dict[str, float] = field(default_factory=dict)

    def head_class(self, head: Head) -> str:
        """The classes a head was put in, joined by "/" ("" for none)."""
        return "/".join(name for name in CLASSES if head in self.classes[name])

    def rows(self) -> list[dict]:
        """One row per head (the CSV): every grid's value and the head's classes."""
        n_layers, n_heads = self.patching.shape
        out = []
        for layer in range(n_layers):
            for h in range(n_heads):
                out.append(
                    {
                        "head": head_label((layer, h)),
                        "layer": layer,
                        "index": h,
                        "patching": float(self.patching[layer, h]),
                        "attribution": float(self.attribution[layer, h]),
                        "attention_end_io": float(self.attention_io[layer, h]),
                        "attention_end_s1": float(self.attention_s1[layer, h]),
                        "attention_end_s2": float(self.attention_s2[layer, h]),
                        "attention_s2_s1": float(self.attention_s2_s1[layer, h]),
                        "path_patching_q": float(self.path_q[layer, h]),
                        "class": self.head_class((layer, h)),
                    }
                )
        return out


def top_heads(grid: Tensor, k: int, descending: bool = True) -> list[Head]:
    """The ``k`` heads with the largest (or smallest) values of a [L, H] grid; NaN never ranks."""
    flat = grid.flatten().clone()
    flat[flat.isnan()] = -float("inf") if descending else float("inf")
    order = flat.argsort(descending=descending)[:k]
    n_heads = grid.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order if flat[i].isfinite()]


class Chunkable(Protocol):
    """A prompt set with a last position per prompt and a ``select(rows)`` (``IOIPrompts``, ``RecallPrompts`` ...)."""

    end: Tensor

    def __len__(self) -> int: ...
    def select(self, rows: Sequence[int]) -> Self: ...


P = TypeVar("P", bound=Chunkable)


def length_chunks(prompts: P, size: int) -> Iterator[P]:
    """Groups of ``size`` prompts of similar lengths (sorted by length: less padding to compute)."""
    rows = sorted(range(len(prompts)), key=lambda i: int(prompts.end[i]))
    for start in range(0, len(rows), size):
        yield prompts.select(rows[start : start + size])


def _pick(pattern: Tensor, query: Tensor, key: Tensor) -> Tensor:
    """pattern [B, H, T, T] at (query[b], key[b]) per prompt → [B, H]."""
    rows = torch.arange(pattern.shape[0])
    return pattern[rows, :, query, key]


def _pattern_names(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]


def check_settings(batch_size: int, prompt_batch: int, top: int) -> None:
    """ConfigError unless every setting is at least 1."""
    for name, value in (("batch_size", batch_size), ("prompt_batch", prompt_batch), ("top", top)):
        if value < 1:
            raise ConfigError(name, value, "must be at least 1")


@torch.no_grad()
def ioi_circuit(
    model: nn.Module,
    prompts: IOIPrompts,
    batch_size: int = 16,
    prompt_batch: int = 8,
    top: int = 4,
    min_attention: float = 0.1,
    min_effect: float = 0.02,
    receivers: Sequence[Head] | None = None,
) -> IOIResult:
    """Measure every head of ``model`` on ``prompts`` and find the IOI classes (see the module docstring).

    ``receivers``: the heads whose queries path patching sends into (default: the name movers found).
    """
    check_settings(batch_size, prompt_batch, top)
    n_layers = len(model.blocks)
    seconds = {"runs": 0.0, "patching": 0.0, "path patching": 0.0}
    clean_sum = corrupted_sum = correct = 0.0
    sums: dict[str, Tensor] = {}

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums[name] + value if name in sums else value.clone()

    names = sorted({*attribution_names(model), *path_patching_names(model), *_pattern_names(n_layers)})
    for part in length_chunks(prompts, prompt_batch):
        b = len(part)
        t0 = time.perf_counter()
        clean_logits, clean = run_with_cache(model, part.clean, names)
        corrupted_logits, corrupted = run_with_cache(model, part.corrupted, patching_names(model, "resid_pre"))
        clean_ld = logit_diff(clean_logits, part.io, part.s, part.end)
        clean_sum += float(clean_ld.sum())
        corrupted_sum += float(logit_diff(corrupted_logits, part.io, part.s, part.end).sum())
        correct += float((clean_ld > 0).sum())
        add("attribution", direct_logit_attribution(model, clean, part.io, part.s, part.end).heads.sum(0))
        pats = patterns(clean)
        for key, (query, target) in {
            "io": (part.end, part.io_pos),
            "s1": (part.end, part.s1_pos),
            "s2": (part.end, part.s2_pos),
            "s2_s1": (part.s2_pos, part.s1_pos),
        }.items():
            add(key, torch.stack([_pick(pats[layer], query, target).sum(0) for layer in range(n_layers)]))
        seconds["runs"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        metric = logit_diff_metric(part.io, part.s, part.end)
        add(
            "patching",
            b * activation_patching(model, part.corrupted, clean, metric, "z", "head", batch_size, corrupted),
        )
        seconds["patching"] += time.perf_counter() - t0
    n = len(prompts)
    mean = {key: value / n for key, value in sums.items()}
    clean_diff, corrupted_diff = clean_sum / n, corrupted_sum / n
    to_s = mean["s1"] + mean["s2"]
    attends_io = (mean["io"] >= min_attention) & (mean["io"] > to_s)
    attends_s = (to_s >= min_attention) & (to_s > mean["io"])
    attribution = mean["attribution"]
    classes: dict[str, list[Head]] = {
        "name mover": top_heads(attribution.where(attends_io & (attribution > 0), torch.nan), top),
        "negative name mover": top_heads(attribution.where(attends_io & (attribution < 0), torch.nan), top, False),
        "S suppression": top_heads(attribution.where(attends_s & (attribution > 0), torch.nan), top),
        "duplicate-token": top_heads(mean["s2_s1"].where(mean["s2_s1"] >= min_attention, torch.nan), top),
    }
    path_q = torch.full_like(attribution, torch.nan)
    receivers = classes["name mover"] if receivers is None else list(receivers)
    if receivers:
        t0 = time.perf_counter()
        total = torch.zeros_like(attribution)
        pp_names = path_patching_names(model)
        for part in length_chunks(prompts, prompt_batch):
            _, clean = run_with_cache(model, part.clean, pp_names)
            _, corrupted = run_with_cache(model, part.corrupted, pp_names)
            metric = logit_diff_metric(part.io, part.s, part.end)
            grid = path_patch_heads(model, clean, corrupted, receivers, metric, "q", batch_size)
            total += len(part) * grid
        path_q = (total / n - clean_diff) / abs(clean_diff)
        seconds["path patching"] = time.perf_counter() - t0
    classes["S-inhibition"] = top_heads(-path_q.where(path_q <= -min_effect, torch.nan), top)
    return IOIResult(
        n_prompts=n,
        clean_diff=clean_diff,
        corrupted_diff=corrupted_diff,
        accuracy=correct / n,
        patching=normalised(mean["patching"], clean_diff, corrupted_diff),
        attribution=attribution,
        attention_io=mean["io"],
        attention_s1=mean["s1"],
        attention_s2=mean["s2"],
        attention_s2_s1=mean["s2_s1"],
        path_q=path_q,
        classes=classes,
        seconds=seconds,
    )
