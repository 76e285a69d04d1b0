"""ACT: the calibrated pattern on hand-made rows (known answers), and on a tiny model that the calibrated pattern is
what multiplies V and that the output changes only through the calibrated heads."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.core import repeat_kv
from attnlab.errors import ConfigError
from attnlab.experiments.act import (
    act_calibration,
    calibrate_pattern,
    check_calibratable,
    search_heads,
    sink_heads,
    sink_mask,
)
from attnlab.hook_points import capture, hooks
from attnlab.lens.metrics import hidden_sinks

TOKENS = torch.randint(0, 31, (2, 12), generator=torch.Generator().manual_seed(3))


def hand_pattern() -> torch.Tensor:
    """One head, 4 queries × 4 keys, causal rows summing to 1."""
    P = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.2, 0.6, 0.2, 0.0],
            [0.1, 0.5, 0.3, 0.1],
        ],
        dtype=torch.float64,
    )
    return P[None, None]  # [1, 1, 4, 4]


def test_calibrated_rows_known_answer() -> None:
    P = hand_pattern()
    sinks = torch.tensor([[[False, True, False, False]]])  # key 1 is the hidden sink
    out = calibrate_pattern(P, sinks, beta=0.4)[0, 0]
    # row 2: sink 0.6 → 0.24; the freed 0.36 goes to keys 0 and 2 in proportion 0.2 : 0.2
    torch.testing.assert_close(out[2], torch.tensor([0.38, 0.24, 0.38, 0.0], dtype=torch.float64))
    # row 3: sink 0.5 → 0.2; the freed 0.3 split 0.1 : 0.3 : 0.1 over keys 0, 2, 3
    torch.testing.assert_close(out[3], torch.tensor([0.16, 0.2, 0.48, 0.16], dtype=torch.float64))
    torch.testing.assert_close(out.sum(-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(out[:, 1], 0.4 * P[0, 0, :, 1])  # sinks keep exactly β × their weight
    assert torch.equal(out[0], P[0, 0, 0])  # a row with no sink mass is untouched


def test_rows_with_all_mass_on_sinks_and_beta_one_are_unchanged() -> None:
    P = torch.tensor([[0.0, 1.0, 0.0], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])[None, None]
    sinks = torch.tensor([[[False, True, False]]])
    out = calibrate_pattern(P, sinks, beta=0.4)[0, 0]
    assert torch.equal(out[0], P[0, 0, 0])  # nothing outside the sink to give the mass to
    assert torch.equal(calibrate_pattern(P, sinks, beta=1.0), P)
    with pytest.raises(ConfigError, match="beta"):
        calibrate_pattern(P, sinks, beta=1.5)


def test_sink_mask_follows_hidden_sinks_per_sequence_and_head() -> None:
    P = torch.cat([hand_pattern(), hand_pattern().flip(-1).tril()], dim=1).float()  # 2 heads
    P = torch.cat([P, torch.eye(4).expand(1, 2, 4, 4)], dim=0)  # 2 sequences
    mask = sink_mask(P, threshold=0.3, heads=[0, 1])
    for b in range(2):
        idx, _ = hidden_sinks(P[b : b + 1], threshold=0.3)
        expected = torch.zeros(2, 4, dtype=torch.bool)
        expected[idx[:, 0], idx[:, 1]] = True
        assert torch.equal(mask[b], expected)
    assert not mask[..., 0].any()  # the first token is never a hidden sink
    assert mask[0, 0, 1]  # key 1 of head 0: α = (0.5 + 0.6 + 0.5) / 3 > 0.3
    assert not sink_mask(P, threshold=0.3, heads=[1])[:, 0].any()  # only the listed heads


def test_calibrated_pattern_is_what_multiplies_v(make_lm) -> None:
    model = make_lm(n_layers=3)
    names = ["blocks.1.attn.hook_v", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z"]
    with torch.no_grad(), capture(model, names) as plain:
        base = model(TOKENS)
    with (
        torch.no_grad(),
        act_calibration(model, [(1, 2)], beta=0.4, threshold=0.1) as stats,
        capture(model, names) as cal,
    ):
        out = model(TOKENS)
    assert stats.sinks[(1, 2)] > 0  # there was something to calibrate
    P0, P1 = plain["blocks.1.attn.hook_pattern"], cal["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(P1.sum(-1), torch.ones_like(P1.sum(-1)))
    mask = sink_mask(P0, 0.1, causal=True, heads=[2])
    torch.testing.assert_close(P1, calibrate_pattern(P0, mask, 0.4))
    assert torch.equal(P1[:, [0, 1, 3]], P0[:, [0, 1, 3]])
    v = repeat_kv(cal["blocks.1.attn.hook_v"], 1)
    z0, z1 = plain["blocks.1.attn.hook_z"], cal["blocks.1.attn.hook_z"]
    torch.testing.assert_close(z1[:, 2], P1[:, 2] @ v[:, 2])
    torch.testing.assert_close(z1[:, [0, 1, 3]], z0[:, [0, 1, 3]], rtol=0, atol=1e-6)
    assert (z1[:, 2] - z0[:, 2]).abs().max() > 1e-4
    # the model output changes only through head 2 of layer 1: splice its calibrated z into a plain run
    with (
        torch.no_grad(),
        hooks(model, {"blocks.1.attn.hook_z": lambda z: torch.cat([z[:, :2], z1[:, 2:3], z[:, 3:]], 1)}),
    ):
        spliced = model(TOKENS)
    torch.testing.assert_close(out, spliced, rtol=0, atol=1e-5)
    assert (out - base).abs().max() > 1e-4


def test_beta_one_is_the_identity_and_gqa_works(make_lm) -> None:
    model = make_lm(n_layers=3, heads="gqa", heads_args={"n_kv_heads": 2})
    with torch.no_grad():
        base = model(TOKENS)
        with act_calibration(model, {1: [0, 3], 2: [1]}, beta=1.0) as stats:
            same = model(TOKENS)
        with act_calibration(model, {1: [0, 3], 2: [1]}, beta=0.0):
            moved = model(TOKENS)
    assert stats.total_sinks() > 0
    torch.testing.assert_close(same, base, rtol=0, atol=1e-5)
    assert (moved - base).abs().max() > 1e-4


def test_refuses_layers_whose_output_is_not_pattern_times_v(make_lm) -> None:
    with pytest.raises(ConfigError, match="not row-stochastic"):
        check_calibratable(make_lm(n_layers=2, normaliser="sigmoid"), 1)
    with pytest.raises(ConfigError, match="computes the attention itself"):
        check_calibratable(make_lm(n_layers=2, heads="differential"), 1)
    model = make_lm(n_layers=2)
    with pytest.raises(ConfigError, match="KV cache"), torch.no_grad(), act_calibration(model, [(1, 0)]):
        cache = model.new_cache()
        model(TOKENS[:, :5], cache)
        model(TOKENS[:, 5:6], cache)


def test_head_search_keeps_only_heads_that_lower_the_loss(make_lm) -> None:
    model = make_lm(n_layers=3)
    candidates = sink_heads(model, TOKENS, threshold=0.1, min_layer=1)
    assert candidates and all(layer >= 1 for layer, _ in candidates)

    def loss() -> float:
        with torch.no_grad():
            logits = model(TOKENS)
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), TOKENS[:, 1:]))

    trials: dict = {}
    base, kept = search_heads(model, candidates, loss, on_head=lambda h, v: trials.__setitem__(h, v))
    assert set(trials) == set(candidates)
    assert [h for h, _ in kept] == sorted((h for h in candidates if trials[h] < base), key=trials.__getitem__)
