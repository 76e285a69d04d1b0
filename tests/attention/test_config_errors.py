"""Bad configs fail at construction with one line naming the field, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig

CROSS_SITE = AttentionSite(d_model=32, n_heads=4, causal=False, cross=True)

# name → (how to make the mistake, field named, bad value shown, allowed values listed)
BAD_CONFIGS: dict[str, tuple[Callable[[], object], str, str, list[str]]] = {
    "unknown normaliser": (
        lambda: AttentionConfig(normaliser="sofmax"),
        "normaliser",
        "'sofmax'",
        ["softmax", "cog", "sigmoid"],
    ),
    "unknown position": (
        lambda: AttentionConfig(position="rop"),
        "position",
        "'rop'",
        ["rope", "alibi", "nope"],
    ),
    "unknown heads": (lambda: AttentionConfig(heads="gqq"), "heads", "'gqq'", ["mha", "gqa", "mqa", "gated"]),
    "n_heads does not divide d_model": (
        lambda: ModelConfig(vocab_size=31, d_model=30, n_heads=4),
        "n_heads",
        "4",
        ["3", "5", "6"],
    ),
    "n_kv_heads does not divide n_heads": (
        lambda: ModelConfig(vocab_size=31, n_heads=4, attention={"heads": "gqa", "heads_args": {"n_kv_heads": 3}}),
        "n_kv_heads",
        "3",
        ["1, 2, 4"],
    ),
    "unknown normaliser argument": (
        lambda: AttentionConfig(normaliser="sigmoid", normaliser_args={"temperature": 2.0}),
        "temperature",
        "2.0",
        ["bias"],
    ),
    "unknown top-level key": (
        lambda: ModelConfig(vocab_size=31, d_modl=32),
        "d_modl",
        "32",
        ["d_model", "n_layers", "attention"],
    ),
    "unknown nested key": (
        lambda: ModelConfig(vocab_size=31, attention={"normaliserr": "cog"}),
        "attention.normaliserr",
        "'cog'",
        ["normaliser", "position", "heads"],
    ),
    "mode typo": (lambda: ModelConfig(vocab_size=31, mode="decodr"), "mode", "'decodr'", ["decoder", "encoder"]),
    "cross-attention with rope": (
        lambda: AttentionConfig(position="rope").check_site(CROSS_SITE),
        "position",
        "'rope'",
        ["nope"],
    ),
    "cog on the sdpa backend": (
        lambda: AttentionConfig(normaliser="cog", backend="sdpa"),
        "backend",
        "'sdpa'",
        ["reference"],
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_raises_one_actionable_line(case: str) -> None:
    make, field, value, allowed = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message
    assert field in message and value in message, message
    assert "allowed:" in message and all(a in message.split("allowed:")[1] for a in allowed), message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown normaliser"):
        AttentionConfig(normaliser="sofmax")


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_building_cross_attention_with_a_relative_position_is_rejected(position: str) -> None:
    with pytest.raises(ConfigError, match=rf"position='{position}': does not support cross-attention"):
        build_attention(AttentionConfig(position=position), CROSS_SITE)
