"""Swap the position encoding of a built model's attention layers, keeping every weight.

A relative encoding (RoPE and its scaled forms, ALiBi, T5, …) holds no trained weights that the others need, so a
model trained with RoPE can be evaluated with, say, dynamic NTK scaling from the same weights: the way RoPE-scaling
methods are applied to a pretrained model (and what ``TrainConfig.extrapolate_positions`` does after training,
instead of training the same model twice). Absolute encodings (learned, sinusoidal) live at the model input and
are refused: their table is part of what was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from attnlab.attention import Attention, build_attention
from attnlab.attention.config import AttentionConfig
from attnlab.errors import ConfigError
from attnlab.position import POSITIONS


def rebuild_attention(model: nn.Module, config_for: Callable[[Attention], AttentionConfig]) -> nn.Module:
    """Replace every self-attention layer ``a`` of ``model`` (in place) by ``build_attention(config_for(a), a.site)``
    holding ``a``'s state, dtype, device and mode; cross-attention layers, which have no positions, are kept.

    The new layer must load the old one's state exactly (``strict``): only parameter-free parts may change.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, Attention) or child.site.cross:
                continue
            ref = next(child.parameters(), None)
            new = build_attention(config_for(child), child.site)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            new.load_state_dict(child.state_dict(), strict=True)
            setattr(parent, name, new.train(child.training))
    return model


def check_positions(own: str, names: list[str], field: str = "train.extrapolate_positions") -> None:
    """A model whose encoding is ``own`` can be evaluated under each of ``names``: registered, relative entries,
    and ``own`` relative too (else a ConfigError on ``field``)."""
    relative = sorted(n for n in POSITIONS.names() if not POSITIONS.get(n).absolute)
    for name in names:
        if name not in POSITIONS or POSITIONS.get(name).absolute:
            raise ConfigError(field, name, "not a relative position encoding", relative)
        if POSITIONS.get(own).absolute:
            raise ConfigError(field, name, f"the model's own encoding {own!r} is absolute (a trained table)", relative)


def with_position(model: nn.Module, position: str, position_args: Mapping[str, Any] | None = None) -> nn.Module:
    """``model`` (in place) with every self-attention layer's relative position encoding replaced by ``position``
    (its arguments ``position_args``, validated by the entry); returns the model.

    Refused, with the field and the allowed values: an unknown entry, an absolute one (learned, sinusoidal), and
    a model whose own encoding is absolute.
    """
    if position not in POSITIONS:
        raise ConfigError("position", position, "not a registered position encoding", sorted(POSITIONS.names()))
    relative = sorted(n for n in POSITIONS.names() if not POSITIONS.get(n).absolute)
    if POSITIONS.get(position).absolute:
        raise ConfigError("position", position, "is absolute: it lives at the model input", relative)
    if getattr(model, "pos", None) is not None:
        raise ConfigError("position", position, "the model's own encoding is absolute (a trained table)", relative)
    args = dict(position_args or {})

    def config_for(layer: Attention) -> AttentionConfig:
        return AttentionConfig.model_validate({**layer.cfg.model_dump(), "position": position, "position_args": args})

    return rebuild_attention(model, config_for)
