"""Learnable per-head vectors on ``blocks.{L}.attn.hook_z``: a scaling vector and / or an offset per listed head.

For head ``h`` with output ``z_h`` [B, T, d_head] (before the output projection)::

    z'_h = (1 + A_h) ⊙ z_h + v_h          A_h, v_h ∈ R^{d_head}

This is the parametrisation of LoFiT (Yin, Ye & Durrett, "LoFiT: Localized Fine-tuning on LLM Representations",
NeurIPS 2024, arXiv:2406.01563; code ``fc2869/lo-fit``, ``models/modeling_llama.py``: ``attn_A`` and ``attn_v``,
applied to the attention output before ``o_proj`` as ``(A + 1) * z + v``, both initialised from N(0, 1e-3²) in
``lofit_trainer.py``). With ``A`` and ``v`` at zero the edit is the identity. The module holds only the vectors; the
model is run through ``interventions.edit_heads`` (vector ``scale`` and ``offset``), so it works on every attnlab
model with ``hook_z`` hook points, and the model's own parameters are never touched.

``l1()`` is the penalty of the authors' trainers (``utils/trainers.py``: the sum of ``|p|`` over every trainable
parameter), ``scale_norms()`` / ``top_heads(k)`` the head selection of ``lofit_trainer.py`` (the L2 norm of each
head's ``A``, largest first). A learned offset can be folded into a bias of the output projection,
``W_o (z + v) = W_o z + W_o v``, so the deployed model costs nothing extra at inference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.lens.interventions import Head, check_heads, edit_heads, head_dim, head_label


class HeadOffsets(nn.Module):
    """A scaling vector ``A_h`` (``scale=True``) and / or an offset ``v_h`` (``offset=True``) per listed head.

    ``init_std`` > 0 draws both from N(0, init_std²) with ``generator`` (LoFiT: 1e-3); 0 starts at the identity.
    """

    def __init__(
        self,
        heads: Sequence[Head],
        d_head: int,
        *,
        scale: bool = False,
        offset: bool = True,
        init_std: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not heads:
            raise ConfigError("heads", "[]", "needs at least one head")
        if not scale and not offset:
            raise ConfigError("scale, offset", "False, False", "learn a scale, an offset or both")
        if init_std < 0:
            raise ConfigError("init_std", init_std, "must be >= 0")
        self.heads: list[Head] = [(int(layer), int(h)) for layer, h in heads]
        if len(set(self.heads)) != len(self.heads):
            raise ConfigError("heads", ",".join(map(head_label, self.heads)), "a head is listed twice")
        self.d_head = int(d_head)

        def vectors() -> nn.Parameter:
            values = torch.zeros(len(self.heads), self.d_head)
            if init_std > 0:
                values.normal_(0.0, init_std, generator=generator)
            return nn.Parameter(values)

        self.scale = vectors() if scale else None  # A [n_heads, d_head]
        self.offset = vectors() if offset else None  # v [n_heads, d_head]

    @classmethod
    def for_model(cls, model: nn.Module, heads: Sequence[Head], **kwargs: object) -> HeadOffsets:
        """``HeadOffsets`` for ``heads`` of ``model`` (checked), sized by the heads' ``d_head``."""
        heads = check_heads(model, heads)
        dims = {head_dim(model, layer) for layer, _ in heads}
        if len(dims) != 1:
            raise ConfigError("heads", ",".join(map(head_label, heads)), f"mix head sizes {sorted(dims)}")
        return cls(heads, dims.pop(), **kwargs)  # type: ignore[arg-type]

    def scales(self) -> dict[Head, Tensor]:
        """{head: 1 + A_h [d_head]} carrying the gradient; empty without ``scale``."""
        if self.scale is None:
            return {}
        return {head: 1.0 + self.scale[i] for i, head in enumerate(self.heads)}

    def offsets(self) -> dict[Head, Tensor]:
        """{head: v_h [d_head]} carrying the gradient; empty without ``offset``."""
        if self.offset is None:
            return {}
        return {head: self.offset[i] for i, head in enumerate(self.heads)}

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Run ``model`` with the (differentiable) vectors hooked onto its heads."""
        with edit_heads(model, scale=self.scales(), offset=self.offsets()):
            yield

    @contextmanager
    def deployed(self, model: nn.Module) -> Iterator[None]:
        """Run ``model`` with detached copies of the vectors (the learned edit, no gradient kept)."""
        scales = {h: s.detach().clone() for h, s in self.scales().items()}
        offsets = {h: v.detach().clone() for h, v in self.offsets().items()}
        with edit_heads(model, scale=scales, offset=offsets):
            yield

    def l1(self) -> Tensor:
        """``Σ |A| + Σ |v|`` over the learned vectors: the L1 penalty of LoFiT's trainers."""
        return torch.stack([p.abs().sum() for p in self.parameters()]).sum()

    def n_trained(self) -> int:
        """The number of learned numbers (``n_heads · d_head`` per kind of vector)."""
        return sum(p.numel() for p in self.parameters())

    def scale_norms(self) -> dict[Head, float]:
        """{head: ‖A_h‖₂}, the score LoFiT ranks heads by."""
        if self.scale is None:
            raise ConfigError("scale", False, "no scaling vectors were learned: nothing to rank heads by")
        norms = self.scale.detach().norm(dim=-1).tolist()
        return dict(zip(self.heads, norms, strict=True))

    def top_heads(self, k: int) -> list[Head]:
        """The ``k`` heads with the largest ‖A_h‖₂, largest first (ties: the earlier head)."""
        norms = self.scale_norms()
        if not 1 <= k <= len(norms):
            raise ConfigError("k", k, f"must be between 1 and the {len(norms)} heads scaled")
        return sorted(norms, key=lambda head: -norms[head])[:k]
