"""The training probes on patterns whose values are known: uniform causal attention (every q zeroed, no position
encoding) has logits 0, entropy log(i + 1) at query i, first-token weight 1/(i + 1); scaling q scales the logits;
the outlier and logit probes equal the lens functions on the same activations.

float64 throughout: the known answers are exact up to ~T · ε ≈ 1e-14.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.checks import liven
from attnlab.hook_points import capture, hooks
from attnlab.lens.outliers import kurtosis
from attnlab.lens.probes import ProbeInputs, training_probes
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM

T, VOCAB, LAYERS = 8, 20, 2


def model() -> TransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=LAYERS, max_seq_len=2 * T + 1, attention={"position": "nope"}
    )
    return liven(TransformerLM(cfg)).double().train()


def inputs() -> ProbeInputs:
    data = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(1))
    return ProbeInputs.build(data, VOCAB, max_len=2 * T + 1, seed=2)


def scale_q(factor: float) -> dict:
    return {f"blocks.{layer}.attn.hook_q": (lambda q: q * factor) for layer in range(LAYERS)}


def test_uniform_attention_gives_the_known_logit_entropy_sink_and_induction_values() -> None:
    m, probe = model(), inputs()
    with hooks(m, scale_q(0.0)):
        values = training_probes(m, probe)
    assert m.training  # the probe restores the mode
    entropy = sum(math.log(i + 1) for i in range(T)) / T
    first_token = [1 / (i + 1) for i in range(T)]  # α₀ = mean over queries of 1/(i+1) = H_T / T ≈ 0.34 > 0.3
    n = probe.seq_half
    induction = sum(1 / (i + 1) for i in range(n + 1, 2 * n + 1)) / n
    for layer in range(LAYERS):
        assert values[f"probe/max_logit/L{layer}"] == 0.0
        assert values[f"probe/entropy/L{layer}"] == pytest.approx(entropy, abs=1e-12)
        assert values[f"probe/sink_rate/L{layer}"] == (1.0 if sum(first_token) / T > 0.3 else 0.0)
        assert values[f"probe/induction/L{layer}"] == pytest.approx(induction, abs=1e-12)


def test_scaling_the_queries_scales_the_max_logit() -> None:
    m, probe = model(), inputs()
    base = training_probes(m, probe)
    with hooks(m, scale_q(7.0)):
        scaled = training_probes(m, probe)
    for layer in range(LAYERS):
        assert base[f"probe/max_logit/L{layer}"] > 0
    # layer 0's logits are linear in its q (later layers see a changed stream, so only layer 0 is exact)
    assert scaled["probe/max_logit/L0"] == pytest.approx(7.0 * base["probe/max_logit/L0"], rel=1e-12)


def test_the_outlier_and_output_probes_equal_the_lens_functions() -> None:
    m, probe = model(), inputs()
    values = training_probes(m, probe)
    m.eval()
    with torch.no_grad(), capture(m, ["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"]) as cache:
        logits = m(probe.data)
    resid, attn_out = cache["blocks.1.hook_resid_post"], cache["blocks.0.hook_attn_out"]
    # the probe pass reads patterns, so it takes the dense path: equal to the SDPA pass up to float64 rounding
    assert values["probe/resid_max_abs/L1"] == pytest.approx(float(resid.abs().max()), rel=1e-12)
    assert values["probe/resid_kurtosis/L1"] == pytest.approx(float(kurtosis(resid)), rel=1e-12)
    assert values["probe/attn_out_kurtosis/L0"] == pytest.approx(float(kurtosis(attn_out)), rel=1e-12)
    assert values["probe/logit_max_abs"] == pytest.approx(float(logits.abs().max()), rel=1e-12)
    # log Z is taken in float32 (bf16 logits too): ~20 terms, rounding well under 1e-6 relative
    assert values["probe/log_z"] == pytest.approx(float(torch.logsumexp(logits, -1).mean()), rel=1e-6)


def test_a_vocabulary_too_small_for_the_copying_probe_skips_induction_only() -> None:
    probe = ProbeInputs.build(torch.zeros(1, 4, dtype=torch.long), vocab=2, max_len=9, seed=0)
    assert probe.induction is None
    values = training_probes(model(), probe)
    assert "probe/entropy/L0" in values and not any("induction" in k for k in values)
