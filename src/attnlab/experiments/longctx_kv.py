"""KV-cache policies on SmolLM2 at long contexts: perplexity and passkey retrieval against compression ratio.

The protocol is kvpress's (NVIDIA/kvpress, its README's benchmarks): a prompt of n tokens goes through the model
once, the policy compresses the cache to ``budget = round((1 − r) · n)`` tokens per key/value head on average
(r, the compression ratio, the fraction removed), and the model continues against the compressed cache. Policies
that evict while decoding (StreamingLLM, H2O, TOVA, recent) hold that budget for every new token; SnapKV, PyramidKV
and Task-KV compress once; Recycled Attention keeps every token and attends to the top ``budget`` between full
steps. One prompt pass serves every policy and ratio: it runs with the full cache while measuring every
statistic the policies need, and each policy starts from a fork of it (``PolicyKVCache.fork``), which is what
that policy's own prompt pass would have left (the prompt is never evicted during its own pass).

Two tasks, each scored per (length, policy, ratio) and for the full cache:

- ``ppl``: the prompt is n tokens of ``reference_text()`` (CPython's documentation topics, ``experiments.text``),
  and the score the perplexity of the next ``continuation`` tokens, decoded ``chunk`` at a time;
- ``passkey``: Mohtashami & Jaggi's passkey prompt (arXiv:2305.16300, §4.2) in English, built with SmolLM2's
  tokenizer — an instruction, the filler sentences repeated, the needle "The pass key is 71432. Remember it. 71432
  is the pass key." at a depth (0 = first, 1 = just before the question), then "What is the pass key? The pass
  key is". Scored: greedy exact match of the key's tokens, read off one teacher-forced call (greedy decoding
  produces the key exactly when every token of it is the argmax given the ones before). The key's tokens go
  through in one call: exact for the policies that compress once, and for those that evict while decoding the
  cache holds at most the key's length (5 tokens) more than the budget.

Time: ``prompt_s`` is the shared prompt pass (with the statistics of every policy asked for); ``seconds`` is the
policy's own compression and continuation, the part that differs between policies.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.experiments.text import text_tokens
from attnlab.lens.losses import next_token_nll
from attnlab.longctx.kv import POLICIES, KVPolicy, PolicyKVCache, decode, make_policy, prefill

Log = Callable[[str], None]

TASKS = ("ppl", "passkey")
INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class KVRow:
    """One cell: a task's score for one policy at one length and compression ratio."""

    task: str  # "ppl" or "passkey"
    length: int  # prompt tokens (nominal for passkey)
    policy: str  # "full" or a policy name
    ratio: float  # the compression ratio asked for (0 for the full cache)
    kept: float  # the fraction of the prompt's key/value pairs kept, measured (Recycled: attended)
    score: float  # perplexity (lower is better) or exact-match accuracy
    seconds: float  # the policy's own time: compression + continuation, summed over samples
    prompt_seconds: float  # the shared prompt passes, summed over samples
    by_depth: str = ""  # passkey: 1 / 0 per needle depth, in the order of the depths (e.g. "11011")


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: str) -> tuple[list[int], list[int]]:
    """(prompt ids of about ``length`` tokens, the key's ids) with the needle after ``depth`` of the filler.

    The prompt ends with the question and, where the tokenizer writes the space before the key as a token of its
    own (SmolLM2 does: digits are single tokens), that space: the score is then the key itself, not whether the
    model starts its answer with a space (at depth 1 it prefers " the").
    """
    ids = lambda text: tokenizer.encode(text).ids  # noqa: E731
    intro, filler, needle, question = ids(INTRO), ids(FILLER), ids(NEEDLE.format(key=key)), ids(QUESTION)
    tail = ids(QUESTION + " " + key)[len(question) :]
    while tail and not tokenizer.decode(tail[:1]).strip():
        question, tail = question + tail[:1], tail[1:]
    units = (length - len(intro) - len(needle) - len(question)) // len(filler)
    if units < 1:
        raise ConfigError("length", length, "too short for the passkey prompt", f"{len(intro) + 60} …")
    at = round(depth * units)
    return intro + filler * at + needle + filler * (units - at) + question, tail


def budget_for(ratio: float, length: int) -> int:
    """Tokens per key/value head that compression ratio ``ratio`` leaves of ``length`` (at least 1)."""
    return max(1, round((1 - ratio) * length))


def needs_of(names: Sequence[str]) -> frozenset[str]:
    return frozenset().union(*(POLICIES[name].needs for name in names)) if names else frozenset()


