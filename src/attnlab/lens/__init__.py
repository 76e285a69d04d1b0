"""The lens: pure metrics over attention patterns ``[batch, head, q, k]`` (``metrics.py``) and a cached forward pass
that collects them from an attnlab model (``capture.py``)."""

from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.metrics import (
    attention_entropy,
    detection_score,
    duplicate_detection_pattern,
    duplicate_token_score,
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
)

__all__ = [
    "attention_entropy",
    "detection_score",
    "duplicate_detection_pattern",
    "duplicate_token_score",
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
]
