"""``explain_model`` names, for every attention layer, the path its forward pass takes: the same ``choose``."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, dispatch
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.model.explain import explain_model, format_explanation
from attnlab.sweeps.quick import SWEEP

T = 32


def demo_models() -> list[ModelConfig]:
    """The demo sweep's models (one per mechanism; the learning rates share a model)."""
    models: dict[str, ModelConfig] = {}
    for run in SWEEP.runs():
        models.setdefault(run.model.digest(), run.model)
    return list(models.values())


OTHER_MODELS = {
    "sigmoid+alibi+window": dict(normaliser="sigmoid", position="alibi", window=8),
    "softmax+short-window": dict(window=4),  # T ≥ 4·window: the tiles on CPU
    "softmax+t5": dict(position="t5"),
    "sinks+alibi": dict(heads="sinks", position="alibi"),
    "lssa-chunked": dict(normaliser="lssa", backend="chunked"),
    "retnet-recurrent": dict(normaliser="retnet", position="nope", backend="recurrent"),
}


def model_config(**attention) -> ModelConfig:
    return ModelConfig(
        vocab_size=64, d_model=64, n_layers=2, n_heads=4, mlp=False, attention=AttentionConfig(**attention)
    )


def paths_taken(cfg: ModelConfig, monkeypatch: pytest.MonkeyPatch, hooks: list[str]) -> list[str]:
    """The paths the forward pass takes, layer by layer, recorded by a spy on ``dispatch.choose``."""
    taken: list[str] = []
    real = dispatch.choose

    def spy(call: dispatch.Call) -> dispatch.Choice:
        choice = real(call)
        taken.append(choice.path)
        return choice

    monkeypatch.setattr(dispatch, "choose", spy)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad(), capture(model, hooks):
        model(torch.randint(0, cfg.vocab_size, (2, T)))
    return taken


CASES = [(f"demo-{cfg.attention.label}", cfg) for cfg in demo_models()] + [
    (name, model_config(**attention)) for name, attention in OTHER_MODELS.items()
]


@pytest.mark.parametrize("hooks", [[], ["blocks.1.attn.hook_pattern"]], ids=["no-hooks", "pattern-hook"])
@pytest.mark.parametrize("cfg", [cfg for _, cfg in CASES], ids=[name for name, _ in CASES])
def test_explain_names_the_path_the_forward_pass_takes(cfg, hooks, monkeypatch, native_kernels) -> None:
    rows = explain_model(cfg, seq_len=T, hooks=hooks)
    assert [row.module for row in rows] == [f"blocks.{i}.attn" for i in range(cfg.n_layers)]
    assert [row.path for row in rows] == paths_taken(cfg, monkeypatch, hooks)
    if hooks:
        assert rows[1].path in ("reference", "heads", "normaliser")  # a path that returns the weights


def test_the_demo_and_a_sigmoid_alibi_window_model_take_the_documented_paths(native_kernels) -> None:
    """Softmax with RoPE is PyTorch's SDPA; sigmoid (no SDPA form) with ALiBi and a window is the reference."""
    softmax = next(cfg for cfg in demo_models() if cfg.attention.label == "softmax")
    assert {row.path for row in explain_model(softmax, seq_len=T)} == {"sdpa"}
    rows = explain_model(model_config(**OTHER_MODELS["sigmoid+alibi+window"]), seq_len=T)
    assert {(row.normaliser, row.position, row.path, row.rule) for row in rows} == {
        ("sigmoid", "alibi", "reference", "no-faster-path")
    }
    assert {row.rule for row in explain_model(model_config(window=4), seq_len=T)} == {"window-on-kernels"}


def test_the_table_lists_every_layer_with_its_rule() -> None:
    rows = explain_model(model_config(**OTHER_MODELS["sigmoid+alibi+window"]), seq_len=T)
    text = format_explanation(rows).splitlines()
    assert text[0].split()[:3] == ["module", "layer", "site"]
    assert len(text) == 2 + len(rows)
    for row, line in zip(rows, text[2:], strict=True):
        assert line.split()[:2] == [row.module, str(row.layer)] and row.rule in line


def test_encoder_decoder_layers_are_self_and_cross() -> None:
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, mode="encoder_decoder")
    sites = [(row.module, row.site, row.path) for row in explain_model(cfg, seq_len=8)]
    assert sites == [
        ("encoder.0.attn", "self", "sdpa"),
        ("decoder.0.attn", "self", "sdpa"),
        ("decoder.0.cross_attn", "cross", "sdpa"),
    ]


def test_an_unknown_hook_name_is_one_line_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"hooks='blocks\.9\.attn\.hook_pattern': unknown hook point \(allowed: "):
        explain_model(model_config(), hooks=["blocks.9.attn.hook_pattern"])