def check(names: Sequence[str], ratios: Sequence[float], tasks: Sequence[str]) -> None:
    """One-line ConfigErrors for unknown policies or tasks and ratios outside [0, 1)."""
    for name in names:
        if name not in POLICIES:
            raise ConfigError("policies", name, "unknown KV-cache policy", list(POLICIES))
    for r in ratios:
        if not 0 <= r < 1:
            raise ConfigError("ratios", r, "a compression ratio is the fraction removed", "0 ≤ r < 1")
    for task in tasks:
        if task not in TASKS:
            raise ConfigError("tasks", task, "unknown task", TASKS)


class Runner:
    """Runs every (policy, ratio) from one prompt pass; accumulates score sums and times per cell."""

    def __init__(self, model: Any, names: Sequence[str], ratios: Sequence[float], positions: str, params: dict) -> None:
        self.model, self.names, self.ratios, self.positions, self.params = model, names, ratios, positions, params
        self.totals: dict[tuple[str, float], list[float]] = {}  # cell → [score sum, kept sum, seconds, count]
        self.hits: dict[tuple[str, float], str] = {}  # passkey: one character per depth
        self.prompt_seconds = 0.0
        self._logged = (0.0, 0.0)  # prompt and cell seconds at the last ``progress``

    def policies(self, length: int) -> list[tuple[str, float, KVPolicy | None]]:
        cells: list[tuple[str, float, KVPolicy | None]] = [("full", 0.0, None)]
        for name in self.names:
            for r in self.ratios:
                cells.append((name, r, make_policy(name, budget_for(r, length), **self.params.get(name, {}))))
        return cells

    def prompt(self, tokens: Tensor) -> tuple[PolicyKVCache, Tensor]:
        t0 = time.perf_counter()
        window = {k: v for p in self.params.values() for k, v in p.items() if k in ("window", "kernel")}
        cache = PolicyKVCache(self.model, None, positions=self.positions, track=needs_of(self.names), **window)
        logits = prefill(self.model, tokens, cache)
        self.prompt_seconds += time.perf_counter() - t0
        return cache, logits

    def add(self, cell: tuple[str, float], score: float, kept: float, seconds: float) -> None:
        total = self.totals.setdefault(cell, [0.0, 0.0, 0.0, 0])
        total[0] += score
        total[1] += kept
        total[2] += seconds
        total[3] += 1

    def progress(self, log: Log | None, done: str) -> None:
        """Tell ``log`` that ``done`` finished: the seconds of its prompt pass and of its cells since the last call."""
        prompt, cells = self.prompt_seconds, sum(t[2] for t in self.totals.values())
        if log is not None:
            log(
                f"{done}: prompt pass {prompt - self._logged[0]:.0f} s, "
                f"{len(self.totals)} cells {cells - self._logged[1]:.0f} s"
            )
        self._logged = (prompt, cells)

    def rows(self, task: str, length: int, average: str) -> list[KVRow]:
        out = []
        for (name, r), (score, kept, seconds, n) in self.totals.items():
            value = math.exp(score / n) if average == "exp" else score / n
            hits = self.hits.get((name, r), "")
            out.append(KVRow(task, length, name, r, kept / n, value, seconds, self.prompt_seconds, hits))
        return out


def kept_fraction(cache: PolicyKVCache, name: str, budget: int | None, length: int) -> float:
    """The fraction of the prompt's key/value pairs the cache keeps (Recycled Attention: attends to)."""
    if name == "recycled" and budget is not None:
        return min(budget, length) / length
    return float(cache.kept().double().mean()) / length


def perplexity_rows(
    model: Any,
    tokenizer: Any,
    length: int,
    runner: Runner,
    *,
    samples: int,
    continuation: int,
    chunk: int,
    log: Log | None = None,
) -> list[KVRow]:
    """Perplexity of ``continuation`` tokens after a prompt of ``length``, ``samples`` texts (consecutive spans)."""
    device = next(model.parameters()).device
    span = length + continuation
    for s in range(samples):
        tokens = text_tokens(tokenizer, span * (s + 1))[:, s * span :].to(device)
        base, first = runner.prompt(tokens[:, :length])
        rest = tokens[:, length:]
        for name, r, policy in runner.policies(length):
            t0 = time.perf_counter()
            cache = base.fork(policy)
            cache.compress()
            kept = kept_fraction(cache, name, policy.budget if policy else None, length)
            logits = torch.cat([first[:, None], *decode(model, rest[:, :-1], cache, chunk)], dim=1)
            nll = next_token_nll(logits, tokens[:, length - 1 :])  # logits[:, i] predicts rest[:, i]
            runner.add((name, r), float(nll.mean()), kept, time.perf_counter() - t0)
        runner.progress(log, f"{length} tokens, ppl text {s + 1}/{samples}")
    return runner.rows("ppl", length, "exp")


