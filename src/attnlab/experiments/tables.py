"""Cells of the experiments' ``rich`` tables: numbers to three decimals, text escaped, head lists shortened."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape

from attnlab.lens.interventions import Head, head_label


def cell(value: object) -> str:
    """A float to three decimals, anything else as escaped text (``rich`` reads ``[...]`` as markup)."""
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def heads_text(heads: Sequence[Head], limit: int = 8) -> str:
    """``L18H6,L17H3,…`` for the first ``limit`` heads, then ``+N`` for the rest."""
    labels = [head_label(h) for h in heads]
    more = f" +{len(labels) - limit}" if len(labels) > limit else ""
    return ",".join(labels[:limit]) + more
