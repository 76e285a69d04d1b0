"""Attention sinks (gpt-oss logits, learned sink key/value pairs) through PyTorch's fused SDPA kernel, exactly.

On CPU (``sdpa_flash.FlashWithSinks``): the flash op runs over the real keys only and
returns its log-sum-exp ℓ_i; the n sink scores z_is (gpt-oss logits ℓ_{h,s}, or ŝ q·σ_k) are merged in:
L_i = log(e^ℓ_i + Σ_s e^z_is), out = e^{ℓ−L}·o + Σ_s e^{z−L} σ_v. The flash *backward* op recomputes
P = exp(s − lse) and dS = P ⊙ (dO·v − rowsum(dO ⊙ out)): handed the total L and the merged out, it returns the
exact dq, dk, dv of attention over [sinks ⧺ keys]; the sinks' own gradients are n columns. Cost: one SDPA
call plus O(T·n). Other devices: the n sinks are prepended keys of one SDPA call. gpt-oss logits enter
through indicator columns (q'_i gets ℓ_h in n columns, sink key s is e_s, real keys are zero there), so dℓ
arrives through SDPA's dq; kv sinks are the keys σ_k with values σ_v; one more value column (1 on sinks)
returns the sink mass. Causal with Tq = Tk uses ``is_causal`` (top-left aligned) with n zero dummy queries
prepended, so real query i (row n + i) sees every sink and keys ≤ i. Windows and KV caches use a boolean
mask with the sink columns visible. Sinks combine with ALiBi (the sinks carry no position). The sink mass
is returned without a gradient.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.fast.sdpa_augmented import augmented_sdpa
from attnlab.types import AlibiBias


def sinks_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    sink_logits: Tensor | None = None,
    sink_keys: Tensor | None = None,
    sink_values: Tensor | None = None,
    alibi: AlibiBias | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax attention over [sinks ⧺ keys] via SDPA: (out [B, H, Tq, Dv], sink mass [B, H, Tq]).

    ``sink_logits`` [H, n] (gpt-oss: the sink score is ℓ_{h,s}, its value 0), or ``sink_keys`` [Hkv, n, D] and
    ``sink_values`` [Hkv, n, Dv] (scored ŝ q·σ_k, value σ_v). Sinks carry no position and are visible to every
    query, also under a window or a KV cache. Exact: logits enter through indicator columns (q' = [ℓ_h | ŝq],
    sink key [e_s | 0], real key [0 | k]), so SDPA's dq carries dℓ; the sink mass is an extra value column.
    ``alibi``: the ALiBi bias on the real keys (as ``alibi_sdpa``).
    """
    if sink_logits is None and sink_keys is None:
        raise ValueError("give either sink_logits [H, n], or sink_keys [Hkv, n, D] and sink_values [Hkv, n, Dv]")
    out, mass = augmented_sdpa(
        q,
        k,
        v,
        alibi=alibi,
        sink_logits=sink_logits,
        sink_keys=sink_keys,
        sink_values=sink_values,
        causal=causal,
        scale=scale,
        window=window,
        want_mass=True,
    )
    assert mass is not None
    return out, mass
