"""Models with position ids and attention masks: a padded batch equals its sequences run one by one.

TransformerLM (decoder and encoder, right- and left-padded), the encoder-decoder (padded sources), the Llama
decoder (GQA + RoPE) and packed documents; outputs are compared at the real tokens only, in float64 (the padded
rows' outputs are whatever the layers make of them: rows that see no key get attention output 0, never NaN).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig
from attnlab.checks import liven
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import EncoderDecoder
from attnlab.types import AttentionMask
from tolerances import LM_TERMS, lm_depth, order_bound, scale_of

LENGTHS = [7, 4, 6]


def close64(got: torch.Tensor, want: torch.Tensor, n_layers: int = 2) -> None:
    bound = order_bound(torch.float64, LM_TERMS, lm_depth(n_layers)) * scale_of(want)
    err = (got - want).abs().max().item()
    assert err <= bound, f"{err:.3e} > {bound:.3e}"


def padded(
    lengths: list[int], vocab: int = 31, left: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random sequences, the batch padded with token 0 (right, or left), and its key padding mask [B, T]."""
    seqs = [torch.randint(1, vocab, (n,)) for n in lengths]
    t = max(lengths)
    batch = torch.zeros(len(seqs), t, dtype=torch.long)
    real = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, s in enumerate(seqs):
        span = slice(t - len(s), t) if left else slice(0, len(s))
        batch[i, span], real[i, span] = s, True
    return seqs, batch, real


ATTENTIONS = [
    dict(),
    dict(position="alibi"),
    dict(position="t5"),
    dict(position="learned"),
    dict(position="sinusoidal", heads="gqa", heads_args={"n_kv_heads": 2}),
    dict(normaliser="sigmoid"),
    dict(heads="differential"),
    dict(window=3, backend="chunked"),
]


@pytest.mark.parametrize("attention", ATTENTIONS, ids=[str(a) for a in ATTENTIONS])
@pytest.mark.parametrize("mode", ["decoder", "encoder"])
def test_a_right_padded_batch_equals_each_sequence_alone(make_lm, attention: dict, mode: str) -> None:
    model = make_lm(mode=mode, **attention).double()
    seqs, batch, real = padded(LENGTHS)
    logits = model(batch, attention_mask=real)
    for i, s in enumerate(seqs):
        close64(logits[i, : len(s)], model(s[None])[0])


@pytest.mark.parametrize("attention", [dict(), dict(position="alibi"), dict(position="learned")])
def test_a_left_padded_batch_with_position_ids_equals_each_sequence_alone(make_lm, attention: dict) -> None:
    """Hugging Face's generation layout: pads first, positions counted over the real tokens only. The pads' own
    queries see no key (all of their causal past is padding): output 0 there, no NaN anywhere."""
    model = make_lm(**attention).double()
    seqs, batch, real = padded(LENGTHS, left=True)
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(batch, position_ids=positions, attention_mask=real)
    assert torch.isfinite(logits).all()
    for i, s in enumerate(seqs):
        close64(logits[i, -len(s) :], model(s[None])[0])


def test_a_left_padded_batch_decodes_with_the_cache(make_lm) -> None:
    """Greedy decoding of a left-padded batch (positions and the mask over every cached key) equals decoding each
    prompt alone."""
    model = make_lm(position="alibi").double()
    seqs, batch, real = padded(LENGTHS, left=True)
    cache = model.new_cache()
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(batch, cache, position_ids=positions, attention_mask=real)
    steps = []
    for _ in range(3):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        steps.append(nxt)
        real = torch.cat([real, torch.ones(len(seqs), 1, dtype=torch.bool)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(nxt, cache, position_ids=positions, attention_mask=real)
    batched = torch.cat(steps, dim=1)
    for i, s in enumerate(seqs):
        alone = model.generate(s[None], 3)[0, len(s) :]
        assert torch.equal(batched[i], alone)


def test_packed_documents_equal_each_document_alone(make_lm) -> None:
    model = make_lm(position="rope").double()
    seqs = [torch.randint(1, 31, (n,)) for n in LENGTHS]
    packed = torch.cat(seqs)[None]
    docs = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])[None]
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    logits = model(packed, position_ids=positions, attention_mask=AttentionMask(documents=docs))
    start = 0
    for s in seqs:
        close64(logits[0, start : start + len(s)], model(s[None])[0])
        start += len(s)


def test_an_encoder_decoder_with_padded_sources_equals_each_pair_alone() -> None:
    cfg = ModelConfig(
        vocab_size=31, d_model=32, n_heads=4, n_layers=2, mode="encoder_decoder", max_seq_len=16,
        attention=AttentionConfig(position="learned"),
    )  # fmt: skip
    model = liven(EncoderDecoder(cfg)).eval().double()
    sources, src_batch, src_real = padded(LENGTHS)
    targets, tgt_batch, tgt_real = padded([3, 5, 2])
    logits = model(tgt_batch, src_batch, attention_mask=tgt_real, source_mask=src_real)
    for i, (s, t) in enumerate(zip(sources, targets, strict=True)):
        close64(logits[i, : len(t)], model(t[None], s[None])[0], n_layers=4)


def test_the_llama_decoder_takes_padding_and_positions() -> None:
    spec = LlamaSpec(
        n_layers=2, d_model=32, d_mlp=64, n_heads=4, n_kv_heads=2, vocab_size=31, rope_base=10000.0,
        rms_eps=1e-5, context_length=64,
    )  # fmt: skip
    model = liven(LlamaLM(spec)).eval().double()
    seqs, batch, real = padded(LENGTHS, left=True)
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(batch, position_ids=positions, attention_mask=real)
    for i, s in enumerate(seqs):
        close64(logits[i, -len(s) :], model(s[None])[0])
    x = torch.randint(0, 31, (2, 6))
    assert torch.equal(model(x, position_ids=torch.arange(6), attention_mask=torch.ones(2, 6)), model(x))
