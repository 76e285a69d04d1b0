"""Concentric causal attention's text analogue (Xing et al., arXiv:2410.15926; ``lens.concentric``): the positions
and the mask by known answers, one document is the plain model (bitwise), reordering the documents leaves the prefix and
the suffix unchanged (float64), the layers' causal rule comes back afterwards, and bad models are refused."""

from __future__ import annotations

import pytest
import torch

from attnlab.checks import liven
from attnlab.lens.concentric import cca_logits, cca_positions, cca_visible, concentric
from attnlab.lens.pine import PineLayout
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec
from tolerances import LM_TERMS, dtype_on, lm_depth, order_bound, scale_of

SPEC = LlamaSpec(
    n_layers=2, d_model=32, d_mlp=64, n_heads=4, n_kv_heads=2, vocab_size=31, rope_base=10000.0,
    rms_eps=1e-5, context_length=64,
)  # fmt: skip
LAYOUT = PineLayout(prefix=2, documents=(3, 1, 4, 2), suffix=3)


def close64(got: torch.Tensor, want: torch.Tensor) -> None:
    bound = order_bound(torch.float64, LM_TERMS, lm_depth(SPEC.n_layers)) * scale_of(want)
    err = (got - want).abs().max().item()
    assert err <= bound, f"{err:.3e} > {bound:.3e}"


def llama() -> LlamaLM:
    return liven(LlamaLM(SPEC)).eval().double()  # type: ignore[return-value]


def test_the_positions_are_rings_around_the_question() -> None:
    # prefix 0, 1; documents of 3, 1, 4, 2 tokens all end at 2 + 4 − 1 = 5; the suffix starts at 2 + 4
    assert cca_positions(LAYOUT).tolist() == [0, 1, 3, 4, 5, 5, 2, 3, 4, 5, 4, 5, 6, 7, 8]


def test_the_mask_is_causal_in_the_positions_between_documents() -> None:
    # prefix 1, documents of 2 and 1 tokens (positions 1 2 | 2), suffix 1
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],  # position 1 sees no document key at 2
            [1, 1, 1, 1, 0],  # position 2 sees the other document's token at 2, after it in the sequence
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(cca_visible(PineLayout(1, (2, 1), 1)), want)


def test_one_document_is_the_plain_model_bitwise() -> None:
    model = llama()
    layout = PineLayout(2, (6,), 3)
    assert torch.equal(cca_positions(layout), torch.arange(layout.total))
    tokens = torch.randint(1, 31, (2, layout.total))
    assert torch.equal(cca_logits(model, tokens, layout), model(tokens))
    # documents of one token each are a ring of their own: the same position, and they see each other
    layout = PineLayout(2, (1, 1, 1), 2)
    assert cca_positions(layout).tolist() == [0, 1, 2, 2, 2, 3, 4]
    assert cca_visible(layout)[2:5, 2:5].all()


def test_reordering_the_documents_leaves_prefix_and_suffix_unchanged() -> None:
    model = llama()
    prefix = torch.randint(1, 31, (LAYOUT.prefix,)).tolist()
    docs = [torch.randint(1, 31, (n,)).tolist() for n in LAYOUT.documents]
    suffix = torch.randint(1, 31, (LAYOUT.suffix,)).tolist()
    want = cca_logits(model, torch.tensor([LAYOUT.concat(prefix, docs, suffix)]), LAYOUT)
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        moved = [docs[i] for i in order]
        layout = PineLayout.of(prefix, moved, suffix)
        tokens = torch.tensor([layout.concat(prefix, moved, suffix)])
        got = cca_logits(model, tokens, layout)
        close64(got[:, -LAYOUT.suffix :], want[:, -LAYOUT.suffix :])
        close64(got[:, : LAYOUT.prefix], want[:, : LAYOUT.prefix])
        # the plain model is not invariant: the test can fail
        plain = model(torch.tensor([LAYOUT.concat(prefix, docs, suffix)]))
        assert (model(tokens)[:, -1] - plain[:, -1]).abs().max() > 1e-3


def test_a_transformer_lm_and_the_causal_rule_restored(make_lm) -> None:  # type: ignore[no-untyped-def]
    model = make_lm(position="rope").double()
    layout = PineLayout(1, (3, 2, 4), 2)
    tokens = torch.randint(1, 31, (1, layout.total))
    cca_logits(model, tokens, layout)
    assert all(block.attn.site.causal for block in model.blocks)
    with pytest.raises(RuntimeError, match="boom"), concentric(model):
        assert not model.blocks[0].attn.site.causal
        raise RuntimeError("boom")
    assert all(block.attn.site.causal for block in model.blocks)


def test_bad_models_and_inputs_are_refused(make_lm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="without a window"), concentric(make_lm(window=4)):
        pass
    with pytest.raises(ValueError, match="no attnlab Attention"), concentric(torch.nn.Linear(2, 2)):
        pass
    with pytest.raises(ValueError, match="the layout 15"):
        cca_logits(llama(), torch.randint(1, 31, (1, 7)), LAYOUT)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_cca_runs_on_the_models_device(device: str) -> None:
    dtype = dtype_on(device)  # skips where the device is absent
    model = llama().to(dtype)
    tokens = torch.randint(1, 31, (2, LAYOUT.total))
    want = cca_logits(model, tokens, LAYOUT)
    got = cca_logits(model.to(device), tokens.to(device), LAYOUT).cpu()
    if dtype == torch.float64:
        close64(got, want)
    else:  # float32 on two devices: each within the order bound of the exact value
        bound = order_bound(torch.float32, LM_TERMS, lm_depth(SPEC.n_layers)) * scale_of(want)
        assert (got - want).abs().max().item() <= bound
