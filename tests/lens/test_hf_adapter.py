"""The transformers adapter: tiny random checkpoints saved to disk, loaded offline, patterns per layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.lens.metrics import head_table, sink_rate

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers", reason="the hf adapter needs transformers (extra `hf`)")

from attnlab.lens.pretrained.hf_adapter import checkpoint_kind, hf_patterns, hf_run_with_cache, load_hf  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


def test_a_causal_checkpoint_gives_causal_row_stochastic_patterns(llama_dir: Path) -> None:
    model = load_hf(llama_dir)
    assert checkpoint_kind(llama_dir) == "causal_lm" and not model.training
    tokens = torch.randint(0, 64, (2, 9))
    logits, cache = hf_run_with_cache(model, tokens)
    assert logits.shape == (2, 9, 64)
    pats = hf_patterns(model, tokens)
    assert sorted(cache) == [f"blocks.{i}.attn.hook_pattern" for i in range(3)]
    assert {layer: tuple(p.shape) for layer, p in pats.items()} == {i: (2, 4, 9, 9) for i in range(3)}
    for p in pats.values():
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 9))
        lower = torch.ones(9, 9, dtype=torch.bool).tril()
        assert (p[..., ~lower] == 0).all() and (p[..., lower] > 0).all()  # causal, every visible key weighted
    rows = head_table(pats)  # the lens metrics run on them unchanged
    assert len(rows) == 3 * 4 and 0 <= float(sink_rate(pats)) <= 1


def test_patterns_match_a_hand_computed_first_layer(llama_dir: Path) -> None:
    """Layer 0's pattern recomputed from the checkpoint's own weights: softmax(q kᵀ/√d) with RoPE, causal, GQA."""
    model = load_hf(llama_dir)
    tokens = torch.randint(0, 64, (1, 7))
    pats = hf_patterns(model, tokens)
    attn, x = model.model.layers[0].self_attn, model.model.embed_tokens(tokens)
    h = model.model.layers[0].input_layernorm(x)
    q = attn.q_proj(h).view(1, 7, 4, 8).transpose(1, 2)
    k = attn.k_proj(h).view(1, 7, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    inv = 1.0 / (model.config.rope_parameters["rope_theta"] ** (torch.arange(0, 8, 2).float() / 8))
    ang = torch.arange(7).float()[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(t: torch.Tensor) -> torch.Tensor:  # half-split pairs, as HF Llama
        return t * cos + torch.cat([-t[..., 4:], t[..., :4]], -1) * sin

    scores = rot(q) @ rot(k).transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(pats[0], scores.softmax(-1), atol=1e-5, rtol=1e-5)


def test_an_encoder_checkpoint_loads_as_a_base_model(bert_dir: Path) -> None:
    model = load_hf(bert_dir)
    assert checkpoint_kind(bert_dir) == "base"
    hidden, cache = hf_run_with_cache(model, torch.randint(0, 64, (1, 6)))
    assert hidden.shape == (1, 6, 32)
    p = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 4, 6))
    assert (p.triu(1) > 0).any()  # non-causal


def test_bad_paths_and_kinds_are_one_line_config_errors(tmp_path: Path, llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^path='.*nosuch': not a checkpoint directory"):
        load_hf(tmp_path / "nosuch")
    with pytest.raises(ConfigError, match=r"no readable config\.json"):
        load_hf(tmp_path)
    with pytest.raises(ConfigError, match=r"^kind='lm'"):
        load_hf(llama_dir, kind="lm")
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(ConfigError, match=r"transformers could not load it"):
        load_hf(tmp_path)  # a config but no weights: an error, never a download


def test_importing_attnlab_does_not_import_transformers() -> None:
    code = (
        "import sys, attnlab, attnlab.lens, attnlab.lens.pretrained.hf_adapter, attnlab.cli.experiments, "
        "attnlab.experiments.kv_eviction, attnlab.experiments.rope_scaling, attnlab.experiments.sinks, "
        "attnlab.experiments.ablation, attnlab.experiments.pear, attnlab.experiments.act; "
        "print('transformers' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_attnlab_inspect_reads_a_checkpoint_directory(llama_dir: Path) -> None:
    from typer.testing import CliRunner

    from attnlab.cli import app

    result = CliRunner().invoke(app, ["inspect", str(llama_dir), "--task", "induction", "--seq-len", "6", "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "heads by induction" in result.output and "first copy" in result.output
