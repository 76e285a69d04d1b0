"""Activation and path patching: known answers on tiny float64 models, and a planted name-mover head.

Tolerance: float64 (ε = 2.2e-16); each value here comes from at most ~10^4 rounded operations on numbers of
magnitude ≤ 100 (3 layers of width 32, a vocabulary of 31), so rounding stays below 10^4 · 100 · ε ≈ 2e-10;
ATOL = 1e-9 leaves a margin while any real mistake (a wrong head, position or copy) moves values by ≥ 1e-3.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attnlab.attention import AttentionConfig
from attnlab.errors import ConfigError
from attnlab.hook_points import capture, hooks
from attnlab.lens.attribution import direct_logit_attribution
from attnlab.lens.capture import run_with_cache
from attnlab.lens.patching import (
    HEAD_HOOKS,
    Site,
    activation_patching,
    logit_diff,
    logit_diff_metric,
    normalised,
    patching_names,
    run_with_patches,
)
from attnlab.lens.path_patching import path_patch_heads, path_patching, path_patching_names
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from conftest import liven

ATOL = 1e-9
B, T = 3, 8
CLEAN = torch.randint(0, 31, (B, T), generator=torch.Generator().manual_seed(3))
CORRUPTED = CLEAN.clone()
CORRUPTED[:, 2] = (CLEAN[:, 2] + 7) % 31  # one token differs; the final token is shared
CORRUPTED[0, 5] = (CLEAN[0, 5] + 3) % 31
CORRECT, WRONG = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
METRIC = logit_diff_metric(CORRECT, WRONG)


def lm(n_layers: int = 3, norm: str = "layernorm", mlp: bool = True, **attention: Any) -> TransformerLM:
    cfg = ModelConfig(
        vocab_size=31,
        d_model=32,
        n_heads=4,
        n_layers=n_layers,
        max_seq_len=16,
        norm=norm,
        mlp=mlp,
        attention=AttentionConfig(**attention),
    )
    return liven(TransformerLM(cfg)).eval().double()


def everything(_name: str) -> bool:
    return True


def by_hand(model: TransformerLM, tokens: Tensor, source: dict, name: str, index: tuple) -> Tensor:
    """The metric with ``source[name][:, *index]`` written into the run on ``tokens`` by a plain hook."""

    def write(act: Tensor) -> Tensor:
        out = act.clone()
        out[(slice(None), *index)] = source[name][(slice(None), *index)]
        return out

    with torch.no_grad(), hooks(model, {name: write}):
        return METRIC(model(tokens)[None])[0]


def test_patching_every_head_restores_the_clean_logits_where_the_token_is_shared() -> None:
    # At the final position the stream is embed(shared token) + attention outputs + MLPs of that same stream: with
    # every head's z clean, every term there is the clean one, MLPs included.
    model = lm()
    clean_logits, clean = run_with_cache(model, CLEAN, everything)
    corrupted_logits, _ = run_with_cache(model, CORRUPTED, everything)
    all_heads = [Site(f"blocks.{layer}.attn.hook_z") for layer in range(3)]
    restored = run_with_patches(model, CORRUPTED, clean, [all_heads], lambda logits: logits[:, :, -1])[0]
    torch.testing.assert_close(restored, clean_logits[:, -1], rtol=0, atol=ATOL)
    assert (corrupted_logits[:, -1] - clean_logits[:, -1]).abs().max() > 1e-2  # the corruption mattered


@pytest.mark.parametrize(
    ("hook", "per", "attention"),
    [
        ("z", "head", {}),
        ("z", "head_position", {}),
        ("pattern", "head", {}),
        ("pattern", "position", {}),
        ("k", "head", {"heads": "gqa", "heads_args": {"n_kv_heads": 2}}),
        ("resid_pre", "position", {"position": "learned"}),
        ("mlp_out", "position", {}),
        ("attn_out", "layer", {}),
    ],
)
def test_each_batched_patch_equals_the_same_patch_made_by_hand(hook: str, per: str, attention: dict) -> None:
    model = lm(**attention)
    _, clean = run_with_cache(model, CLEAN, patching_names(model, hook))
    _, corrupted = run_with_cache(model, CORRUPTED, patching_names(model, "resid_pre"))
    grid = activation_patching(model, CORRUPTED, clean, METRIC, hook, per, batch_size=7)
    # resumed at each pass's lowest patched layer from the corrupted run's stream: the same values
    resumed = activation_patching(model, CORRUPTED, clean, METRIC, hook, per, batch_size=7, base=corrupted)
    torch.testing.assert_close(resumed, grid, rtol=0, atol=ATOL)
    for layer, name in enumerate(patching_names(model, hook)):
        for idx in itertools.product(*[range(n) for n in grid.shape[1:]]):
            # per position in a [B, H, T, ...] activation: every head at that time step (a pattern's query row)
            index = (slice(None), *idx) if per == "position" and hook in HEAD_HOOKS else idx
            expected = by_hand(model, CORRUPTED, clean, name, index)
            torch.testing.assert_close(grid[(layer, *idx)], expected, rtol=0, atol=ATOL)
    assert grid.std() > 1e-3  # patches differ, so a mix-up between copies would show


def test_a_position_whose_token_agrees_changes_nothing_at_the_first_layer() -> None:
    model = lm()
    _, clean = run_with_cache(model, CLEAN, patching_names(model, "resid_pre"))
    grid = activation_patching(model, CORRUPTED, clean, METRIC, "resid_pre", "position")
    with torch.no_grad():
        corrupted_value, clean_value = METRIC(model(CORRUPTED)[None])[0], METRIC(model(CLEAN)[None])[0]
    same = [t for t in range(T) if t not in (2, 5)]
    torch.testing.assert_close(grid[0, same], corrupted_value.expand(len(same)), rtol=0, atol=ATOL)
    # patching every differing position of layer 0 at once is the clean run
    both = [[Site("blocks.0.hook_resid_pre", position=2), Site("blocks.0.hook_resid_pre", position=5)]]
    torch.testing.assert_close(
        run_with_patches(model, CORRUPTED, clean, both, METRIC)[0], clean_value, rtol=0, atol=ATOL
    )
    assert (clean_value - corrupted_value).abs() > 1e-3
    chosen = activation_patching(model, CORRUPTED, clean, METRIC, "resid_pre", "position", positions=[5, -1, 2])
    torch.testing.assert_close(chosen, grid[:, [5, T - 1, 2]], rtol=0, atol=ATOL)


def test_logit_diff_reads_one_position_per_prompt() -> None:
    logits = torch.randn(2, B, T, 31, dtype=torch.float64)
    position = torch.tensor([7, 2, 4])
    got = logit_diff(logits, CORRECT, WRONG, position)
    for b in range(B):
        p = int(position[b])
        torch.testing.assert_close(got[:, b], logits[:, b, p, CORRECT[b]] - logits[:, b, p, WRONG[b]])
    torch.testing.assert_close(normalised(torch.tensor(3.0), 5.0, 1.0), torch.tensor(0.5))


def test_bad_requests_name_the_field() -> None:
    model = lm()
    _, clean = run_with_cache(model, CLEAN, everything)
    with pytest.raises(ConfigError, match="hook="):
        activation_patching(model, CORRUPTED, clean, METRIC, hook="resid")
    with pytest.raises(ConfigError, match="per="):
        activation_patching(model, CORRUPTED, clean, METRIC, hook="resid_pre", per="head")
    with pytest.raises(ConfigError, match="positions="):
        activation_patching(model, CORRUPTED, clean, METRIC, hook="z", per="head", positions=[1])
    with pytest.raises(ConfigError, match="positions="):
        activation_patching(model, CORRUPTED, clean, METRIC, hook="z", per="head_position", positions=[T])
    with pytest.raises(ConfigError, match=r"Site\.head"):
        run_with_patches(model, CORRUPTED, clean, [[Site("blocks.0.hook_resid_pre", head=1)]], METRIC)
    with pytest.raises(KeyError, match=r"blocks\.9"):
        run_with_patches(model, CORRUPTED, clean, [[Site("blocks.9.hook_resid_pre")]], METRIC)
    with pytest.raises(ConfigError, match="via="):
        path_patching(model, clean, clean, [[]], [(2, 0)], METRIC, via="x")


# ------------------------------------------------------------------------------------------------ path patching
def caches(model: TransformerLM) -> tuple[Tensor, dict, dict]:
    logits, reference = run_with_cache(model, CLEAN, path_patching_names(model))
    _, new = run_with_cache(model, CORRUPTED, path_patching_names(model))
    return logits, reference, new


@pytest.mark.parametrize("receivers", [[(2, 1)], [(1, 0), (2, 3)], None])
@pytest.mark.parametrize("via", ["q", "k", "v", "qkv"])
def test_path_patching_with_no_sender_is_the_identity(receivers: list | None, via: str) -> None:
    model = lm(heads="gqa", heads_args={"n_kv_heads": 2})
    logits, reference, new = caches(model)
    got = path_patching(model, reference, new, [[], [(0, 1)]], receivers, METRIC, via)
    torch.testing.assert_close(got[0], METRIC(logits[None])[0], rtol=0, atol=ATOL)
    assert (got[1] - got[0]).abs() > 1e-4  # a real sender moves it, so the identity is not vacuous


@pytest.mark.parametrize("via", ["q", "v", "qkv"])
def test_path_patching_from_a_whole_layer_matches_patching_its_attention_output(via: str) -> None:
    # Without MLPs, layer 2 reads resid_pre(1) + attn_out(1): sending every head of layer 1 equals giving layer 2
    # the new attn_out(1) (the output bias cancels), the other inputs (k, v for via="q") staying the reference's.
    model = lm(mlp=False)
    logits, reference, new = caches(model)
    receivers = [(2, 0), (2, 3)]
    got = path_patching(model, reference, new, [[(1, h) for h in range(4)]], receivers, METRIC, via)[0]
    _, new_out = run_with_cache(model, CORRUPTED, ["blocks.1.hook_attn_out"])
    inputs = [f"blocks.2.attn.hook_{c}" for c in via]
    new_attn_out = {"blocks.1.hook_attn_out": lambda _: new_out["blocks.1.hook_attn_out"]}
    with torch.no_grad():
        with hooks(model, new_attn_out), capture(model, inputs) as sent:
            model(CLEAN)
        sent_inputs = {name: (lambda _, name=name: sent[name]) for name in inputs}
        with hooks(model, sent_inputs), capture(model, ["blocks.2.attn.hook_z"]) as z:
            model(CLEAN)
        expected = by_hand(model, CLEAN, z, "blocks.2.attn.hook_z", ([0, 3],))
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert (got - METRIC(logits[None])[0]).abs() > 1e-4


def test_path_patching_into_two_layers_gives_each_receiver_layer_its_own_stream() -> None:
    # by hand: sender L0H1's change, from its slice of o_proj, added to each receiver layer's reference input; that
    # layer's q, k frozen (via="v"); the receivers' z from those runs written into one reference run
    model = lm(heads="gqa", heads_args={"n_kv_heads": 2})
    _, reference, new = caches(model)
    got = path_patching(model, reference, new, [[(0, 1)]], [(1, 2), (2, 0)], METRIC, "v")[0]
    w_o = model.blocks[0].attn.heads.o_proj.weight[:, 8:16]  # head 1 of d_head 8
    z_change = new["blocks.0.attn.hook_z"][:, 1] - reference["blocks.0.attn.hook_z"][:, 1]  # [B, T, 8]
    change = z_change @ w_o.T  # [B, T, D]
    received = {}
    for layer, head in [(1, 2), (2, 0)]:
        edits = {
            f"blocks.{layer}.hook_resid_pre": lambda _, layer=layer: (
                reference[f"blocks.{layer}.hook_resid_pre"] + change
            )
        }
        for c in "qk":
            name = f"blocks.{layer}.attn.hook_{c}"
            edits[name] = lambda _, name=name: reference[name]
        with torch.no_grad(), hooks(model, edits), capture(model, [f"blocks.{layer}.attn.hook_z"]) as z:
            model(CLEAN)
        received[(layer, head)] = z[f"blocks.{layer}.attn.hook_z"][:, head]

    def receiver(layer: int, head: int) -> Callable[[Tensor], Tensor]:
        def write(act: Tensor) -> Tensor:
            out = act.clone()
            out[:, head] = received[(layer, head)]
            return out

        return write

    edits = {f"blocks.{layer}.attn.hook_z": receiver(layer, head) for layer, head in received}
    with torch.no_grad(), hooks(model, edits):
        expected = METRIC(model(CLEAN)[None])[0]
    with torch.no_grad():
        baseline = METRIC(model(CLEAN)[None])[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert (got - baseline).abs() > 1e-4


def test_path_patching_to_the_logits_from_the_last_layer_is_patching_its_output() -> None:
    model = lm(mlp=False)
    _, reference, new = caches(model)
    got = path_patching(model, reference, new, [[(2, h) for h in range(4)]], None, METRIC)[0]
    _, new_out = run_with_cache(model, CORRUPTED, ["blocks.2.hook_attn_out"])
    expected = by_hand(model, CLEAN, new_out, "blocks.2.hook_attn_out", ())
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_path_patch_heads_marks_heads_with_no_path() -> None:
    model = lm()
    _, reference, new = caches(model)
    grid = path_patch_heads(model, reference, new, [(1, 2)], METRIC, "k", batch_size=3)
    assert grid[1:].isnan().all() and not grid[0].isnan().any()
    single = path_patching(model, reference, new, [[(0, 3)]], [(1, 2)], METRIC, "k")[0]
    torch.testing.assert_close(grid[0, 3], single, rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------------------------ a planted head
N_NAMES, QUERY, IS_NAME, IS_QUERY, MOVER = 8, 12, 8, 9, (1, 2)


def name_mover_model() -> TransformerLM:
    """Two layers; head L1H2 is set by hand to be a name mover, everything else is random (std 0.2).

    Tokens 4..11 are names: embedding dim i (name i) and dim 8 ("is a name") are raised by 8. Token 12 is the
    query ("to"): dim 9 raised by 8. L1H2's query reads dim 9 and its key dim 8 (weight 2), so the last position
    attends to the name; its value copies dims 0..7 and its output writes them back (×2), so through the tied
    unembedding the name's own logit rises: the IOI paper's name-mover mechanism, in four weights.
    """
    cfg = ModelConfig(
        vocab_size=16,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_seq_len=16,
        norm="rmsnorm",
        attention=AttentionConfig(position="nope"),
    )
    model = liven(TransformerLM(cfg), std=0.2).eval().double()
    layer, head = MOVER
    d = 8
    rows = slice(head * d, (head + 1) * d)
    with torch.no_grad():
        embed = model.embed.weight
        for i in range(N_NAMES):
            embed[4 + i, i] += 8.0
            embed[4 + i, IS_NAME] += 8.0
        embed[QUERY, IS_QUERY] += 8.0
        heads = model.blocks[layer].attn.heads
        model.blocks[layer].ln1.weight.fill_(1.0)
        for proj in (heads.q_proj, heads.k_proj, heads.v_proj):
            proj.weight[rows] = 0.0
        heads.o_proj.weight[:, rows] = 0.0
        heads.q_proj.weight[head * d, IS_QUERY] = 2.0
        heads.k_proj.weight[head * d, IS_NAME] = 2.0
        for j in range(d):
            heads.v_proj.weight[head * d + j, j] = 1.0
            heads.o_proj.weight[j, head * d + j] = 2.0
    return model


def name_prompts() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Six prompts [BOS, fillers, one name, fillers, "to"]; the corrupted one has another name in its place."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(13, 16, (6, 7), generator=g)
    clean[:, 0], clean[:, -1] = 0, QUERY
    a, b = torch.tensor([4, 5, 6, 7, 8, 9]), torch.tensor([10, 11, 4, 5, 6, 7])
    rows, where = torch.arange(6), torch.randint(1, 6, (6,), generator=g)
    clean[rows, where] = a
    corrupted = clean.clone()
    corrupted[rows, where] = b
    return clean, corrupted, a, b


def others(grid: Tensor) -> Tensor:
    """Every head of a [L, H] grid but the planted one."""
    keep = torch.ones_like(grid, dtype=torch.bool)
    keep[MOVER] = False
    return grid[keep]


def top_head(grid: Tensor, pick: Callable[[Tensor], Tensor] = torch.argmax) -> tuple[int, int]:
    flat = int(pick(grid.flatten()))
    return divmod(flat, grid.shape[1])


def test_the_planted_name_mover_is_the_top_head_by_patching_and_by_attribution() -> None:
    model = name_mover_model()
    clean, corrupted, a, b = name_prompts()
    metric = logit_diff_metric(a, b)
    clean_logits, clean_cache = run_with_cache(model, clean, everything)
    corrupted_logits, corrupted_cache = run_with_cache(model, corrupted, everything)
    clean_value, corrupted_value = metric(clean_logits[None])[0], metric(corrupted_logits[None])[0]
    assert clean_value > 5 and corrupted_value < -5  # the model answers with the name in each prompt

    restored = normalised(activation_patching(model, corrupted, clean_cache, metric), clean_value, corrupted_value)
    assert top_head(restored) == MOVER and restored[MOVER] > 0.9
    assert others(restored).abs().max() < 0.1

    attribution = direct_logit_attribution(model, clean_cache, a, b).mean()
    assert top_head(attribution.heads) == MOVER
    assert attribution.heads[MOVER] > 0.5 * clean_value
    assert attribution.heads[MOVER] > 10 * others(attribution.heads).abs().max()

    noised = path_patch_heads(model, clean_cache, corrupted_cache, None, metric)  # the direct path only
    assert top_head(noised, torch.argmin) == MOVER and noised[MOVER] < 0
