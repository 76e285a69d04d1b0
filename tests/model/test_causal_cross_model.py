"""``ModelConfig.causal_cross``: the encoder-decoder's cross sites are causal and its encoder is causal, so target
position i does not depend on source tokens after i; off, it does (the same check fails); the flag is omitted from
the JSON when off and refused outside an encoder-decoder; the loop trains prefix_sum with it."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.tasks.prefix_sum import PrefixSumConfig
from attnlab.train import TrainConfig
from attnlab.train.loop import train


def config(causal_cross: bool, **attention) -> ModelConfig:
    return ModelConfig(
        vocab_size=11,
        d_model=16,
        n_layers=2,
        n_heads=2,
        mode="encoder_decoder",
        max_seq_len=12,
        causal_cross=causal_cross,
        attention=attention or {},
    )


@pytest.mark.parametrize("attention", [{}, {"backend": "reference"}, {"position": "learned"}])
@pytest.mark.parametrize("causal_cross", [True, False])
def test_target_i_reads_source_tokens_up_to_i_only(causal_cross: bool, attention: dict) -> None:
    torch.manual_seed(0)
    model = build_model(config(causal_cross, **attention)).double().eval()
    g = torch.Generator().manual_seed(1)
    source = torch.randint(1, 11, (3, 12), generator=g)
    target = torch.randint(1, 11, (3, 12), generator=g)
    with torch.no_grad():
        base = model(target, source=source)
        for cut in (0, 5, 10):
            changed = source.clone()
            changed[:, cut + 1 :] = 1 + changed[:, cut + 1 :] % 10  # every source token after `cut` differs
            logits = model(target, source=changed)
            same = torch.allclose(logits[:, : cut + 1], base[:, : cut + 1], rtol=0, atol=1e-12)
            assert same == causal_cross
            assert not torch.allclose(logits[:, cut + 1 :], base[:, cut + 1 :], rtol=0, atol=1e-12)


def test_the_sites_and_the_json() -> None:
    on, off = config(True), config(False)
    assert on.cross_site(0).causal_cross and on.site(0).causal and on.decoder_site(0).causal
    assert not off.cross_site(0).causal_cross and not off.site(0).causal
    assert "causal_cross" not in off.model_dump() and on.model_dump()["causal_cross"] is True
    assert ModelConfig.parse(on.model_dump()) == on
    with pytest.raises(ConfigError, match="causal_cross"):
        ModelConfig(vocab_size=11, causal_cross=True)


def test_the_loop_trains_prefix_sums_with_causal_cross_attention() -> None:
    task = PrefixSumConfig(length=12, delay=1)
    cfg = TrainConfig(steps=4, batch_size=8, eval_every=2, eval_examples=16, extrapolate=[2.0])
    result = train(config(True), task, cfg, seed=0)
    assert result.final["steps"] == 4 and 0 <= result.final["accuracy"] <= 1
    assert "accuracy@2x" in result.final
