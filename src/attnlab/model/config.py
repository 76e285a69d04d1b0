"""``ModelConfig``: a typed, frozen dataclass-like config of the Transformer (a strict pydantic model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from attnlab.attention.config import AttentionConfig, AttentionSite
from attnlab.config import StrictModel
from attnlab.errors import ConfigError


class ModelConfig(StrictModel):
    vocab_size: int = Field(gt=1)
    d_model: int = Field(64, gt=0)
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(4, gt=0)
    d_mlp: int | None = Field(None, gt=0)  # None: 4 · d_model
    mlp: bool = True  # False: attention-only blocks
    mode: Literal["decoder", "encoder"] = "decoder"  # encoder: non-causal self-attention
    max_seq_len: int = Field(256, gt=0)  # the training length the attention sites are told about
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    tie_embeddings: bool = True
    attention: AttentionConfig = AttentionConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            raise ConfigError("n_heads", self.n_heads, f"does not divide d_model={self.d_model}", divisors)
        for layer in range(self.n_layers):
            self.attention.check_site(self.site(layer))
        return self

    @property
    def causal(self) -> bool:
        return self.mode == "decoder"

    def site(self, layer: int) -> AttentionSite:
        return AttentionSite(
            d_model=self.d_model,
            n_heads=self.n_heads,
            causal=self.causal,
            cross=False,
            layer_idx=layer,
            n_layers=self.n_layers,
            seq_len=self.max_seq_len,
        )
