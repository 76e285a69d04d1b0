"""A small pre-norm Transformer language model (decoder) or encoder, nanoGPT-sized.

It never names an attention mechanism: every layer is ``build_attention(cfg.attention, site)``.
Hook points follow TransformerLens: ``hook_embed``, ``hook_pos_embed``, ``blocks.{L}.hook_resid_pre``,
``hook_attn_out``, ``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post``, and inside
``blocks.{L}.attn``: ``hook_q hook_k hook_v hook_rot_q hook_rot_k hook_attn_scores hook_pattern hook_z``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from attnlab.attention import Attention, KVCache, build_attention, build_input_position
from attnlab.attention.config import LayerShare
from attnlab.attention.masks import as_attention_mask, resolve_positions
from attnlab.errors import ConfigError
from attnlab.hook_points import HookPoint
from attnlab.model.config import ModelConfig
from attnlab.position.base import PositionEncoding
from attnlab.types import AttentionMask


class PositionRangeError(ValueError):
    """A sequence reaches beyond what the model's absolute position table holds (learned positions have
    ``max_positions`` rows and cannot extrapolate). The training loop catches it when evaluating longer
    sequences and records NaN instead of failing the run."""


def embed_positions(
    pos: PositionEncoding, start: int, length: int, device: torch.device, position_ids: Tensor | None = None
) -> Tensor:
    """The absolute position embeddings [T, D] of positions ``start … start + length − 1``, or of the caller's
    ``position_ids`` ([T] → [T, D], [B, T] → [B, T, D]; ``masks.resolve_positions`` has checked them).

    An encoding with a finite table (``max_positions``, e.g. learned positions) rejects positions past it
    with a ValueError; that is re-raised as :class:`PositionRangeError` with the same message.
    """
    positions = torch.arange(start, start + length, device=device) if position_ids is None else position_ids
    try:
        return pos.embed(positions)
    except ValueError as err:
        limit = getattr(pos, "max_positions", None)
        if isinstance(limit, int) and positions.numel() and int(positions.max()) + 1 > limit:
            raise PositionRangeError(str(err)) from err
        raise


def make_norm(kind: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if kind == "layernorm" else nn.RMSNorm(dim)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_mlp)
        self.down = nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(nn.functional.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, shared: LayerShare | None = None):
        super().__init__()
        self.ln1 = make_norm(cfg.norm, cfg.d_model)
        site = cfg.site(layer) if shared is None else dataclasses.replace(cfg.site(layer), shared=shared)
        self.attn: Attention = build_attention(cfg.attention, site)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model) if cfg.mlp else None
        self.ln2 = make_norm(cfg.norm, cfg.d_model) if cfg.mlp else None
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
        layer_cache = cache[layer] if cache else None
        attn = self.attn(self.ln1(x), cache=layer_cache, position_ids=position_ids, mask=mask)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class CausalLM(nn.Module):
    """What every causal language model of attnlab shares: ``forward(tokens, cache)`` and ``new_cache()``
    are the subclass's; greedy decoding with the cache and the parameter count are here."""

    @torch.no_grad()
    def generate(self, tokens: Tensor, n_new: int) -> Tensor:
        """Greedy decoding with the KV cache: [B, T] → [B, T + n_new]."""
        cache = self.new_cache()
        logits = self(tokens, cache)
        out = [tokens]
        for _ in range(n_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            logits = self(nxt, cache)
        return torch.cat(out, dim=1)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class TransformerLM(CausalLM):
    """tokens [B, T] → logits [B, T, V]. Decoder (causal) or encoder (non-causal) by ``cfg.mode``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mode == "encoder_decoder":
            raise ConfigError(
                "ModelConfig.mode",
                cfg.mode,
                "TransformerLM is one stack; attnlab.model.encdec.build_model builds the encoder-decoder",
                ["decoder", "encoder"],
            )
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = build_input_position(cfg.attention, cfg.site(0))  # absolute encodings only, else None
        shared = LayerShare()  # one per model: cross-layer mechanisms meet here (see AttentionSite.shared)
        self.blocks = nn.ModuleList(Block(cfg, layer, shared) for layer in range(cfg.n_layers))
        self.ln_f = make_norm(cfg.norm, cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        # GPT-2: residual-stream writers scaled by 1/sqrt(2·n_layers) so the stream does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(
        self,
        tokens: Tensor,
        cache: KVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        attention_mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """tokens [B, T] → logits [B, T, V].

        ``position_ids`` [T] or [B, T] (default: the indices, after the cache): the absolute embedding's rows and
        every layer's positions (RoPE, ALiBi, T5, ...). ``attention_mask``: an ``attnlab.types.AttentionMask``, or a
        key-padding tensor [B, Tk] (1 for real tokens) or a boolean [B, Tq, Tk]; every layer ands it with its own
        causal / window rule. Both cover the cached keys too when decoding with a cache.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time]; got shape {tuple(tokens.shape)}")
        start = cache.length if cache is not None else 0
        positions = resolve_positions(position_ids, start, tokens.shape[1], tokens.shape[0])
        mask = as_attention_mask(attention_mask)
        x = self.hook_embed(self.embed(tokens))  # [B, T, D]
        if self.pos is not None:
            pos = embed_positions(self.pos, start, tokens.shape[1], tokens.device, positions)
            x = x + self.hook_pos_embed(pos.to(x.dtype))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, position_ids=positions, mask=mask)
        return self.unembed(self.ln_f(x))  # [B, T, V]

    def aux_loss(self) -> Tensor | None:
        """Sum of the auxiliary losses (e.g. MoH's load balance) the last forward pass left on submodules.

        A module that has one sets ``self.aux_loss`` (already weighted by its coefficient) in its forward.
        """
        losses = [
            m.aux_loss for m in self.modules() if m is not self and isinstance(getattr(m, "aux_loss", None), Tensor)
        ]
        return torch.stack(losses).sum() if losses else None

    def new_cache(self) -> KVCache:
        if not self.cfg.causal:
            raise ValueError("a KV cache is for causal decoding; this model is an encoder (mode='encoder')")
        for layer in range(self.cfg.n_layers):
            self.cfg.attention.check_kv_cache(self.cfg.site(layer), "ModelConfig.attention")
        return KVCache(self.cfg.n_layers)
