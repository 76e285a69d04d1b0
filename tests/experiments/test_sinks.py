"""The softmax-vs-sigmoid sink experiment: known sink metrics on uniform attention, determinism, tiny runs."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.experiments.sinks import (
    VARIANTS,
    SinksConfig,
    byte_splits,
    measure_sinks,
    model_config,
    run_sinks_experiment,
)
from attnlab.model.transformer import TransformerLM

TINY = SinksConfig(
    d_model=16, n_layers=2, n_heads=2, seq_len=16, batch_size=4, steps=3, eval_windows=8, text_chars=20000
)


def uniform_attention_model(variant: str) -> TransformerLM:
    """Zero query projections: every score q·k is 0, so softmax rows are uniform and sigmoid_b0 weights are all ½."""
    torch.manual_seed(0)
    model = TransformerLM(model_config(TINY, variant)).eval()
    with torch.no_grad():
        for block in model.blocks:
            for name, p in block.attn.heads.named_parameters():
                if name.startswith("q_proj"):
                    p.zero_()
    return model


@pytest.mark.parametrize("variant", ["softmax", "sigmoid_b0"])
def test_uniform_attention_has_the_known_first_token_score(variant: str) -> None:
    """α_0 = mean_i 1/(i + 1) = H_T / T for uniform causal rows (after row normalisation for sigmoid)."""
    batch = torch.randint(0, 256, (3, TINY.seq_len + 1))
    harmonic = sum(1 / (i + 1) for i in range(TINY.seq_len)) / TINY.seq_len  # ≈ 0.211 for T = 16
    model = uniform_attention_model(variant)
    below, above = measure_sinks(model, batch, eps=harmonic + 0.01), measure_sinks(model, batch, eps=harmonic - 0.01)
    assert below["alpha0"] == pytest.approx(harmonic, rel=1e-5)
    assert (below["sink_rate"], above["sink_rate"]) == (0.0, 1.0)
    # raw weights: softmax's are the same; sigmoid_b0's are σ(0) = ½ on every visible key, so α_0 = ½ > ε
    assert below["sink_rate_raw"] == (0.0 if variant == "softmax" else 1.0)
    assert math.isfinite(below["val_loss"])


def test_every_variant_starts_from_the_same_weights() -> None:
    states = []
    for variant in VARIANTS:
        torch.manual_seed(TINY.seed)
        states.append(TransformerLM(model_config(TINY, variant)).state_dict())
    assert all(s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s) for s in states)


def test_a_tiny_run_reports_every_variant_and_repeats_exactly() -> None:
    first = run_sinks_experiment(TINY)
    assert [r.variant for r in first] == list(VARIANTS)
    assert [r.bias for r in first] == [None, pytest.approx(-math.log(TINY.seq_len)), 0.0]
    for r in first:
        assert 0 <= r.sink_rate <= 1 and 0 <= r.sink_rate_raw <= 1 and math.isfinite(r.val_loss)
    again = run_sinks_experiment(TINY, ["sigmoid_b0"])[0]
    assert (again.val_loss, again.sink_rate, again.alpha0) == (first[2].val_loss, first[2].sink_rate, first[2].alpha0)


def test_the_split_is_ninety_ten_and_bad_settings_are_config_errors() -> None:
    train, held_out = byte_splits(TINY)
    assert len(train) == int(0.9 * (len(train) + len(held_out)))
    with pytest.raises(ConfigError, match=r"^variant='relu': unknown attention variant"):
        run_sinks_experiment(TINY, ["relu"])
    with pytest.raises(ConfigError, match=r"^text_chars=50: too little text"):
        byte_splits(SinksConfig(text_chars=50))
    with pytest.raises(ConfigError, match=r"^SinksConfig.steps=0"):
        SinksConfig(steps=0)
