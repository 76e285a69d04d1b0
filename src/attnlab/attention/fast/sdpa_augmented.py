"""The shared construction of the ALiBi and sink forms: bias columns and sink keys on augmented inputs.

ALiBi's bias m_h·(j − i) is rank two, m_h·j·1 + 1·(−m_h·i), so q'_i = [m_h, −m_h·i | ŝ·q_i], k'_j = [j, 1 | k_j] and
SDPA with ``scale=1`` gives q'·k' = ŝ q·k + m_h (j − i) (``alibi_columns``; why the columns lead and the slope is split
hi / lo: ``attnlab.attention.fast.sdpa_alibi``). The symmetric non-causal bias −m_h·|i − j| is not low rank: a float
[H, Tq, Tk] mask (``symmetric_alibi_mask``). Sinks (``attnlab.attention.fast.sdpa_sinks``) are n extra keys, merged by
log-sum-exp on CPU and prepended keys elsewhere. ``augmented_sdpa`` builds both for one call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.core import build_mask, repeat_kv
from attnlab.attention.fast import sdpa_flash
from attnlab.attention.fast.sdpa_flash import (
    NEG_INF,
    check_inputs,
    flash_cpu,
    fused_sdpa,
)
from attnlab.types import AlibiBias, compute_dtype


def split_slopes(slopes: Tensor, t_k: int) -> tuple[Tensor, Tensor]:
    """m = m_hi + m_lo (float64) with m_hi·j and m_hi·i exact in float32 for every position < t_k."""
    m = slopes.detach().double()
    bits = max(1, 23 - max(t_k, 1).bit_length())  # m_hi's significant bits: bits + log2(T) ≤ 23
    mantissa, exponent = torch.frexp(m)  # m = mantissa · 2^exponent, mantissa in [0.5, 1)
    hi = torch.ldexp(torch.round(torch.ldexp(mantissa, torch.full_like(exponent, bits))), exponent - bits)
    return hi, m - hi


def alibi_columns(slopes: Tensor, h: int, t_q: int, t_k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Bias columns ([H, Tq, E] for queries, [Tk, E] for keys) whose product is m_h·(j − i)."""
    if slopes.shape != (h,):
        raise ValueError(f"ALiBi slopes must be [H] = [{h}]; got {tuple(slopes.shape)}")
    device = slopes.device
    hi, lo = split_slopes(slopes, t_k)
    parts = [hi] if bool((lo == 0).all()) else [hi, lo]
    i = torch.arange(t_k - t_q, t_k, device=device, dtype=torch.float64)  # queries are the last Tq positions
    j = torch.arange(t_k, device=device, dtype=torch.float64)
    q_cols, k_cols = [], []
    for m in parts:
        q_cols += [m[:, None].expand(h, t_q), -m[:, None] * i[None]]
        k_cols += [j, torch.ones_like(j)]
    return torch.stack(q_cols, -1).to(dtype), torch.stack(k_cols, -1).to(dtype)


def symmetric_alibi_mask(
    slopes: Tensor, t_q: int, t_k: int, causal: bool, window: int | None, dtype: torch.dtype
) -> Tensor:
    """Float mask [H, Tq, Tk]: −m_h·|i − j| where visible, −inf where hidden."""
    i = torch.arange(t_k - t_q, t_k, device=slopes.device)[:, None]
    j = torch.arange(t_k, device=slopes.device)[None, :]
    bias = -slopes.detach().to(dtype)[:, None, None] * (i - j).abs().to(dtype)
    visible = build_mask(t_q, t_k, slopes.device, causal, window)
    return bias if visible is None else bias.masked_fill(~visible, NEG_INF)


