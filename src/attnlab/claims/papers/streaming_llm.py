"""Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks" (StreamingLLM, ICLR 2024,
arXiv:2309.17453).

Keeping the first few tokens (the attention sinks) with a recent window keeps perplexity close to the full cache,
where a recent window alone collapses (§3, Figure 3). Tested with ``attnlab intervene kv-eviction`` on SmolLM2-135M:
1024 tokens of the Python reference manual, a cache of 128 tokens, chunks of 16: the log perplexity of a recent
window minus that of StreamingLLM (4 sinks + recent), one deterministic run.
"""

from __future__ import annotations

import math

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Efficient Streaming Language Models with Attention Sinks",
    "Xiao et al.",
    2024,
    "2309.17453",
    "https://github.com/mit-han-lab/streaming-llm",
)


def sinks_against_recent() -> Measurement:
    from attnlab.experiments.kv_eviction import eviction_table
    from attnlab.experiments.text import text_tokens
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    rows = eviction_table(model, text_tokens(tok, 1024, 0), [128], ("streaming", "recent"), chunk=16)
    ppl = {r.policy: r.perplexity for r in rows}
    table: list[dict[str, object]] = [
        {"policy": r.policy, "budget": r.budget, "perplexity": r.perplexity} for r in rows
    ]
    return Measurement(exact=math.log(ppl["recent"]) - math.log(ppl["streaming"]), rows=table)


CLAIMS = [
    Claim(
        name="attention-sinks-rescue-window-attention",
        paper=PAPER,
        statement="With the same cache budget, keeping the first tokens (attention sinks) with a recent window gives "
        "a much lower perplexity than the recent window alone.",
        where="§3, Figure 3",
        experiment=FunctionExperiment(sinks_against_recent, seeds="none: one deterministic run"),
        rule=Rule("log perplexity, recent window − StreamingLLM, 128-token cache (SmolLM2-135M)", "greater", 0.1),
        scale_note="1024 tokens with a 128-token cache on SmolLM2-135M; the paper streams 4M tokens through Llama-2, "
        "MPT, Falcon and Pythia up to 70B.",
    ),
]
