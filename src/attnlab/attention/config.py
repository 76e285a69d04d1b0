"""``AttentionConfig``: which entry of each axis, with its arguments. ``AttentionSite``: where it is used."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from attnlab.attention import linear  # noqa: F401  (registers the kernel-attention family)
from attnlab.attention.heads import HEADS
from attnlab.attention.normalisers import NORMALISERS
from attnlab.config import StrictModel, validate_args
from attnlab.errors import ConfigError
from attnlab.position import POSITIONS
from attnlab.types import LatentKV

GENERIC_BACKENDS = ("auto", "reference")


@dataclass
class LayerShare:
    """What the layers of one model hand each other (CLLA: the latent KV of a group of layers, by group index).

    ``latents``: the first layer's latent of the tokens of the current forward pass, read by the group's later
    layers; ``cached``: during cached decoding, the latent of every cached token. The group's last reader removes
    its entry, so nothing outlives a pass (an empty share is falsy).
    """

    latents: dict[int, LatentKV] = field(default_factory=dict)
    cached: dict[int, LatentKV] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.latents or self.cached)


@dataclass(frozen=True)
class AttentionSite:
    """Where an attention module sits: sizes, masking, layer index, training length."""

    d_model: int
    n_heads: int
    causal: bool = True
    cross: bool = False
    # cross-attention that is causal: query i sees context keys j ≤ i + (S − T), the self-attention alignment (CAB's
    # "causal cross-attention": the context is aligned token for token with the queries); ``causal`` is the
    # self-attention rule and is not read at a cross site
    causal_cross: bool = False
    layer_idx: int = 0
    n_layers: int = 1
    seq_len: int | None = None  # training length: sigmoid's −log n, clipped softmax's α/T, learned tables
    # One per model, the same object in every layer's site: where cross-layer mechanisms (CLLA's shared
    # latent KV) meet. Not part of the site's identity.
    shared: LayerShare = field(default_factory=LayerShare, compare=False, hash=False, repr=False)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class AttentionConfig(StrictModel):
    """One point in the space normaliser × heads × position × backend.

    ``edge_normaliser`` replaces the normaliser in the first and last layers (Cog attention's layout:
    ``normaliser="cog", edge_normaliser="softmax"``).
    """

    normaliser: str = "softmax"
    normaliser_args: dict[str, Any] = {}
    heads: str = "mha"
    heads_args: dict[str, Any] = {}
    position: str = "rope"
    position_args: dict[str, Any] = {}
    edge_normaliser: str | None = None
    backend: str = "auto"  # auto | reference | a backend the normaliser declares (sdpa, chunked, ...)
    scale: float | None = None
    window: int | None = Field(None, gt=0)  # sliding-window attention: each query sees its last `window` keys
    # Normalise each head's query and key vectors (over d_head, one learned gain shared by the heads) before the
    # position rotates them: "qk-layernorm" (Dehghani et al. 2023, arXiv:2302.05442; Wortsman et al. 2023,
    # "Small-scale proxies for large-scale Transformer training instabilities", arXiv:2309.14322), which keeps
    # attention logits from growing at high learning rates; RMSNorm as in OLMo 2 and Qwen3.
    qk_norm: Literal["layernorm", "rmsnorm"] | None = None

    @model_validator(mode="after")
    def _known_entries(self) -> AttentionConfig:
        for registry, name in ((NORMALISERS, self.normaliser), (HEADS, self.heads), (POSITIONS, self.position)):
            if registry.entry(name).params is None:  # a plugin's registration without params=
                raise ConfigError(
                    registry.kind,
                    name,
                    "registered without params=: the layer builds it from a pydantic model of its arguments",
                    "params=NoParams (attnlab.attention.normalisers.base) when it takes none",
                )
        if self.edge_normaliser is not None and self.edge_normaliser not in NORMALISERS:
            raise ConfigError("edge_normaliser", self.edge_normaliser, "unknown normaliser", NORMALISERS.names())
        validate_args(NORMALISERS, self.normaliser, self.normaliser_args, "normaliser_args")
        validate_args(HEADS, self.heads, self.heads_args, "heads_args")
        validate_args(POSITIONS, self.position, self.position_args, "position_args")
        if self.backend not in GENERIC_BACKENDS:
            for name in {self.normaliser, self.edge_normaliser} - {None}:
                backends = NORMALISERS.capabilities(name).backends  # type: ignore[arg-type]
                if self.backend not in backends:
                    raise ConfigError(
                        "backend",
                        self.backend,
                        f"not available for normaliser {name!r}",
                        [*GENERIC_BACKENDS, *(b for b in backends if b != "reference")],
                    )
        return self

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump without ``qk_norm`` when off, so configs (and run ids) from before the field keep their JSON."""
        data = handler(self)
        if self.qk_norm is None:
            data.pop("qk_norm", None)
        return data

    def check_kv_cache(self, site: AttentionSite, field: str = "attention") -> None:
        """Reject KV-cache decoding with an entry that does not support it."""
        NORMALISERS.check(self.normaliser_at(site), "kv_cache", "KV-cache decoding", f"{field}.normaliser")
        HEADS.check(self.heads, "kv_cache", "KV-cache decoding", f"{field}.heads")
        POSITIONS.check(self.position, "kv_cache", "KV-cache decoding", f"{field}.position")

    def normaliser_at(self, site: AttentionSite) -> str:
        edge = site.layer_idx in (0, site.n_layers - 1)
        return self.edge_normaliser if (edge and self.edge_normaliser) else self.normaliser

    @property
    def label(self) -> str:
        """A short human name: the normaliser, then anything that differs from the plain defaults."""
        parts = [self.normaliser]
        if self.edge_normaliser:
            parts.append(f"edge={self.edge_normaliser}")
        if self.heads != "mha":
            parts.append(self.heads)
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.qk_norm is not None:
            parts.append(f"qk_norm={self.qk_norm}")
        for args in (self.normaliser_args, self.heads_args):
            parts += [f"{k}={v}" for k, v in sorted(args.items())]
        return "+".join(parts)

    def check_site(self, site: AttentionSite, field: str = "attention") -> None:
        """Reject a use (causal / non-causal / cross) or a pairing that an entry does not support."""
        use, cap = (
            ("cross-attention", "cross")
            if site.cross
            else ("causal attention", "causal")
            if site.causal
            else ("non-causal attention", "non_causal")
        )
        NORMALISERS.check(self.normaliser_at(site), cap, use, f"{field}.normaliser")
        HEADS.check(self.heads, cap, use, f"{field}.heads")
        POSITIONS.check(self.position, cap, use, f"{field}.position")
        if site.cross and site.causal_cross:  # causal cross-attention needs both
            NORMALISERS.check(self.normaliser_at(site), "causal", "causal cross-attention", f"{field}.normaliser")
            HEADS.check(self.heads, "causal", "causal cross-attention", f"{field}.heads")
        if POSITIONS.capabilities(self.position).needs_score_mod:
            for registry, name, key in (
                (NORMALISERS, self.normaliser_at(site), "normaliser"),
                (HEADS, self.heads, "heads"),
            ):
                if not registry.capabilities(name).score_mod:
                    raise ConfigError(
                        f"{field}.position",
                        self.position,
                        f"acts through a score_mod, which {key} {name!r} does not honour",
                        [p for p in POSITIONS.names() if not POSITIONS.capabilities(p).needs_score_mod],
                    )
        if NORMALISERS.capabilities(self.normaliser_at(site)).kernel and not HEADS.capabilities(self.heads).kernel_ok:
            raise ConfigError(
                f"{field}.heads",
                self.heads,
                f"computes attention itself and cannot host the kernel normaliser {self.normaliser_at(site)!r}",
                HEADS.supporting("kernel_ok"),
            )
        if POSITIONS.capabilities(self.position).owns_attention:
            norm = self.normaliser_at(site)
            if NORMALISERS.capabilities(norm).kernel:
                raise ConfigError(
                    f"{field}.normaliser",
                    norm,
                    f"is kernel attention; position {self.position!r} computes q·k scores itself",
                    [n for n in NORMALISERS.names() if not NORMALISERS.capabilities(n).kernel],
                )
            if not HEADS.capabilities(self.heads).kernel_ok:
                raise ConfigError(
                    f"{field}.heads",
                    self.heads,
                    f"computes attention itself, as position {self.position!r} does",
                    HEADS.supporting("kernel_ok"),
                )
        for registry, name, args, key in (
            (NORMALISERS, self.normaliser_at(site), self.normaliser_args, "normaliser_args"),
            (HEADS, self.heads, self.heads_args, "heads_args"),
            (POSITIONS, self.position, self.position_args, "position_args"),
        ):
            params = registry.entry(name).params
            if name == self.normaliser_at(site) != self.normaliser:
                args = {}
            checker = getattr(params.model_validate(args), "check_site", None)
            if checker is not None:
                checker(site, f"{field}.{key}")
        if site.d_model % site.n_heads:
            raise ConfigError(
                "n_heads",
                site.n_heads,
                f"does not divide d_model={site.d_model}",
                [h for h in range(1, site.d_model + 1) if site.d_model % h == 0 and h <= 64],
            )
