"""PINE (Wang et al., arXiv:2407.01100): the mask and the ranking by known answers, the layer against a per-query
float64 reference written from the paper's description, and the acceptance test: reordering the documents leaves
the suffix's logits unchanged; with one document PINE is the plain model. Its parts alone (the ablations): both
off is the plain model, the mask alone is the attention core under that mask, the positions alone match the
reference under the causal mask, and neither alone removes the order dependence."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import Attention
from attnlab.checks import liven
from attnlab.lens.concentric import concentric
from attnlab.lens.pine import PineLayout, pine, pine_forward, pine_logits, rank_shifts
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec
from attnlab.types import AttentionMask
from tolerances import LM_TERMS, dtype_on, lm_depth, order_bound, scale_of

SPEC = LlamaSpec(
    n_layers=2, d_model=32, d_mlp=64, n_heads=4, n_kv_heads=2, vocab_size=31, rope_base=10000.0,
    rms_eps=1e-5, context_length=64,
)  # fmt: skip
LAYOUT = PineLayout(prefix=3, documents=(4, 2, 5, 3), suffix=3)


def close64(got: torch.Tensor, want: torch.Tensor, n_layers: int = 2) -> None:
    bound = order_bound(torch.float64, LM_TERMS, lm_depth(n_layers)) * scale_of(want)
    err = (got - want).abs().max().item()
    assert err <= bound, f"{err:.3e} > {bound:.3e}"


def llama() -> LlamaLM:
    return liven(LlamaLM(SPEC)).eval().double()  # type: ignore[return-value]


def segments(layout: PineLayout, vocab: int = 31) -> tuple[list[int], list[list[int]], list[int]]:
    def draw(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,)).tolist()

    return draw(layout.prefix), [draw(n) for n in layout.documents], draw(layout.suffix)


def test_the_mask_is_the_papers() -> None:
    # prefix 1, documents of 2 and 1 tokens, suffix 2: documents see each other whole, their own causally
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    layout = PineLayout(1, (2, 1), 2)
    assert torch.equal(layout.visible(), want)
    # every document ends at the same position; the suffix follows
    assert layout.base_positions().tolist() == [0, 2, 3, 3, 4, 5]


def test_rank_shifts_place_the_most_important_document_last() -> None:
    lengths = torch.tensor([4, 2, 5])
    # importance order: doc 2, doc 0, doc 1 → doc 2 unshifted, doc 0 moves back 5, doc 1 moves back 5 + 4
    assert rank_shifts(torch.tensor([0.3, 0.1, 0.6]), lengths).tolist() == [5, 9, 0]
    # ties keep document order
    assert rank_shifts(torch.tensor([0.5, 0.5, 0.5]), lengths).tolist() == [0, 4, 6]


def reference_layer(attn: Attention, x: torch.Tensor, layout: PineLayout, mask: bool = True) -> torch.Tensor:
    """PINE for one layer, one (batch row, head, query) at a time, from the paper's description (``mask=False``:
    the causal mask, PINE's positions alone)."""
    proj = attn.heads.project(x, None)
    q, k, v = proj.q, proj.k, proj.v
    n_rep = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5
    seg = layout.segment_ids().tolist()
    base = layout.base_positions()
    p, s, n = layout.prefix, layout.doc_tokens, layout.n_docs
    starts = [p + sum(layout.documents[:i]) for i in range(n)]
    z = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            qh, kh, vh = q[b, h], k[b, h // n_rep], v[b, h // n_rep]

            def importance(i: int, own: int | None, qh: torch.Tensor = qh, kh: torch.Tensor = kh) -> list[float]:
                keys = [j for j in range(p, p + s) if seg[j] != own]
                w = torch.softmax(torch.stack([qh[i] @ kh[j] * scale for j in keys]), 0)
                total = [0.0] * n
                for wj, j in zip(w.tolist(), keys, strict=True):
                    total[seg[j]] += wj / layout.documents[seg[j]]
                return total

            for i in range(layout.total):
                own = seg[i] if 0 <= seg[i] < n else None
                if own is not None:  # a document's rows summed; its own document first
                    rows = [importance(r, own) for r in range(starts[own], starts[own] + layout.documents[own])]
                    score = [sum(col) for col in zip(*rows, strict=True)]
                    order = [own, *sorted((d for d in range(n) if d != own), key=lambda d: -score[d])]
                else:
                    score = importance(i, None)
                    order = sorted(range(n), key=lambda d: -score[d])
                pos = base.clone()
                end = p + s
                for d in order:  # the first ranked ends at p + S − 1, the next just before it, ...
                    pos[starts[d] : starts[d] + layout.documents[d]] = torch.arange(end - layout.documents[d], end)
                    end -= layout.documents[d]
                seen = [
                    j
                    for j in range(layout.total)
                    if j <= i or (mask and own is not None and 0 <= seg[j] < n and seg[j] != own)
                ]
                qi, _ = attn.position.rotate(qh[None, None, i : i + 1], qh[None, None, i : i + 1], base[i : i + 1])
                _, kr = attn.position.rotate(kh[None, None], kh[None, None], pos)
                scores = torch.stack([qi[0, 0, 0] @ kr[0, 0, j] * scale for j in seen])
                z[b, h, i] = torch.softmax(scores, 0) @ vh[seen]
    return attn.heads.combine(z, x)


@pytest.mark.parametrize("mask", [True, False])
def test_the_layer_matches_a_per_query_reference(mask: bool) -> None:
    attn = llama().blocks[0].attn
    x = torch.randn(2, LAYOUT.total, SPEC.d_model, dtype=torch.float64)
    got = pine_forward(attn, LAYOUT, x, parts=(mask, True))
    want = reference_layer(attn, x, LAYOUT, mask=mask)
    close64(got, want, n_layers=1)


def test_without_both_parts_pine_is_the_plain_model() -> None:
    model = llama()
    tokens = torch.randint(1, 31, (2, LAYOUT.total))
    close64(pine_logits(model, tokens, LAYOUT, mask=False, positions=False), model(tokens))


def test_the_mask_alone_is_the_core_with_pines_mask_at_the_indices() -> None:
    # PINE's mask at index positions, against the attention core under the same mask with the causal rule lifted
    model = llama()
    tokens = torch.randint(1, 31, (2, LAYOUT.total))
    with concentric(model):
        want = model(tokens, attention_mask=AttentionMask(visible=LAYOUT.visible()[None, None]))
    got = pine_logits(model, tokens, LAYOUT, positions=False)
    close64(got, want)
    assert (got - model(tokens)).abs().max() > 1e-3  # the mask does change the output


def test_each_part_alone_leaves_some_order_dependence() -> None:
    # only both parts together make the suffix independent of the documents' order
    model = llama()
    prefix, docs, suffix = segments(LAYOUT)
    layout = PineLayout(LAYOUT.prefix, tuple(LAYOUT.documents[i] for i in [3, 2, 1, 0]), LAYOUT.suffix)
    for parts in ({"mask": False}, {"positions": False}):
        a = pine_logits(model, permuted(prefix, docs, suffix, [0, 1, 2, 3]), LAYOUT, **parts)[:, -1]
        b = pine_logits(model, permuted(prefix, docs, suffix, [3, 2, 1, 0]), layout, **parts)[:, -1]
        assert (a - b).abs().max() > 1e-6, parts


def permuted(prefix: list[int], docs: list[list[int]], suffix: list[int], order: list[int]) -> torch.Tensor:
    return torch.tensor([[*prefix, *(t for i in order for t in docs[i]), *suffix]])


def test_reordering_the_documents_leaves_the_suffix_unchanged() -> None:
    model = llama()
    prefix, docs, suffix = segments(LAYOUT)
    want = pine_logits(model, permuted(prefix, docs, suffix, [0, 1, 2, 3]), LAYOUT)
    plain = model(permuted(prefix, docs, suffix, [0, 1, 2, 3]))
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        layout = PineLayout(LAYOUT.prefix, tuple(LAYOUT.documents[i] for i in order), LAYOUT.suffix)
        tokens = permuted(prefix, docs, suffix, order)
        got = pine_logits(model, tokens, layout)
        close64(got[:, -LAYOUT.suffix :], want[:, -LAYOUT.suffix :])
        close64(got[:, : LAYOUT.prefix], want[:, : LAYOUT.prefix])
        # the plain model is not invariant: the test can fail
        assert (model(tokens)[:, -1] - plain[:, -1]).abs().max() > 1e-3


def test_one_document_is_the_plain_model() -> None:
    model = llama()
    layout = PineLayout(2, (6,), 3)
    tokens = torch.randint(1, 31, (2, layout.total))
    close64(pine_logits(model, tokens, layout), model(tokens))


def test_a_transformer_lm_with_rope(make_lm) -> None:  # type: ignore[no-untyped-def]
    model = make_lm(position="rope").double()
    layout = PineLayout(2, (3, 4, 2), 2)
    prefix, docs, suffix = segments(layout)
    want = pine_logits(model, permuted(prefix, docs, suffix, [0, 1, 2]), layout)
    got = pine_logits(model, permuted(prefix, docs, suffix, [2, 0, 1]), PineLayout(2, (2, 3, 4), 2))
    close64(got[:, -2:], want[:, -2:])
    # the layers are restored afterwards
    tokens = permuted(prefix, docs, suffix, [0, 1, 2])
    assert torch.equal(model(tokens), model(tokens))
    assert "forward" not in model.blocks[0].attn.__dict__


def test_unsupported_layers_and_layouts_are_refused(make_lm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="position='alibi'"), pine(make_lm(position="alibi"), LAYOUT):
        pass
    with pytest.raises(ValueError, match="suffix >= 1"):
        PineLayout(2, (3,), 0)
    with pytest.raises(ValueError, match="documents"):
        PineLayout(2, (), 1)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_pine_runs_on_the_models_device(device: str) -> None:
    dtype = dtype_on(device)  # skips where the device is absent
    model = llama().to(dtype)
    tokens = torch.randint(1, 31, (2, LAYOUT.total))
    want = pine_logits(model, tokens, LAYOUT)
    got = pine_logits(model.to(device), tokens.to(device), LAYOUT).cpu()
    if dtype == torch.float64:
        close64(got, want)
    else:  # float32 on two devices: each within the order bound of the exact value
        bound = order_bound(torch.float32, LM_TERMS, lm_depth(2)) * scale_of(want)
        assert (got - want).abs().max().item() <= bound
