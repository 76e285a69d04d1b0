"""The model runs end to end in float64, and under bfloat16 autocast for every normaliser."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS
from attnlab.hook_points import capture
from tolerances import lm_atol

POSITIONS = ["rope", "alibi", "nope", "learned", "sinusoidal"]


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("normaliser", NORMALISERS.names())
def test_float64_forward_stays_float64_and_agrees_with_float32(
    make_supported_lm, normaliser: str, position: str
) -> None:
    model = make_supported_lm(normaliser=normaliser, position=position, heads="gated")
    tokens = torch.randint(0, 31, (2, 7))
    logits32 = model(tokens)
    model.double()
    with capture(model, lambda name: name.endswith(("hook_pattern", "hook_z", "hook_resid_post"))) as cache:
        logits64 = model(tokens)
    assert logits64.dtype == torch.float64
    assert {t.dtype for t in cache.values()} == {torch.float64}
    # The float32 logits' rounding error (the float64 ones are exact to it): lm_atol, whose factor 2 (two rounded
    # evaluations) is spare here; LSSAR's (N·A − 1)^15 multiplies the relative error of N·A − 1 by 15.
    atol = lm_atol(logits32, condition=15.0 if normaliser == "lssar" else 1.0)
    torch.testing.assert_close(logits64.float(), logits32, atol=atol, rtol=0)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("normaliser", NORMALISERS.names())
def test_bfloat16_autocast_forward_is_finite(make_supported_lm, normaliser: str, position: str) -> None:
    model = make_supported_lm(normaliser=normaliser, position=position)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 31, (2, 7)))
    assert logits.dtype == torch.bfloat16  # autocast really ran the projections in bfloat16
    assert torch.isfinite(logits).all()
