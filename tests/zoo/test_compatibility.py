"""Every mechanism × position pair the matrix marks supported builds and trains; every other is rejected."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import HEADS, NORMALISERS
from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.position import POSITIONS
from attnlab.report.zoo_docs import AXES, combo_config, combo_supported, pair_config, pair_supported

PAIRS = [
    (axis, e.name, position)
    for axis in ("normaliser", "heads")
    for e in AXES[axis][0].entries()
    for position in POSITIONS.names()
]


@pytest.mark.parametrize(("axis", "name", "position"), PAIRS, ids=[f"{a}-{n}-{p}" for a, n, p in PAIRS])
def test_matrix_cell_is_honoured(make_lm, axis: str, name: str, position: str) -> None:
    if not pair_supported(axis, name, position):
        with pytest.raises(ConfigError) as err:
            ModelConfig(vocab_size=31, d_model=32, n_heads=4, attention=pair_config(axis, name, position))
        assert "\n" not in str(err.value)
        return
    model = make_lm(**pair_config(axis, name, position).model_dump()).train()
    logits = model(torch.randint(0, 31, (2, 7)))
    logits.square().mean().backward()
    assert torch.isfinite(logits).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


COMBOS = [(n, h) for n in NORMALISERS.names() for h in HEADS.names()]


@pytest.mark.parametrize(("normaliser", "heads"), COMBOS, ids=[f"{n}-{h}" for n, h in COMBOS])
def test_normaliser_heads_cell_is_honoured(make_lm, normaliser: str, heads: str) -> None:
    cfg = combo_config(normaliser, heads)
    if not combo_supported(normaliser, heads):
        with pytest.raises(ConfigError) as err:
            ModelConfig(vocab_size=31, d_model=32, n_heads=4, attention=cfg)
        assert "\n" not in str(err.value)
        return
    model = make_lm(**cfg.model_dump()).train()
    logits = model(torch.randint(0, 31, (2, 7)))
    logits.square().mean().backward()
    assert torch.isfinite(logits).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
