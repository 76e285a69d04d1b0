"""The training length L that context-extension methods scale from (PI, NTK, YaRN, Entropy-ABF, FoPE)."""

from __future__ import annotations

from attnlab.errors import ConfigError


def training_length(explicit: int | None, site: object | None, field: str) -> int:
    """``explicit`` if given, else the site's ``seq_len`` (the length the model is trained at)."""
    length = explicit if explicit is not None else getattr(site, "seq_len", None)
    if length is None:
        raise ConfigError(field, None, "needs the training length: set it here or give the site a seq_len")
    return int(length)
