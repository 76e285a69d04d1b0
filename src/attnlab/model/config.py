"""``ModelConfig``: a typed, frozen dataclass-like config of the Transformer (a strict pydantic model).

``mode`` picks the model: ``"decoder"`` (causal LM) and ``"encoder"`` (non-causal) are one stack, a
``TransformerLM``; ``"encoder_decoder"`` is an ``EncoderDecoder`` (``model/encdec.py``) with ``n_layers``
encoder and ``n_layers`` decoder blocks. ``attnlab.model.encdec.build_model`` returns the right one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from attnlab.attention.config import AttentionConfig, AttentionSite
from attnlab.config import StrictModel
from attnlab.errors import ConfigError


class ModelConfig(StrictModel):
    vocab_size: int = Field(gt=1)
    d_model: int = Field(64, gt=0)
    n_layers: int = Field(2, gt=0)  # per stack: an encoder-decoder has n_layers of each
    n_heads: int = Field(4, gt=0)
    d_mlp: int | None = Field(None, gt=0)  # None: 4 · d_model
    mlp: bool = True  # False: attention-only blocks
    # decoder: causal self-attention; encoder: non-causal; encoder_decoder: both, joined by cross-attention
    mode: Literal["decoder", "encoder", "encoder_decoder"] = "decoder"
    max_seq_len: int = Field(256, gt=0)  # the training length the attention sites are told about (source and target)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    tie_embeddings: bool = True
    attention: AttentionConfig = AttentionConfig()
    # encoder_decoder only: CAB's causal cross-attention (Zhang et al., arXiv:2210.07661): decoder position i reads
    # memory positions j ≤ i (the cross sites' ``causal_cross``), and the encoder is causal too, so target i depends
    # on source tokens ≤ i only (a non-causal encoder's memory at j ≤ i would already mix the whole source). Omitted
    # from the JSON when False, so run ids from before it stay.
    causal_cross: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.causal_cross and self.mode != "encoder_decoder":
            raise ConfigError("causal_cross", True, f"needs an encoder-decoder, not mode={self.mode!r}", [False])
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            raise ConfigError("n_heads", self.n_heads, f"does not divide d_model={self.d_model}", divisors)
        for layer in range(self.n_layers):
            self.attention.check_site(self.site(layer))
            if self.mode == "encoder_decoder":
                self.attention.check_site(self.decoder_site(layer))
                # The cross layers run without a position encoding (see cross_attention), so only the
                # normaliser and heads are checked for cross-attention; the error still names `attention`.
                self.cross_attention.check_site(self.cross_site(layer))
        return self

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump without ``causal_cross`` when False: configs (and run ids) from before it keep their JSON."""
        data = handler(self)
        if not self.causal_cross:
            data.pop("causal_cross", None)
        return data

    @property
    def causal(self) -> bool:
        """Whether the single stack (``site``) is causal: True only for ``mode="decoder"``."""
        return self.mode == "decoder"

    def site(self, layer: int) -> AttentionSite:
        """The self-attention site of ``layer`` in a single-stack model, or in an encoder-decoder's encoder (causal
        with ``causal_cross``)."""
        return AttentionSite(
            d_model=self.d_model,
            n_heads=self.n_heads,
            causal=self.causal or self.causal_cross,
            cross=False,
            layer_idx=layer,
            n_layers=self.n_layers,
            seq_len=self.max_seq_len,
        )

    def decoder_site(self, layer: int) -> AttentionSite:
        """The causal self-attention site of decoder ``layer`` in an encoder-decoder."""
        return AttentionSite(
            d_model=self.d_model,
            n_heads=self.n_heads,
            causal=True,
            cross=False,
            layer_idx=layer,
            n_layers=self.n_layers,
            seq_len=self.max_seq_len,
        )

    def cross_site(self, layer: int) -> AttentionSite:
        """The cross-attention site of decoder ``layer``: queries from the decoder, keys from the encoder output
        (``seq_len`` is the training source length, ``max_seq_len``); causal with ``causal_cross``."""
        return AttentionSite(
            d_model=self.d_model,
            n_heads=self.n_heads,
            causal=False,
            cross=True,
            causal_cross=self.causal_cross,
            layer_idx=layer,
            n_layers=self.n_layers,
            seq_len=self.max_seq_len,
        )

    @property
    def cross_attention(self) -> AttentionConfig:
        """The attention config of the cross layers: ``attention`` without a position encoding.

        Queries and keys come from different sequences, so a relative encoding (RoPE, ALiBi, T5) has no
        meaning there; as in T5 and the original Transformer, order enters through the self-attention layers
        and the input embeddings (absolute encodings are added once at each stack's input).
        """
        return AttentionConfig(**{**self.attention.model_dump(), "position": "nope", "position_args": {}})
