"""One training run evaluated under several position encodings (``TrainConfig.extrapolate_positions``), and the
position swap it uses (``attnlab.model.positions.with_position``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.model.positions import with_position
from attnlab.report.tables import extrapolation_key, lower_is_better, metric_name
from attnlab.runner.config import RunConfig
from attnlab.tasks.mqar import MQARConfig
from attnlab.train import TrainConfig, train

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
SHORT = TrainConfig(steps=4, batch_size=8, eval_every=2, eval_examples=32, extrapolate=[2])


def lm(position: str = "rope") -> ModelConfig:
    return ModelConfig(
        vocab_size=16, d_model=16, n_layers=2, n_heads=2, max_seq_len=16, attention={"position": position}
    )


def test_swapping_rope_for_rope_keeps_the_logits_bitwise() -> None:
    torch.manual_seed(0)
    model = build_model(lm()).eval()
    tokens = torch.randint(0, 16, (2, 40))
    before = model(tokens)
    swapped = with_position(copy.deepcopy(model), "rope")
    assert torch.equal(swapped(tokens), before)


def test_the_swap_changes_the_encoding_and_keeps_every_weight() -> None:
    torch.manual_seed(0)
    model = build_model(lm()).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 16, (1, 48))
    before = model(tokens)
    with_position(model, "alibi")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert {type(b.attn.position).__name__ for b in model.blocks} == {type(model.blocks[0].attn.position).__name__}
    assert "alibi" in type(model.blocks[0].attn.position).__module__
    assert not torch.allclose(model(tokens), before)  # a different encoding: different logits


@pytest.mark.parametrize(
    ("own", "target", "problem"),
    [
        ("rope", "no_such_position", "not a registered"),
        ("rope", "learned", "is absolute"),
        ("learned", "rope", "absolute"),
    ],
)
def test_an_impossible_swap_is_one_clear_error(own: str, target: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        with_position(build_model(lm(own)), target)


def test_a_run_evaluates_the_same_weights_under_each_named_encoding() -> None:
    cfg = SHORT.model_copy(update={"extrapolate_positions": ["rope_ntk_dynamic"]})
    final = train(lm(), TASK, cfg, seed=0).final
    plain = train(lm(), TASK, SHORT, seed=0).final
    # the extra evaluations change nothing of the run itself
    assert {k: v for k, v in final.items() if "[" not in k and k != "train_s"} == {
        k: v for k, v in plain.items() if k != "train_s"
    }
    # dynamic NTK scaling leaves RoPE unchanged up to the training length, so at 1× it is the same evaluation
    assert final["loss@1x[rope_ntk_dynamic]"] == final["loss"]
    assert final["accuracy@1x[rope_ntk_dynamic]"] == final["accuracy"]
    assert math.isfinite(final["loss@2x[rope_ntk_dynamic]"])
    assert final["loss@2x[rope_ntk_dynamic]"] != final["loss@2x"]  # beyond it the frequencies are rescaled


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"extrapolate_positions.*needs length factors"):
        TrainConfig(extrapolate_positions=["rope_ntk_dynamic"])
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig(extrapolate=[2], extrapolate_positions=["yarn", "yarn"])
    with pytest.raises(ConfigError, match=r"train.extrapolate_positions.*learned.*not a relative"):
        RunConfig(task=TASK, model=lm(), train=SHORT.model_copy(update={"extrapolate_positions": ["learned"]}))
    with pytest.raises(ConfigError, match="absolute"):
        RunConfig(task=TASK, model=lm("learned"), train=SHORT.model_copy(update={"extrapolate_positions": ["rope"]}))


def test_an_unused_field_keeps_old_run_ids() -> None:
    assert "extrapolate_positions" not in SHORT.model_dump()


def test_the_reports_read_the_variant_metrics() -> None:
    assert extrapolation_key("loss@2x[rope_ntk_dynamic]") == ("loss[rope_ntk_dynamic]", 2.0)
    assert extrapolation_key("loss@2x") == ("loss", 2.0)
    assert metric_name("accuracy@4x[yarn]") == "accuracy"
    assert lower_is_better("loss@4x[yarn]") and not lower_is_better("accuracy@4x[yarn]")
