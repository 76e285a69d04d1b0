"""The lens, a library: look inside any attention head of attnlab's own models and of real pretrained ones.

- ``capture``: a cached forward pass that records hook points (``run_with_cache``, ``patterns``);
- ``metrics``: pure functions over attention patterns ``[batch, head, q, k]`` (sinks, induction, previous-token,
  duplicate-token, entropy, distance, windowed distance and future influence, negative mass);
- ``interventions``: head ablation (zero / mean), scaling and other edits of a head's output through ``hook_z``;
- ``losses``: next-token losses, the one place predictions are scored; ``copy_task``: the ``[BOS] + x + x`` probe;
- ``inspect``: score every head of a pretrained model (``attnlab inspect``);
- ``pretrained``: SmolLM2-135M and MiniLM rebuilt from attnlab's modules, and transformers checkpoints
  (``hf_adapter``).

The paper experiments built on it (PEAR, ACT, KV eviction, RoPE scaling, sinks) live in ``attnlab.experiments``;
the lens imports nothing from experiments, runner, report or cli.
"""

from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.metrics import (
    attention_entropy,
    detection_score,
    duplicate_detection_pattern,
    duplicate_token_score,
    future_attention_influence,
    head_output_norm,
    head_table,
    hidden_sinks,
    induction_detection_pattern,
    induction_score,
    mean_attended_distance,
    negative_mass,
    previous_token_score,
    row_normalise,
    sink_rate,
    sink_scores,
    windowed_attention_distance,
)

__all__ = [
    "attention_entropy",
    "detection_score",
    "duplicate_detection_pattern",
    "duplicate_token_score",
    "future_attention_influence",
    "head_output_norm",
    "head_table",
    "hidden_sinks",
    "induction_detection_pattern",
    "induction_score",
    "mean_attended_distance",
    "negative_mass",
    "patterns",
    "previous_token_score",
    "row_normalise",
    "run_with_cache",
    "sink_rate",
    "sink_scores",
    "windowed_attention_distance",
]
