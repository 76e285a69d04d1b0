"""LoFiT on tiny TransformerLMs: the training batch scores what PEAR's loss scores, the L1 step finds a planted head,
the offsets change only the selected heads, only the vectors train (the model frozen, through ``train.loop.fit``),
the first update is Adam's ``lr · sign(g)``, and the comparison measures every method on PEAR's held-out set.

Tolerances: the loss identity runs in float64 (two reductions of ~60 terms of size ≤ 10: 1e-12; ``fit``'s
float32 cast of it within 1e-5, ~100 float32 roundings); Adam's first step
is ``lr · g / (|g| + ε)`` with ε = 1e-8, so entries with |g| > 1e-4 are within lr · 1e-4 of ``lr · sign(g)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.errors import ConfigError
from attnlab.experiments.lofit import (
    EditedLM,
    copy_batch,
    frozen,
    lofit_experiment,
    lofit_offsets,
    lofit_selection,
)
from attnlab.experiments.pear import held_out_batch, pear_experiment
from attnlab.hook_points import capture
from attnlab.lens.copy_task import CopyTask, copy_loss, measure_copy
from attnlab.lens.head_offsets import HeadOffsets
from attnlab.train.device import devices_present
from attnlab.train.loop import token_loss

TASK = CopyTask(n=6, low=3, high=31, bos=1)
PLANTED = (1, 2)


def test_the_training_batch_scores_the_copy_loss(make_lm) -> None:
    model = make_lm(n_layers=2).double()
    tokens = TASK.batch(5, torch.Generator().manual_seed(3))
    batch = copy_batch(tokens, TASK)
    assert torch.equal(batch.inputs, tokens)
    assert int((batch.targets != -100).sum()) == 5 * (TASK.n - 1)
    with torch.no_grad():
        logits = model(tokens)
    fits = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)  # token_loss in float64
    torch.testing.assert_close(fits, copy_loss(logits, tokens, TASK), rtol=0, atol=1e-12)
    assert float(token_loss(logits, batch.targets)) == pytest.approx(float(fits), rel=1e-5)  # the same, in float32


def planted_model(make_lm):
    """Every head's output projection zeroed except ``PLANTED``'s: only that head can change the loss."""
    model = make_lm(n_layers=2)
    with torch.no_grad():
        for layer in range(2):
            w = model.blocks[layer].attn.heads.o_proj.weight  # [D, H · d_head]
            for h in range(4):
                if (layer, h) != PLANTED:
                    w[:, h * 8 : (h + 1) * 8] = 0.0
    return model


def test_the_l1_step_selects_the_planted_head(make_lm) -> None:
    model = planted_model(make_lm)
    found = lofit_selection(model, TASK, 1, steps=30, batch=4, lr=0.05, l1=1e-2, seed=0)
    assert found.heads == [PLANTED]
    others = [norm for head, norm in found.norms.items() if head != PLANTED]
    assert max(others) < found.norms[PLANTED] / 5  # the penalty held the heads without a loss gradient near 0
    assert found.n_trained == 8 * 8 and len(found.losses) == 30


def test_offsets_change_only_the_selected_heads_and_train_only_the_vectors(make_lm) -> None:
    model = make_lm(n_layers=2)
    model.blocks[1].ln1.weight.requires_grad_(False)  # a flag that must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    heads = [(0, 3), (1, 1)]
    edits, losses = lofit_offsets(model, heads, TASK, steps=5, batch=4, lr=0.05, seed=2)
    assert len(losses) == 5 and edits.heads == heads and edits.scale is None
    assert edits.offset is not None and edits.offset.detach().abs().min() > 1e-3  # the offsets trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model did not
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    tokens = TASK.batch(2, torch.Generator().manual_seed(7))
    with torch.no_grad(), capture(model, names) as z, edits.deployed(model), capture(model, names) as z2:
        model(tokens)
    for layer in range(2):
        for h in range(4):
            same = torch.equal(z[names[layer]][:, h], z2[names[layer]][:, h])
            assert same == ((layer, h) not in heads), (layer, h)


def test_the_first_update_is_lr_times_the_sign_of_the_gradient(make_lm) -> None:
    model = make_lm(n_layers=2)
    heads = [(0, 0), (1, 3)]
    tokens = TASK.batch(4, torch.Generator().manual_seed(9))  # the batch training with seed 9 draws first
    probe = HeadOffsets.for_model(model, heads)
    with frozen(model), probe.applied(model):
        copy_loss(model(tokens), tokens, TASK).backward()
    g = probe.offset.grad
    edits, _ = lofit_offsets(model, heads, TASK, steps=1, batch=4, lr=0.05, init_std=0.0, seed=9)
    clear = g.abs() > 1e-4
    assert clear.float().mean() > 0.5
    torch.testing.assert_close(edits.offset.detach()[clear], -0.05 * g.sign()[clear], rtol=0, atol=0.05 * 1e-4)


def test_the_wrapped_model_stays_in_eval_mode(make_lm) -> None:
    model = make_lm(n_layers=2)
    wrapped = EditedLM(model, HeadOffsets.for_model(model, [(0, 0)], scale=True), l1=0.5)
    wrapped.train()
    assert wrapped.training and wrapped.edits.training and not model.training
    assert wrapped.aux_loss() is not None and float(wrapped.aux_loss().detach()) == 0.0
    assert EditedLM(model, wrapped.edits).aux_loss() is None


def test_the_comparison_uses_pears_held_out_set(make_lm) -> None:
    model = make_lm(n_layers=2)
    kwargs = {"task": TASK, "batch": 2, "eval_batch": 6, "seed": 1}
    res = lofit_experiment(model, k=2, select_steps=3, steps=3, pear_steps=3, **kwargs)
    none, pear_all, pear_k, lofit = res.rows
    assert none.scores == measure_copy(model, held_out_batch(TASK, 6, 1), TASK)
    assert pear_all.scores == pear_experiment(model, steps=3, lr=3e-2, **kwargs).after
    assert pear_k.scores == pear_experiment(model, steps=3, lr=3e-2, select=2, **kwargs).after
    assert (none.trained, pear_all.trained, pear_k.trained, lofit.trained) == (0, 8, 2, 2 * 8)
    assert lofit.scores != none.scores and len(res.selection.heads) == 2 and len(res.offset_norms) == 2
    assert len(res.heads_table().rows) == 2 and res.table().row_count == 4
    assert set(res.overlaps()) == {"path patching", "PEAR all heads"}
    with_controls = lofit_experiment(model, k=2, select_steps=3, steps=3, pear_steps=3, controls=True, **kwargs)
    assert with_controls.rows[:4] == res.rows  # the same runs, then the two controls
    assert [r.trained for r in with_controls.rows[4:]] == [16, 16]
    assert with_controls.rows[4].scores != with_controls.rows[5].scores
    for k in (0, 9):
        with pytest.raises(ConfigError, match=f"k={k}"):
            lofit_experiment(model, k=k, **kwargs)
    with pytest.raises(ConfigError, match="l1"):
        lofit_selection(model, TASK, 1, l1=-1.0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_lofit_runs_on_the_models_device(make_lm, device: str) -> None:
    if device not in devices_present():
        pytest.skip(f"no {device} device on this machine (present: {', '.join(devices_present())})")
    model = make_lm(n_layers=2).to(device)
    res = lofit_experiment(model, task=TASK, k=2, select_steps=2, steps=2, pear_steps=2, batch=2, eval_batch=4)
    assert len(res.selection.heads) == 2 and res.rows[-1].scores != res.rows[0].scores
    edits, _ = lofit_offsets(model, res.selection.heads, TASK, steps=2, batch=2)
    assert edits.offset is not None and edits.offset.device.type == device
    zero = HeadOffsets.for_model(model, res.selection.heads, scale=True).to(device)
    tokens = TASK.batch(2, torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad(), zero.applied(model):
        edited = model(tokens)
    assert torch.equal(edited, model(tokens).detach())
