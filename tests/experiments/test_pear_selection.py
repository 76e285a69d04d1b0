"""PEAR's path-patching head selection on a tiny float64 model: the last layer's scores equal a mean-ablation of the
head with that layer's MLP frozen (its direct path is then its whole effect), the heads kept are the largest
positive changes, and ``pear_experiment(select=k)`` re-weights exactly those.

Tolerance: float64 (ε = 2.2e-16); each score is a mean of ~10^4 rounded operations on numbers of magnitude ≤ 100,
so ATOL = 1e-9 separates rounding from a wrong head or position (≥ 1e-3).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.experiments.pear import copy_logit_metric, path_patching_selection, pear_experiment
from attnlab.hook_points import hooks
from attnlab.lens.capture import run_with_cache
from attnlab.lens.copy_task import CopyTask

TASK = CopyTask(n=6, low=3, high=31, bos=1)
ATOL = 1e-9


def test_the_last_layer_scores_are_mean_ablations(make_lm) -> None:
    model = make_lm(n_layers=3).double()
    found = path_patching_selection(model, TASK, k=3, batch=5, seed=4, batch_size=5)
    tokens = TASK.batch(5, torch.Generator().manual_seed(4))
    metric = copy_logit_metric(tokens, TASK)
    with torch.no_grad():
        _, clean = run_with_cache(model, tokens, ["blocks.2.hook_mlp_out"])
        assert found.base == pytest.approx(float(metric(model(tokens)[None])[0]), abs=ATOL)
        for head in range(4):

            def melt(z: Tensor, head: int = head) -> Tensor:
                z = z.clone()
                z[:, head] = z[:, head].mean(0, keepdim=True)  # the batch mean at every position
                return z

            frozen = {"blocks.2.attn.hook_z": melt, "blocks.2.hook_mlp_out": lambda _: clean["blocks.2.hook_mlp_out"]}
            with hooks(model, frozen):
                ablated = float(metric(model(tokens)[None])[0])
            assert float(found.change[2, head]) == pytest.approx(ablated - found.base, abs=ATOL)
    assert found.change.isfinite().all() and found.change.std() > 1e-3
    flat = found.change.flatten()
    positive = sorted(((float(v), (i // 4, i % 4)) for i, v in enumerate(flat) if v > 0), reverse=True)
    assert found.heads == [head for _, head in positive[:3]]


def test_the_metric_reads_the_logit_of_each_copied_token() -> None:
    tokens = TASK.batch(2, torch.Generator().manual_seed(0))
    logits = torch.zeros(3, 2, TASK.length, 31, dtype=torch.float64)
    scored = TASK.targets()
    for b in range(2):
        for t in range(scored.start, scored.stop):
            logits[1, b, t - 1, tokens[b, t]] = 2.0  # copy i predicts every copied token with logit 2
    logits[2, :, scored.start - 1] = 5.0  # the position before the first scored token: every logit 5
    expected = [0.0, 2.0, 5.0 / (scored.stop - scored.start)]
    torch.testing.assert_close(copy_logit_metric(tokens, TASK)(logits), torch.tensor(expected, dtype=torch.float64))


def test_pear_with_selection_reweights_the_selected_heads(make_lm) -> None:
    model = make_lm(n_layers=2)
    result = pear_experiment(model, task=TASK, steps=2, batch=2, eval_batch=4, select=2, select_batch=3, seed=1)
    assert result.selection is not None and len(result.selection.heads) == 2
    assert list(result.coefficients) == result.selection.heads and result.n_heads == 2
    again = path_patching_selection(model, TASK, 2, batch=3, seed=1 + 2_000_003)
    assert again.heads == result.selection.heads
    with pytest.raises(ConfigError, match="select=2"):
        pear_experiment(model, layers=[0], task=TASK, steps=1, select=2)
    with pytest.raises(ConfigError, match="select=0"):
        path_patching_selection(model, TASK, 0)
    with pytest.raises(ConfigError, match="batch=1"):
        path_patching_selection(model, TASK, 2, batch=1)
