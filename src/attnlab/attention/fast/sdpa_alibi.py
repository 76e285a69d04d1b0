"""ALiBi (Press et al. 2022, arXiv:2108.12409) through PyTorch's fused SDPA kernel, exactly.

The bias m_h·(j − i) is rank two, m_h·j·1 + 1·(−m_h·i), so
q'_i = [m_h, −m_h·i | ŝ·q_i], k'_j = [j, 1 | k_j] and SDPA with ``scale=1`` gives q'·k' = ŝ q·k + m_h (j − i).
The bias columns come *first*: the kernel's matrix product accumulates the head dimension in order, so
m_h·j − m_h·i is formed before q·k is added. With m_h·j and m_h·i exact in floating point the difference is
exact, and the scores are as accurate as the dense reference's (the slope is split m = m_hi + m_lo with m_hi
short enough that m_hi·j is exact; power-of-two slopes — H a power of two — have m_lo = 0 and need two
columns). Any visibility (causal, window, KV cache, non-causal) is the usual SDPA mask. The symmetric
non-causal bias −m_h·|i − j| is not low rank: it is passed as a float [H, Tq, Tk] ``attn_mask`` (no grad).
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.fast.sdpa_augmented import augmented_sdpa
from attnlab.types import AlibiBias


def alibi_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    *,
    symmetric: bool = False,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention with ALiBi, s_ij = ŝ q_i·k_j − m_h·(i − j) (``symmetric``: −m_h·|i − j|), via SDPA.

    Exact: m_h·(j − i) = [m_h, −m_h·i]·[j, 1] is appended as leading columns of ŝq and k (SDPA then runs with
    scale 1; see the module docstring for why the bias columns lead and are split hi/lo). The symmetric bias
    of non-causal attention is not low rank and goes in as a float mask. q [B, H, Tq, D], k and v
    [B, Hkv, Tk, ·]; queries are the last Tq positions (KV cache). Computed in float32 for half inputs.
    """
    form = AlibiBias(slopes, symmetric)
    out, _ = augmented_sdpa(
        q,
        k,
        v,
        alibi=form,
        sink_logits=None,
        sink_keys=None,
        sink_values=None,
        causal=causal,
        scale=scale,
        window=window,
        want_mass=False,
    )
    return out
