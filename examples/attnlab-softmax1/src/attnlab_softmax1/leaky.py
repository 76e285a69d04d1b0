"""A broken softmax1, for ``attnlab check``: it ignores the mask, so queries see the future.

Not an entry point (installing the package does not register it): ``attnlab check attnlab_softmax1.leaky``.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.normalisers.base import NORMALISERS, NoParams, NormaliserBase


@NORMALISERS.register("softmax1_leaky", summary="softmax1 that forgets the mask (broken on purpose)", params=NoParams)
class LeakySoftmax1(NormaliserBase):
    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        e = scores.exp()  # the mask is never applied
        return e / (1 + e.sum(-1, keepdim=True))
