"""An encoder-decoder Transformer (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762, §3.1),
pre-norm, and ``build_model`` which returns the model a ``ModelConfig`` describes.

Encoder: ``n_layers`` blocks of non-causal self-attention + MLP over the source, then a final norm; its output
is the memory. Decoder: ``n_layers`` blocks of causal self-attention, cross-attention (queries from the
decoder, keys and values from the memory) and MLP over the target, then the final norm and the unembedding.
One token embedding serves source, target and (if tied) the output. Every attention layer is
``build_attention(cfg.attention, site)``; the cross layers use ``cfg.cross_attention`` (the same mechanism
without a position encoding, see ``ModelConfig.cross_attention``). An absolute position encoding (learned,
sinusoidal) is added at each stack's input, with its own table per stack.

Hook points follow TransformerLens's ``HookedEncoderDecoder``: ``hook_embed``, ``hook_pos_embed`` (source),
``hook_dec_embed``, ``hook_dec_pos_embed`` (target); ``encoder.{L}.hook_resid_pre``, ``hook_attn_out``,
``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post`` and ``encoder.{L}.attn.hook_*``; in the decoder
also ``decoder.{L}.hook_cross_attn_out``, ``decoder.{L}.hook_resid_mid_cross`` and
``decoder.{L}.cross_attn.hook_*`` (``hook_q hook_k hook_v hook_rot_q hook_rot_k hook_attn_scores
hook_pattern hook_z`` as in every attention layer).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from attnlab.attention import Attention, KVCache, LayerKVCache, build_attention, build_input_position
from attnlab.attention.config import LayerShare
from attnlab.attention.masks import as_attention_mask, resolve_positions
from attnlab.hook_points import HookPoint
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import MLP, Block, TransformerLM, embed_positions, make_norm
from attnlab.types import AttentionMask


class DecoderBlock(nn.Module):
    """x ← x + SelfAttn(LN(x)); x ← x + CrossAttn(LN(x), memory); x ← x + MLP(LN(x)) (pre-norm)."""

    def __init__(self, cfg: ModelConfig, layer: int, shared: LayerShare, cross_shared: LayerShare):
        super().__init__()
        self.ln1 = make_norm(cfg.norm, cfg.d_model)
        self.attn: Attention = build_attention(
            cfg.attention, dataclasses.replace(cfg.decoder_site(layer), shared=shared)
        )
        self.ln2 = make_norm(cfg.norm, cfg.d_model)
        self.cross_attn: Attention = build_attention(
            cfg.cross_attention, dataclasses.replace(cfg.cross_site(layer), shared=cross_shared)
        )
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model) if cfg.mlp else None
        self.ln3 = make_norm(cfg.norm, cfg.d_model) if cfg.mlp else None
        for name in (
            "resid_pre",
            "attn_out",
            "resid_mid",
            "cross_attn_out",
            "resid_mid_cross",
            "mlp_out",
            "resid_post",
        ):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        cache: LayerKVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        mask: AttentionMask | None = None,
        memory_mask: AttentionMask | None = None,
    ) -> Tensor:
        """x [B, T, D] (decoder stream), memory [B, S, D] (encoder output) → [B, T, D]; ``mask`` for the
        self-attention, ``memory_mask`` (over the S memory keys) for the cross-attention."""
        x = self.hook_resid_pre(x)
        attn = self.attn(self.ln1(x), cache=cache, position_ids=position_ids, mask=mask)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn))
        cross = self.cross_attn(self.ln2(x), memory, mask=memory_mask)
        x = self.hook_resid_mid_cross(x + self.hook_cross_attn_out(cross))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(self.ln3(x)))
        return self.hook_resid_post(x)


class EncoderDecoder(nn.Module):
    """(target tokens [B, T], source tokens [B, S]) → logits [B, T, V] for the next target token.

    ``forward(tokens, source)`` is teacher-forced training and scoring; ``encode`` / ``decode`` split it, and
    ``generate`` decodes greedily with a KV cache on the decoder's self-attention.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mode != "encoder_decoder":
            raise ValueError(f"EncoderDecoder needs ModelConfig.mode='encoder_decoder'; got {cfg.mode!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = build_input_position(cfg.attention, cfg.site(0))  # absolute encodings only, else None
        self.dec_pos = build_input_position(cfg.attention, cfg.decoder_site(0))
        # One share per stack (see AttentionSite.shared); cross layers get their own.
        enc_shared, dec_shared, cross_shared = LayerShare(), LayerShare(), LayerShare()
        self.encoder = nn.ModuleList(Block(cfg, layer, enc_shared) for layer in range(cfg.n_layers))
        self.ln_enc = make_norm(cfg.norm, cfg.d_model)
        self.decoder = nn.ModuleList(
            DecoderBlock(cfg, layer, dec_shared, cross_shared) for layer in range(cfg.n_layers)
        )
        self.ln_f = make_norm(cfg.norm, cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.hook_dec_embed, self.hook_dec_pos_embed = HookPoint(), HookPoint()
        self.apply(TransformerLM._init)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        # GPT-2's residual scaling, per stack: std 0.02 / sqrt(number of residual writers in the stack).
        writers = {"encoder.": 2 * cfg.n_layers, "decoder.": 3 * cfg.n_layers}
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down.weight")):
                n = writers["encoder." if name.startswith("encoder.") else "decoder."]
                nn.init.normal_(p, std=0.02 / math.sqrt(n))

    def encode(
        self,
        source: Tensor,
        *,
        source_positions: Tensor | None = None,
        source_mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """source tokens [B, S] → memory [B, S, D]: the encoder's normalised output. ``source_positions`` [S] or
        [B, S]; ``source_mask``: key padding [B, S] (1 for real tokens) or an ``AttentionMask`` over the source."""
        if source.dim() != 2:
            raise ValueError(f"source must be [batch, time]; got shape {tuple(source.shape)}")
        positions = resolve_positions(source_positions, 0, source.shape[1], source.shape[0])
        mask = as_attention_mask(source_mask)
        x = self.hook_embed(self.embed(source))
        if self.pos is not None:
            pos = embed_positions(self.pos, 0, source.shape[1], source.device, positions)
            x = x + self.hook_pos_embed(pos.to(x.dtype))
        for block in self.encoder:
            x = block(x, position_ids=positions, mask=mask)
        return self.ln_enc(x)

    def decode(
        self,
        tokens: Tensor,
        memory: Tensor,
        cache: KVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        attention_mask: AttentionMask | Tensor | None = None,
        memory_mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """target tokens [B, T] and memory [B, S, D] → logits [B, T, V]; ``cache`` for incremental decoding.
        ``position_ids`` / ``attention_mask``: the target's, as in ``TransformerLM.forward``; ``memory_mask``: which
        memory keys the cross-attention sees (the source's key padding [B, S], or an ``AttentionMask``)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time]; got shape {tuple(tokens.shape)}")
        if memory.shape[0] != tokens.shape[0]:
            raise ValueError(f"source batch {memory.shape[0]} differs from target batch {tokens.shape[0]}")
        start = cache.length if cache is not None else 0
        positions = resolve_positions(position_ids, start, tokens.shape[1], tokens.shape[0])
        mask, cross_mask = as_attention_mask(attention_mask), as_attention_mask(memory_mask)
        x = self.hook_dec_embed(self.embed(tokens))
        if self.dec_pos is not None:
            pos = embed_positions(self.dec_pos, start, tokens.shape[1], tokens.device, positions)
            x = x + self.hook_dec_pos_embed(pos.to(x.dtype))
        for layer, block in enumerate(self.decoder):
            layer_cache = cache[layer] if cache is not None else None
            x = block(x, memory, layer_cache, position_ids=positions, mask=mask, memory_mask=cross_mask)
        return self.unembed(self.ln_f(x))

    def forward(
        self,
        tokens: Tensor,
        source: Tensor,
        cache: KVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        attention_mask: AttentionMask | Tensor | None = None,
        source_mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """Teacher forcing: decoder input tokens [B, T], source [B, S] → logits [B, T, V]. ``source_mask``: the
        source's key padding [B, S] (1 for real tokens), hiding padded source tokens from the encoder and from the
        cross-attention; ``position_ids`` / ``attention_mask``: the target's (``decode``)."""
        src_mask = as_attention_mask(source_mask)
        memory = self.encode(source, source_mask=src_mask)
        cross = None if src_mask is None or src_mask.key_padding is None else src_mask_padding(src_mask)
        return self.decode(
            tokens, memory, cache, position_ids=position_ids, attention_mask=attention_mask, memory_mask=cross
        )

    def new_cache(self) -> KVCache:
        """An empty KV cache for the decoder's self-attention layers (cross-attention re-reads the memory)."""
        for layer in range(self.cfg.n_layers):
            self.cfg.attention.check_kv_cache(self.cfg.decoder_site(layer), "ModelConfig.attention")
        return KVCache(self.cfg.n_layers)

    @torch.no_grad()
    def generate(self, source: Tensor, start: Tensor, n_new: int) -> Tensor:
        """Greedy decoding: source [B, S], decoder prefix ``start`` [B, T0] (e.g. BOS) → [B, T0 + n_new]."""
        memory = self.encode(source)
        cache = self.new_cache()
        logits = self.decode(start, memory, cache)
        out = [start]
        for _ in range(n_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            logits = self.decode(nxt, memory, cache)
        return torch.cat(out, dim=1)

    def aux_loss(self) -> Tensor | None:
        """Sum of the auxiliary losses (e.g. MoH's load balance) the last forward pass left on submodules."""
        losses = [
            m.aux_loss for m in self.modules() if m is not self and isinstance(getattr(m, "aux_loss", None), Tensor)
        ]
        return torch.stack(losses).sum() if losses else None

    def n_params(self) -> int:
        """The number of parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.parameters())


def src_mask_padding(mask: AttentionMask) -> AttentionMask:
    """The cross-attention's part of a source mask: its key padding (queries are target tokens, so a source
    ``visible`` or ``documents`` mask, over source queries, does not apply there)."""
    return AttentionMask(key_padding=mask.key_padding)


def build_model(cfg: ModelConfig) -> TransformerLM | EncoderDecoder:
    """The model ``cfg.mode`` describes: a ``TransformerLM`` (decoder or encoder) or an ``EncoderDecoder``."""
    return EncoderDecoder(cfg) if cfg.mode == "encoder_decoder" else TransformerLM(cfg)