def passkey_rows(
    model: Any,
    tokenizer: Any,
    length: int,
    runner: Runner,
    *,
    depths: Sequence[float],
    seed: int,
    log: Log | None = None,
) -> list[KVRow]:
    """Passkey exact-match accuracy over ``depths`` (one prompt each, a key drawn per depth from ``seed``)."""
    device = next(model.parameters()).device
    rng = random.Random(f"{seed}-{length}")
    for depth in depths:
        ids, answer = passkey_prompt(tokenizer, length, depth, str(rng.randrange(10000, 100000)))
        base, first = runner.prompt(torch.tensor([ids], device=device))
        target = torch.tensor([answer], device=device)
        for name, r, policy in runner.policies(len(ids)):  # the ratio of the prompt as built
            t0 = time.perf_counter()
            cache = base.fork(policy)
            cache.compress()
            kept = kept_fraction(cache, name, policy.budget if policy else None, len(ids))
            logits = torch.cat([first[:, None], *decode(model, target[:, :-1], cache, target.shape[1])], dim=1)
            hit = bool((logits.argmax(-1) == target).all())
            runner.add((name, r), float(hit), kept, time.perf_counter() - t0)
            runner.hits[name, r] = runner.hits.get((name, r), "") + "01"[hit]
        runner.progress(log, f"{length} tokens, passkey at depth {depth:g}")
    return runner.rows("passkey", length, "mean")


def longctx_kv_table(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int],
    ratios: Sequence[float],
    names: Sequence[str],
    *,
    tasks: Sequence[str] = TASKS,
    positions: str = "original",
    samples: int = 1,
    continuation: int = 256,
    chunk: int = 16,
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    log: Log | None = None,
) -> list[KVRow]:
    """Every task × length × (full cache, every policy × ratio) on SmolLM2 (any ``LlamaLM``-like model). ``log``
    gets a line after each prompt pass and its cells (what is done, and the seconds it took)."""
    check(names, ratios, tasks)
    if samples < 1 or continuation < 2 or chunk < 1:
        raise ConfigError("samples / continuation / chunk", (samples, continuation, chunk), "need ≥ 1, ≥ 2, ≥ 1")
    rows: list[KVRow] = []
    for length in lengths:
        for task in tasks:
            runner = Runner(model, names, ratios, positions, params or {})
            if task == "ppl":
                rows += perplexity_rows(
                    model, tokenizer, length, runner, samples=samples, continuation=continuation, chunk=chunk, log=log
                )
            else:
                rows += passkey_rows(model, tokenizer, length, runner, depths=depths, seed=seed, log=log)
    return rows


# --------------------------------------------------------------------------------------------------- tables and plots
SCORE_NAME = {"ppl": "perplexity (lower is better)", "passkey": "passkey exact match (higher is better)"}


def markdown_tables(rows: Sequence[KVRow]) -> str:
    """One table per (task, length): a policy per row, a compression ratio per column, ``score (seconds)`` cells;
    passkey cells add the hit (1) or miss (0) at each needle depth, in the order of the depths."""
    out = []
    for task in TASKS:
        for length in sorted({r.length for r in rows if r.task == task}):
            cells = [r for r in rows if r.task == task and r.length == length]
            full = next(r for r in cells if r.policy == "full")
            ratios = sorted({r.ratio for r in cells if r.policy != "full"})
            fmt = "{:.3f}" if task == "ppl" else "{:.2f}"
            depths = f" [{full.by_depth}]" if full.by_depth else ""
            out.append(
                f"{task}, {length} tokens — {SCORE_NAME[task]}; full cache {fmt.format(full.score)}{depths} "
                f"({full.seconds:.1f} s); prompt passes {full.prompt_seconds:.0f} s"
            )
            out.append("")
            out.append("| policy | " + " | ".join(f"r = {r:g}" for r in ratios) + " |")
            out.append("|---|" + "---|" * len(ratios))
            for name in dict.fromkeys(r.policy for r in cells if r.policy != "full"):
                by_ratio = {r.ratio: r for r in cells if r.policy == name}
                row = [cell(by_ratio[x], fmt) for x in ratios]
                out.append(f"| {name} | " + " | ".join(row) + " |")
            out.append("")
    return "\n".join(out)


def cell(row: KVRow, fmt: str) -> str:
    """``score [hits by depth] (seconds)``."""
    depths = f" [{row.by_depth}]" if row.by_depth else ""
    return f"{fmt.format(row.score)}{depths} ({row.seconds:.1f} s)"
