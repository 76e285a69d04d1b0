"""Block-sparse causal softmax attention: time in proportion to the key blocks a layout lists.

Sparse prefill (MInference, Jiang et al. 2024, arXiv:2407.02490; HiP, Lee et al. 2024, arXiv:2406.09827) decides
per head which keys each block of queries attends to; the saving is real only if the skipped tiles are never
computed. A ``BlockLayout`` says, for every head and every query block of ``block`` rows:

- the *diagonal* block (the keys of the query block itself, causal inside) — always computed, so no row is empty;
- a list of earlier key *blocks* (aligned, ``block`` keys each, ids below the query block's);
- a list of single earlier key *columns* outside those blocks (MInference's vertical lines).

The result is exactly softmax attention over those keys (the dense reference: ``layout_mask`` → masked softmax),
computed in three parts merged through their log-sum-exps (L = log Σ_p e^{ℓ_p}, out = Σ_p e^{ℓ_p − L} o_p, as
flash attention merges its tiles):

1. the diagonal: one causal flash call with the query blocks folded into the batch (views, no copies);
2. the listed blocks: rows (head, query block) sorted by their number of blocks and cut into groups of similar
   counts; a group gathers its key and value blocks (``index_select`` on the [blocks, block, D] view: one copy of
   the computed keys, nothing of the skipped ones) and runs one flash call, padding hidden by a −inf mask over keys
   that broadcasts over the rows;
3. the columns: the same with single keys.

On the CPU each call is PyTorch's flash kernel (``_scaled_dot_product_flash_attention_for_cpu``, which also returns
the rows' log-sum-exp); elsewhere the same parts are explicit matmuls.

That PyTorch form is exact but pays for its gathers: on a CPU whose memory is the bottleneck (this one copies 1–2.5
GB/s while other jobs run) a gathered block costs about as much as its matrix products, and at 15 % of the causal
blocks it was slower than dense SDPA (measured at 8k tokens, 9 heads). So on the CPU, where a compiler is present,
``block_sparse.cpp`` (built on first use like ``native.cpp``, with its flags and cache; ``ATTNLAB_NATIVE=0`` turns
it off) runs each (head, query block) as one FlashAttention forward over its own keys only, reading the listed
blocks in place through BLAS: time in proportion to the computed tiles, nothing copied but the columns.

Forward only: sparse prefill is inference (the inputs must not require grad). The head dims of q, k and v must be
equal (the CPU flash kernel needs it).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.attention.fast import native
from attnlab.attention.fast.sdpa_flash import no_denormals
from attnlab.types import compute_dtype

GROUP_KEYS = 2**15  # gathered keys (rows × keys per row) per flash call: the gathered k and v stay a few MB
PAD_SLACK = 0.125  # a group takes rows whose count is within this fraction of its largest (≤ 12.5 % padding)


SOURCE = Path(__file__).with_name("block_sparse.cpp")
_lock = threading.Lock()
_module: Any = None
_error: str | None = None


def compiled() -> Any | None:
    """The compiled kernel, built on first use (``native``'s flags, CPU signature and cache); None when
    ``ATTNLAB_NATIVE=0`` or when it cannot be built (``unavailable_reason`` says why)."""
    global _module, _error
    if not native.ENABLED:
        return None
    if _module is not None or _error is not None:
        return _module
    with _lock:
        if _module is None and _error is None:
            try:
                import hashlib

                from torch.utils.cpp_extension import load

                native._ensure_ninja_on_path()
                digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(native._cflags()).encode())
                digest.update((native._cpu_signature() + torch.__version__).encode())
                name = f"attnlab_block_sparse_{digest.hexdigest()[:12]}"
                fresh = not native._built(name)
                if fresh:
                    print("attnlab: compiling the block-sparse CPU kernel (once per machine)", file=sys.stderr)
                start = time.perf_counter()
                ext = load(name=name, sources=[str(SOURCE)], extra_cflags=native._cflags(), extra_ldflags=["-fopenmp"])
                if not ext.blas_available():
                    raise RuntimeError("this PyTorch build exports no sgemm_/dgemm_ (BLAS) symbols")
                if fresh:
                    print(f"attnlab: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
                _module = ext
            except Exception as e:  # any build failure means: use the PyTorch form
                text = str(e).strip()
                _error = f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
    return _module


def unavailable_reason() -> str | None:
    """Why the compiled kernel is not used (None: it is available)."""
    if not native.ENABLED:
        return "disabled (ATTNLAB_NATIVE=0)"
    compiled()
    return _error


@dataclass(frozen=True)
class BlockLayout:
    """Which keys each (head, query block) computes, besides its causal diagonal block.

    ``blocks`` [H, nq, nb] int64: key block ids j < i for query block i, −1 for none, no repeats;
    ``columns`` [H, nq, nc] int64: key positions < i·block, outside the listed blocks, −1 for none, no repeats.
    ``t`` is the sequence length (nq = ⌈t / block⌉).
    """

    t: int
    block: int
    blocks: Tensor
    columns: Tensor

    @property
    def n_query_blocks(self) -> int:
        return -(-self.t // self.block)

    @property
    def heads(self) -> int:
        return self.blocks.shape[0]

    def block_counts(self) -> Tensor:
        """[H, nq]: listed key blocks per query block (the diagonal not counted)."""
        return (self.blocks >= 0).sum(-1)

    def column_counts(self) -> Tensor:
        """[H, nq]: listed columns per query block."""
        return (self.columns >= 0).sum(-1)

    def density(self) -> float:
        """Computed tiles over the causal tiles: (diagonal + listed blocks + columns / block) summed over heads and
        query blocks, divided by H · nq (nq + 1) / 2. 1 for the full causal pattern."""
        nq = self.n_query_blocks
        computed = self.heads * nq + self.block_counts().sum().item() + self.column_counts().sum().item() / self.block
        return computed / (self.heads * nq * (nq + 1) / 2)

    def check(self) -> None:
        """Raise ValueError unless the layout is well formed (shapes, ranges, no repeats, columns outside blocks)."""
        nq, h = self.n_query_blocks, self.heads
        if self.blocks.dim() != 3 or self.blocks.shape[:2] != (h, nq):
            raise ValueError(f"blocks must be [H, {nq}, n]; got {tuple(self.blocks.shape)}")
        if self.columns.dim() != 3 or self.columns.shape[:2] != (h, nq):
            raise ValueError(f"columns must be [H, {nq}, n]; got {tuple(self.columns.shape)}")
        row = torch.arange(nq, device=self.blocks.device)[None, :, None]
        if ((self.blocks >= row) | (self.blocks < -1)).any():
            raise ValueError("a listed key block must come before its query block (ids in −1 … i − 1)")
        if ((self.columns >= row * self.block) | (self.columns < -1)).any():
            raise ValueError("a listed column must come before its query block's first position")
        for name, ids in (("blocks", self.blocks), ("columns", self.columns)):
            s = ids.sort(-1).values
            if ((s[..., 1:] == s[..., :-1]) & (s[..., 1:] >= 0)).any():
                raise ValueError(f"{name}: an id is listed twice for one query block")
        if self.columns.numel():
            owner = torch.where(self.columns >= 0, self.columns // self.block, -2)
            if (owner[..., :, None] == self.blocks[..., None, :]).any():
                raise ValueError("a listed column lies inside a listed block (it would count twice)")


def layout_mask(layout: BlockLayout) -> Tensor:
    """[H, t, t] boolean: which keys each query sees under ``layout`` (the spec the kernel computes)."""
    h, nq, bs, t = layout.heads, layout.n_query_blocks, layout.block, layout.t
    device = layout.blocks.device
    tiles = torch.zeros(h, nq, nq + 1, dtype=torch.bool, device=device)  # the last column absorbs the −1s
    tiles.scatter_(2, torch.where(layout.blocks >= 0, layout.blocks, nq), True)
    tiles = tiles[..., :nq] | torch.eye(nq, dtype=torch.bool, device=device)
    mask = tiles.repeat_interleave(bs, 1).repeat_interleave(bs, 2)
    cols = torch.zeros(h, nq, nq * bs + 1, dtype=torch.bool, device=device)
    cols.scatter_(2, torch.where(layout.columns >= 0, layout.columns, nq * bs), True)
    mask |= cols[..., : nq * bs].repeat_interleave(bs, 1)
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return mask[:, :t, :t] & causal


def _part(q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """(out, lse) of softmax attention, q [R, 1, M, D], k, v [R, 1, N, D], mask additive [R, 1, 1 | M, N]."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale
        )
        return out, lse
    wide = compute_dtype(q)
    s = (q.to(wide) @ k.to(wide).transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    if mask is not None:
        s = s + mask.to(wide)
    lse = torch.logsumexp(s, -1)
    return (torch.exp(s - lse[..., None]) @ v.to(wide)).to(q.dtype), lse


def gather_rows(x: Tensor, ids: Tensor, out: Tensor | None = None) -> Tensor:
    """``x[ids]`` along dim 0, into ``out`` (a reused buffer of at least len(ids) rows) when given: on a CPU where
    memory is the bottleneck, a fresh allocation per call costs more than the copy (its pages fault in)."""
    rows = x.reshape(x.shape[0], -1)
    if out is None:
        return rows.index_select(0, ids).view(len(ids), *x.shape[1:])
    dst = out.view(-1)[: len(ids) * rows.shape[1]].view(len(ids), rows.shape[1])
    torch.index_select(rows, 0, ids, out=dst)
    return dst.view(len(ids), *x.shape[1:])


def _groups(counts: Tensor, per_row: int) -> list[tuple[Tensor, int]]:
    """Rows with a positive count, cut into (row ids, padded count) groups: sorted by count, each group's counts
    within ``PAD_SLACK`` of its largest and at most ``GROUP_KEYS`` gathered keys (``per_row`` keys per count)."""
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    groups, start = [], 0
    n_rows = sum(1 for c in sorted_counts if c > 0)
    while start < n_rows:
        n = sorted_counts[start]
        stop = start + max(1, GROUP_KEYS // (n * per_row))
        floor = n - int(n * PAD_SLACK)
        end = start + 1
        while end < min(stop, n_rows) and sorted_counts[end] >= floor:
            end += 1
        groups.append((order[start:end], n))
        start = end
    return groups


def _sparse_part(
    qb: Tensor, kv_rows: Tensor, k_units: Tensor, v_units: Tensor, ids: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """(out [R, M, D], lse [R, M]) of each query row block qb [R, M, D] against its listed units.

    ``ids`` [R, n]: unit ids (−1 none; valid ones first), ``kv_rows`` [R]: the offset of the row's key/value head
    in ``k_units`` / ``v_units`` [units, u, D] (u keys per unit: a block, or 1 for columns).
    """
    r, m, d = qb.shape
    out = qb.new_zeros(r, m, v_units.shape[-1])
    lse = torch.full((r, m), float("-inf"), dtype=compute_dtype(qb), device=qb.device)
    u = k_units.shape[1]
    counts = (ids >= 0).sum(-1)
    groups = _groups(counts, u)
    if not groups:
        return out, lse
    room = max(len(rows) * n * u for rows, n in groups)
    k_buf, v_buf = qb.new_empty(room * d), qb.new_empty(room * v_units.shape[-1])
    q_buf = qb.new_empty(max(len(rows) for rows, _ in groups) * m * d)
    for rows, n in groups:
        sel = ids[rows, :n]
        valid = sel >= 0
        flat = (torch.where(valid, sel, 0) + kv_rows[rows, None]).flatten()
        ks = gather_rows(k_units, flat, k_buf).view(len(rows), 1, n * u, d)
        vs = gather_rows(v_units, flat, v_buf).view(len(rows), 1, n * u, v_units.shape[-1])
        mask = None
        if not bool(valid.all()):
            hide = torch.zeros(len(rows), n, dtype=qb.dtype, device=qb.device).masked_fill_(~valid, float("-inf"))
            mask = hide.repeat_interleave(u, 1).view(len(rows), 1, 1, n * u)
        o, ell = _part(gather_rows(qb, rows, q_buf)[:, None], ks, vs, False, mask, scale)
        out.view(r, -1).index_copy_(0, rows, o.view(len(rows), -1))
        lse.index_copy_(0, rows, ell[:, 0].to(lse.dtype))
    return out, lse


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    flush: bool = True,
    use_compiled: bool | None = None,
) -> Tensor:
    """Causal softmax attention of one sequence over the keys ``layout`` lists: q [H, T, D], k, v [Hkv, T, D]
    (GQA: query head h reads key/value head h // (H / Hkv)) → [H, T, D] in q's dtype.

    Equals ``softmax(mask(q kᵀ · scale)) v`` with ``layout_mask(layout)``; computes the diagonal blocks, the listed
    blocks and the listed columns, nothing else. ``flush``: denormals flushed while it runs (``no_denormals``).
    ``use_compiled``: the compiled kernel (True: required), the PyTorch form (False), or the kernel where it is
    available on a CPU tensor (None).
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [H, T, D] (one sequence); got {tuple(q.shape)}, {tuple(k.shape)}")
    h, t, d = q.shape
    hkv = k.shape[0]
    if h % hkv or v.shape[0] != hkv or k.shape[1] != t or v.shape[1] != t or k.shape[2] != d or v.shape[2] != d:
        raise ValueError(f"need k, v [Hkv, {t}, {d}] with H % Hkv == 0; got {tuple(k.shape)}, {tuple(v.shape)}")
    if q.requires_grad or k.requires_grad or v.requires_grad:
        raise ValueError("block_sparse_attention is forward only (sparse prefill): inputs must not require grad")
    if layout.t != t or layout.heads != h:
        raise ValueError(f"layout is for {layout.heads} heads × {layout.t} positions; got {h} × {t}")
    scale = d**-0.5 if scale is None else scale
    bs, nq = layout.block, layout.n_query_blocks
    pad = nq * bs - t
    ext = None
    if use_compiled is not False and q.device.type == "cpu":
        ext = compiled()
    if use_compiled and ext is None:
        raise RuntimeError(f"the compiled block-sparse kernel is not available: {unavailable_reason()}")
    if ext is not None:
        return _run_compiled(ext, q, k, v, layout, scale, flush)
    with torch.no_grad(), no_denormals(flush):
        qp, kp, vp = (torch.nn.functional.pad(x, (0, 0, 0, pad)).contiguous() for x in (q, k, v))
        rep = h // hkv
        kv_head = torch.arange(h, device=q.device) // rep
        qb = qp.view(h * nq, bs, d)
        # 1. diagonal blocks, causal inside: query block i against key block i of its head
        kd = gather_rows(kp, kv_head).view(h * nq, 1, bs, d)
        vd = gather_rows(vp, kv_head).view(h * nq, 1, bs, d)
        out_d, lse_d = _part(qb[:, None], kd, vd, True, None, scale)
        parts = [(out_d[:, 0], lse_d[:, 0].to(compute_dtype(q)))]
        # 2. listed blocks; 3. listed columns (valid ids first in every row)
        blocks = layout.blocks.sort(-1, descending=True).values.reshape(h * nq, -1)
        if blocks.shape[1] and bool((blocks[:, 0] >= 0).any()):
            head_rows = (kv_head * nq).repeat_interleave(nq)
            parts.append(_sparse_part(qb, head_rows, kp.view(hkv * nq, bs, d), vp.view(hkv * nq, bs, d), blocks, scale))
        columns = layout.columns.sort(-1, descending=True).values.reshape(h * nq, -1)
        if columns.shape[1] and bool((columns[:, 0] >= 0).any()):
            head_rows = (kv_head * nq * bs).repeat_interleave(nq)
            parts.append(
                _sparse_part(qb, head_rows, kp.view(hkv * nq * bs, 1, d), vp.view(hkv * nq * bs, 1, d), columns, scale)
            )
        out = merge_parts(parts)
    return out.view(h, nq * bs, d)[:, :t].to(q.dtype)


def merge_parts(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Σ_p e^{ℓ_p − L} o_p with L = log Σ_p e^{ℓ_p}: attention over the union of disjoint key sets from each set's
    output o_p [..., M, D] and log-sum-exp ℓ_p [..., M] (a set may be empty for a row: ℓ = −inf, o = 0)."""
    if len(parts) == 1:
        return parts[0][0]
    total = torch.logsumexp(torch.stack([lse for _, lse in parts]), 0)
    out = torch.zeros_like(parts[0][0], dtype=total.dtype)
    for o, lse in parts:
        out += torch.exp(lse - total)[..., None] * o.to(total.dtype)
    return out


def _ascending(ids: Tensor) -> Tensor:
    """Each row's ids in ascending order, the −1s after them."""
    big = torch.iinfo(ids.dtype).max
    s = torch.where(ids >= 0, ids, big).sort(-1).values
    return torch.where(s == big, -1, s).contiguous()


def kv_units(blocks: Tensor, columns: Tensor, rep: int) -> Tensor:
    """[U, 3] (first head, heads, query block): the query heads of one key/value head that list the same keys for a
    query block form one unit (all ``rep`` of them, or each alone), most expensive first."""
    h, nq = blocks.shape[:2]
    cost = (blocks >= 0).sum(-1) * 64 + (columns >= 0).sum(-1) + 64  # [H, nq], in keys
    if rep > 1:
        g = h // rep
        same = (blocks.view(g, rep, nq, -1) == blocks.view(g, rep, nq, -1)[:, :1]).all(-1).all(1)
        same &= (columns.view(g, rep, nq, -1) == columns.view(g, rep, nq, -1)[:, :1]).all(-1).all(1)  # [G, nq]
    else:
        same = torch.zeros(h, nq, dtype=torch.bool, device=blocks.device)
    first = torch.arange(h, device=blocks.device) // rep * rep
    grouped = same.repeat_interleave(rep, 0) if rep > 1 else same  # [H, nq]
    lead = grouped & (torch.arange(h, device=blocks.device) == first)[:, None]
    alone = ~grouped
    heads = torch.arange(h, device=blocks.device)[:, None].expand(h, nq)
    blocks_i = torch.arange(nq, device=blocks.device)[None, :].expand(h, nq)
    pick = lead | alone
    n = torch.where(lead, rep, 1)
    units = torch.stack([heads[pick], n[pick], blocks_i[pick]], -1)
    work = (cost * n)[pick]
    return units[torch.argsort(work, descending=True, stable=True)].contiguous()


def _run_compiled(ext: Any, q: Tensor, k: Tensor, v: Tensor, layout: BlockLayout, scale: float, flush: bool) -> Tensor:
    t = q.shape[1]
    bs, nq = layout.block, layout.n_query_blocks
    wide = compute_dtype(q)
    with torch.no_grad(), no_denormals(flush):
        qp, kp, vp = (torch.nn.functional.pad(x.to(wide), (0, 0, 0, nq * bs - t)).contiguous() for x in (q, k, v))
        blocks, columns = _ascending(layout.blocks.long()), _ascending(layout.columns.long())
        units = kv_units(blocks, columns, q.shape[0] // k.shape[0])
        out = ext.forward(qp, kp, vp, blocks, columns, units, bs, float(scale))
    return out[:, :t].to(q.dtype)
