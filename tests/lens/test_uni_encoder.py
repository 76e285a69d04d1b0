"""Uni-Encoder (Song et al., arXiv:2106.01263; ``lens.uni_encoder``): the layout by known answers, one pass equals
scoring each candidate alone with the same positions (float64), the scores follow the candidates when they are
reordered, and bad layouts are refused."""

from __future__ import annotations

import pytest
import torch

from attnlab.checks import liven
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec
from attnlab.lens.uni_encoder import UniLayout, candidate_scores, candidate_scores_alone
from tolerances import LM_TERMS, dtype_on, lm_depth, order_bound, scale_of

SPEC = LlamaSpec(
    n_layers=2, d_model=32, d_mlp=64, n_heads=4, n_kv_heads=2, vocab_size=31, rope_base=10000.0,
    rms_eps=1e-5, context_length=64,
)  # fmt: skip
CONTEXT = [5, 9, 2, 14]
CANDIDATES = [[3, 7], [11], [4, 20, 8, 1], [6, 6, 30]]


def bound(model: torch.nn.Module, dtype: torch.dtype = torch.float64) -> float:
    """A mean log-probability is a logit minus a log-sum-exp of logits: each moves at most as far as the logits,
    which are within the order bound of the model's forward pass (one more step for the log-sum-exp)."""
    scale = scale_of(model(torch.tensor([CONTEXT + [t for c in CANDIDATES for t in c]])))
    return 2 * order_bound(dtype, LM_TERMS, lm_depth(SPEC.n_layers) + 1) * scale


def llama() -> LlamaLM:
    return liven(LlamaLM(SPEC)).eval().double()  # type: ignore[return-value]


def test_the_layout() -> None:
    layout = UniLayout(2, (2, 1))
    assert layout.positions().tolist() == [0, 1, 2, 3, 2]
    want = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(layout.visible(), want)
    assert layout.starts() == [2, 4]


def test_one_pass_equals_each_candidate_alone() -> None:
    model = llama()
    got = candidate_scores(model, CONTEXT, CANDIDATES)
    want = candidate_scores_alone(model, CONTEXT, CANDIDATES)
    assert got.shape == (4,)
    assert (got - want).abs().max().item() <= bound(model)
    assert (want.max() - want.min()).item() > 1e-3  # the candidates do score differently


def test_scores_are_invariant_to_the_order_of_candidates(make_lm) -> None:  # type: ignore[no-untyped-def]
    for model in (llama(), make_lm(position="rope").double()):
        want = candidate_scores(model, CONTEXT, CANDIDATES)
        for order in ([3, 2, 1, 0], [2, 0, 3, 1]):
            got = candidate_scores(model, CONTEXT, [CANDIDATES[i] for i in order])
            assert (got - want[order]).abs().max().item() <= bound(model), order
    # the plain model reading every candidate in sequence is not: a later candidate sees the earlier ones
    model = llama()
    flat = [t for c in CANDIDATES for t in c]
    rev = [t for c in reversed(CANDIDATES) for t in c]
    a, b = model(torch.tensor([CONTEXT + flat]))[0, -1], model(torch.tensor([CONTEXT + rev]))[0, -1]
    assert (a - b).abs().max() > 1e-3


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="context of at least one token"):
        UniLayout(0, (1,))
    with pytest.raises(ValueError, match="positive lengths"):
        UniLayout(2, ())
    with pytest.raises(ValueError, match="positive lengths"):
        UniLayout(2, (2, 0))


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_uni_encoder_runs_on_the_models_device(device: str) -> None:
    dtype = dtype_on(device)  # skips where the device is absent
    model = llama().to(dtype)
    want = candidate_scores(model, CONTEXT, CANDIDATES)
    got = candidate_scores(model.to(device), CONTEXT, CANDIDATES).cpu()
    assert (got - want).abs().max().item() <= bound(model.cpu(), dtype)
    assert got.dtype == torch.float64  # log-probabilities are taken in float64 on every device
