"""Cog attention's layout: softmax in the first and last layers, Cog in between."""

from __future__ import annotations

import torch

from attnlab.attention.normalisers.cog import Cog
from attnlab.attention.normalisers.softmax import Softmax
from attnlab.hook_points import capture


def test_edge_layers_use_softmax_and_middle_layers_use_cog(make_lm) -> None:
    model = make_lm(n_layers=4, normaliser="cog", edge_normaliser="softmax")
    kinds = [type(block.attn.normaliser) for block in model.blocks]
    assert kinds == [Softmax, Cog, Cog, Softmax]


def test_only_the_middle_layers_give_negative_weights(make_lm) -> None:
    model = make_lm(n_layers=4, normaliser="cog", edge_normaliser="softmax")
    with capture(model, lambda name: name.endswith("hook_pattern")) as cache:
        model(torch.randint(0, 31, (2, 10)))
    has_negative = [bool((cache[f"blocks.{layer}.attn.hook_pattern"] < 0).any()) for layer in range(4)]
    assert has_negative == [False, True, True, False]
