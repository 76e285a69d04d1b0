"""``AttentionConfig.qk_norm``: LayerNorm or RMSNorm on each head's q and k, on every heads module and path.

Known answers: the logits are bounded by the norms' gains however large the projections are; hook_q and hook_k
see the normalised vectors; cached decoding equals the full pass; every backend of a normaliser agrees with the
reference with the norms on; a config without the field keeps its JSON (and so its run id).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import HEADS, NORMALISERS, AttentionConfig
from attnlab.checks import liven
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from conftest import require_supported

D_MODEL, N_HEADS, VOCAB = 32, 4, 31


def lm(**attention) -> TransformerLM:
    cfg = ModelConfig(
        vocab_size=VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=2, max_seq_len=16, attention=attention
    )
    return liven(TransformerLM(cfg)).eval()


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("heads", HEADS.names())
def test_every_heads_module_runs_with_qk_norm_and_the_norm_changes_its_output(heads: str, kind: str) -> None:
    args = HEADS.entry(heads).example
    require_supported(causal=True, heads=heads, heads_args=args)
    torch.manual_seed(0)
    model = lm(heads=heads, heads_args=args, qk_norm=kind)
    tokens = torch.randint(0, VOCAB, (2, 8))
    logits = model(tokens)
    logits.square().mean().backward()
    norms = [m for name, m in model.named_modules() if name.endswith(("attn.q_norm", "attn.k_norm"))]
    assert len(norms) == 2 * 2 and all(m.weight.grad is not None for m in norms)  # two layers, q and k each
    with torch.no_grad():
        for m in norms:  # the output must follow the gains
            m.weight.mul_(3.0)
        assert (model(tokens) - logits).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_qk_norm_bounds_the_logits_however_large_the_projections(kind: str) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (2, 12))
    d = D_MODEL // N_HEADS
    for qk_norm in (None, kind):
        model = lm(qk_norm=qk_norm).double()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "qkv.weight")):
                    p.mul_(1e3)  # the logit growth of a high learning rate, made by hand
        with capture(model, ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"]) as acts:
            model(tokens)
        q, k = acts["blocks.0.attn.hook_rot_q"], acts["blocks.0.attn.hook_rot_k"]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        if qk_norm is None:
            assert logits.abs().max() > 1e3  # without the norms the logits follow the projections
            continue
        layer = model.blocks[0].attn
        # ‖x̂‖ = √d for both norms (unit RMS; LayerNorm also centres), RoPE keeps norms: |q·k|/√d ≤ ‖q‖‖k‖/√d
        bound = max_norm(layer.q_norm, d) * max_norm(layer.k_norm, d) / math.sqrt(d)
        assert logits.abs().max() <= bound * (1 + 1e-9)


def max_norm(norm: torch.nn.Module, d: int) -> float:
    """The largest ‖norm(x)‖ over x: max|gain| √d, plus ‖bias‖ for LayerNorm."""
    gain = float(norm.weight.detach().abs().max()) * math.sqrt(d)
    bias = getattr(norm, "bias", None)
    return gain + (float(bias.detach().norm()) if bias is not None else 0.0)


def test_the_q_and_k_hooks_see_the_normalised_vectors() -> None:
    torch.manual_seed(0)
    model = lm(qk_norm="rmsnorm", position="nope").double()
    layer = model.blocks[0].attn
    with torch.no_grad():
        layer.q_norm.weight.fill_(1.0)
        layer.k_norm.weight.fill_(1.0)
    with capture(model, ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k"]) as acts:
        model(torch.randint(0, VOCAB, (2, 8)))
    for name in ("hook_q", "hook_k"):
        rms = acts[f"blocks.0.attn.{name}"].square().mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-6)  # up to the norm's eps


@pytest.mark.parametrize("normaliser", ["softmax", "sigmoid", "cog", "lssa", "clipped_softmax"])
@torch.no_grad()
def test_cached_decoding_equals_the_full_pass_with_qk_norm(normaliser: str) -> None:
    torch.manual_seed(0)
    model = lm(normaliser=normaliser, qk_norm="layernorm").double()
    tokens = torch.randint(0, VOCAB, (2, 8))
    cache = model.new_cache()
    steps = torch.cat([model(tokens[:, i : i + 1], cache) for i in range(tokens.shape[1])], dim=1)
    torch.testing.assert_close(steps, model(tokens), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normaliser", ["softmax", "sigmoid", "cog", "lssa", "clipped_softmax"])
def test_every_backend_equals_the_reference_with_qk_norm(normaliser: str) -> None:
    backends = [b for b in NORMALISERS.capabilities(normaliser).backends if b != "reference"]
    tokens = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    reference = lm(normaliser=normaliser, qk_norm="rmsnorm", backend="reference").double()
    expected = reference(tokens)
    for backend in ["auto", *backends]:
        model = lm(normaliser=normaliser, qk_norm="rmsnorm", backend=backend).double()
        model.load_state_dict(reference.state_dict())
        torch.testing.assert_close(model(tokens), expected, rtol=1e-9, atol=1e-9, msg=f"backend {backend}")


def test_a_config_without_qk_norm_keeps_its_json_and_a_bad_value_is_one_line() -> None:
    assert "qk_norm" not in AttentionConfig().model_dump()
    assert AttentionConfig(qk_norm="rmsnorm").model_dump()["qk_norm"] == "rmsnorm"
    assert AttentionConfig.model_validate(AttentionConfig(qk_norm="layernorm").model_dump()).qk_norm == "layernorm"
    with pytest.raises(ConfigError) as err:
        AttentionConfig(qk_norm="batchnorm")
    assert "qk_norm" in str(err.value) and "batchnorm" in str(err.value) and "\n" not in str(err.value)