def augmented_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alibi: AlibiBias | None,
    sink_logits: Tensor | None,
    sink_keys: Tensor | None,
    sink_values: Tensor | None,
    causal: bool,
    scale: float | None,
    window: int | None,
    want_mass: bool,
) -> tuple[Tensor, Tensor | None]:
    """The shared construction of ``alibi_sdpa`` and ``sinks_sdpa``: (out, sink mass or None)."""
    check_inputs(q, k, v, causal)
    b, h, t_q, d = q.shape
    h_kv, t_k, dv = k.shape[1], k.shape[2], v.shape[-1]
    scale = d**-0.5 if scale is None else scale
    # ALiBi's large bias columns need float32 (bf16 cannot hold m·j exactly); sinks alone keep q's dtype
    dtype = compute_dtype(q) if alibi is not None else q.dtype
    n_sinks = count_sinks(sink_logits, sink_keys, sink_values)
    if sink_logits is not None and sink_logits.shape != (h, n_sinks):
        raise ValueError(f"sink_logits must be [H, n] = [{h}, n]; got {tuple(sink_logits.shape)}")
    if sink_keys is not None and sink_values is not None:
        check_sink_vectors(sink_keys, sink_values, h_kv, n_sinks, d, dv)
    mask: Tensor | None = None
    qc: Tensor | None = None
    kc: Tensor | None = None
    if alibi is not None and alibi.symmetric and not causal:  # −m·|i − j|: not low rank, a float mask
        mask = symmetric_alibi_mask(alibi.slopes.to(q.device), t_q, t_k, causal, window, dtype)[None]
    elif alibi is not None:  # −m·|i − j| = m·(j − i) on every key a causal query sees: two (four) columns
        qc, kc = alibi_columns(alibi.slopes.to(q.device), h, t_q, t_k, dtype)
    if sdpa_flash.CPU_FLASH and q.device.type == "cpu":
        z: Tensor | None = None
        sink_v: Tensor | None = None
        if sink_logits is not None:
            z = sink_logits.to(dtype)[None, :, None, :].expand(b, h, t_q, n_sinks)
        elif sink_keys is not None and sink_values is not None:
            rep = h // h_kv
            z = (q.to(dtype) * scale) @ repeat_kv(sink_keys.to(dtype)[None], rep).transpose(-1, -2)
            sink_v = repeat_kv(sink_values.to(dtype)[None], rep)
        out, mass = flash_cpu(
            q,
            k,
            v,
            q_cols=qc,
            k_cols=kc,
            scale=scale,
            dtype=dtype,
            z=z,
            sink_v=sink_v,
            causal=causal,
            window=window,
            attn_mask=mask,
            flush=alibi is not None,
        )
        return out.to(v.dtype), (mass if want_mass else None)
    # other devices: one SDPA call on augmented inputs, the sinks as prepended keys (see the module docstring)
    q_cols: list[Tensor] = []
    k_cols: list[Tensor] = []
    s_cols: list[Tensor] = []
    if qc is not None and kc is not None:
        q_cols.append(qc[None].expand(b, h, t_q, -1))
        k_cols.append(kc[None, None].expand(b, h_kv, t_k, -1))
        s_cols.append(kc.new_zeros(b, h_kv, n_sinks, kc.shape[-1]))  # sinks carry no position
    if mask is not None and n_sinks:  # the symmetric ALiBi mask, with the sinks visible
        mask = torch.cat([mask.new_zeros(1, h, t_q, n_sinks), mask], dim=-1)
    v_sink: Tensor | None = None
    if sink_logits is not None:  # indicator columns: q carries ℓ_{h,s}, sink s is e_s, real keys are 0
        q_cols.append(sink_logits.to(dtype)[None, :, None, :].expand(b, h, t_q, n_sinks))
        k_cols.append(q.new_zeros(b, h_kv, t_k, n_sinks, dtype=dtype))
        s_cols.append(torch.eye(n_sinks, device=q.device, dtype=dtype).expand(b, h_kv, n_sinks, n_sinks))
        s_cols.append(q.new_zeros(b, h_kv, n_sinks, d, dtype=dtype))
        v_sink = q.new_zeros(b, h_kv, n_sinks, dv, dtype=dtype)
    elif sink_keys is not None and sink_values is not None:
        s_cols.append(sink_keys.to(dtype)[None].expand(b, h_kv, n_sinks, d))
        v_sink = sink_values.to(dtype)[None].expand(b, h_kv, n_sinks, dv)
    qa = torch.cat([*q_cols, q.to(dtype) * scale], dim=-1)
    ka = torch.cat([*k_cols, k.to(dtype)], dim=-1)
    va = v.to(dtype)
    if v_sink is not None:
        ka = torch.cat([torch.cat(s_cols, dim=-1), ka], dim=2)
        va = torch.cat([v_sink, va], dim=2)
        if want_mass:  # one value column: 1 on the sinks, 0 on the real keys → Σ_s w_is
            flag = torch.cat([va.new_ones(b, h_kv, n_sinks, 1), va.new_zeros(b, h_kv, t_k, 1)], dim=2)
            va = torch.cat([va, flag], dim=-1)
    out = fused_sdpa(qa, ka, va, n_sinks=n_sinks, causal=causal, window=window, attn_mask=mask)
    mass = out[..., dv] if (v_sink is not None and want_mass) else None
    return out[..., :dv].to(v.dtype), mass


def check_sink_vectors(sink_keys: Tensor, sink_values: Tensor, h_kv: int, n: int, d: int, dv: int) -> None:
    if sink_keys.shape != (h_kv, n, d) or sink_values.shape != (h_kv, n, dv):
        raise ValueError(
            f"sink_keys must be [Hkv, n, D] = [{h_kv}, n, {d}] and sink_values [Hkv, n, Dv]; got "
            f"{tuple(sink_keys.shape)}, {tuple(sink_values.shape)}"
        )


def count_sinks(sink_logits: Tensor | None, sink_keys: Tensor | None, sink_values: Tensor | None) -> int:
    if sink_logits is None and sink_keys is None and sink_values is None:
        return 0
    if (sink_logits is None) == (sink_keys is None) or (sink_keys is None) != (sink_values is None):
        raise ValueError("give either sink_logits [H, n], or sink_keys [Hkv, n, D] and sink_values [Hkv, n, Dv]")
    if sink_logits is not None:
        if sink_logits.dim() != 2:
            raise ValueError(f"sink_logits must be [H, n]; got {tuple(sink_logits.shape)}")
        return sink_logits.shape[-1]
    assert sink_keys is not None
    if sink_keys.dim() != 3:
        raise ValueError(f"sink_keys must be [Hkv, n, D]; got {tuple(sink_keys.shape)}")
    return sink_keys.shape[1]
