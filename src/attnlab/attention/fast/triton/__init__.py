"""Triton kernels of the chunked attention algorithm for the non-softmax normalisers: the GPU counterpart of
``attnlab.attention.fast.chunked`` (the PyTorch form) and ``attnlab.attention.fast.native`` (compiled CPU).

Rules with a kernel (forward and backward, causal or not, sliding windows, GQA / MQA, decoding with Tq < Tk,
float32 / bf16 / fp16 inputs accumulated in float32): sigmoid σ(s + b) (Ramapuram et al. 2024,
arXiv:2409.04431), Cog's signed softmax (Lv et al. 2024, arXiv:2411.07176) and plain softmax, LSSA and LSSAR
(Gao & Spratling 2025, arXiv:2501.13428) and clipped softmax (Bondarenko et al. 2023, arXiv:2306.12929). No
score_mod and no document masks: those variants stay on FlexAttention or the chunked backend.

``available(device)`` says why the kernels cannot run on a device (None when they can); ``triton_attention``
runs one. Importing this package never imports triton; the first call does (``function``). On CPU tensors the
kernels run only under Triton's interpreter, which must be switched on (``TRITON_INTERPRET=1``) before triton is
imported in the process: the tests do that, to check the kernels without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch
from torch import Tensor

from attnlab.attention.core import AttnOutput
from attnlab.attention.fast.chunked import Rule, check_shapes
from attnlab.attention.fast.triton.spec import KernelSpec, kernel_spec

__all__ = ["KernelSpec", "attend_triton", "available", "default_block", "kernel_spec", "supports", "triton_attention"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FUNCTION = "attnlab.attention.fast.triton.function"


def _interpreted() -> bool:
    """Whether the kernels run (or, not yet defined, would run) under Triton's interpreter in this process."""
    module = sys.modules.get(_FUNCTION)
    if module is not None:
        return bool(module.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def available(device: torch.device | str | None = None) -> str | None:
    """None when the Triton kernels can run on ``device`` (default: CUDA if present, else CPU), else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'attnlab[gpu]')"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if _interpreted():
        return None if dev.type in ("cpu", "cuda") else f"Triton's interpreter does not run on {dev.type} tensors"
    if dev.type == "cuda":
        return None if torch.cuda.is_available() else "torch sees no CUDA device"
    if dev.type == "cpu":
        return "Triton runs on CPU tensors only under its interpreter (TRITON_INTERPRET=1 before triton's import)"
    return f"Triton has no backend for {dev.type} tensors"


def default_block(q: Tensor, v: Tensor, qk_norm: bool) -> int:
    """Query rows and key columns per tile: 64, or 32 where a tile's rows are wider than 256 bytes (float32 or
    in-kernel normalised operands beyond D = 64, any dtype beyond D = 128), which keeps the backward's shared memory
    (about 200 KB for float32 at D = 128 with tiles of 64, compiled for sm_90) within an A100's 164 KB."""
    width = max(q.shape[-1], v.shape[-1]) * (4 if q.dtype == torch.float32 or qk_norm else 2)
    return 64 if width <= 256 else 32


def supports(rule: Rule) -> bool:
    """Whether a chunked rule has a Triton kernel (``kernel_spec`` says why not)."""
    try:
        kernel_spec(rule)
    except ValueError:
        return False
    return True


def triton_attention(
    rule: Rule,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    qk_norm: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
) -> Tensor:
    """out [B, Hq, Tq, Dv] of a chunked ``rule`` (``normaliser.chunked_rule()``) on q [B, Hq, Tq, D],
    k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv], in v's dtype; differentiable in q, k and v.

    Conventions of ``attend_reference``: scale 1/√D by default, queries are the last Tq positions, ``window``:
    sliding window of that many keys. ``qk_norm``: scores on F.normalize(q), F.normalize(k) (LSSA's cosine scores),
    normalised in float32 inside the kernels; gradients reach the raw q, k. ``block_m`` / ``block_n``: query rows /
    key columns per tile (powers of two ≥ 16; default: ``default_block``).
    """
    spec = kernel_spec(rule)
    check_shapes(q, k, v, causal)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype not in DTYPES:
            raise ValueError(f"{name}.dtype={x.dtype} has no Triton kernel (allowed: float32, bfloat16, float16)")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v dtypes must match; got {q.dtype}, {k.dtype}, {v.dtype}")
    if window is not None and window <= 0:
        raise ValueError(f"window={window} must be a positive number of keys")
    block = default_block(q, v, qk_norm)
    block_m, block_n = (block if b is None else b for b in (block_m, block_n))
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name}={size} must be a power of two >= 16")
    reason = available(q.device)
    if reason is not None:
        raise RuntimeError(f"Triton kernels unavailable on {q.device}: {reason}")
    from attnlab.attention.fast.triton.function import Launch, TritonAttention

    launch = Launch(causal, window, q.shape[-1] ** -0.5 if scale is None else scale, qk_norm, block_m, block_n)
    return TritonAttention.apply(spec, launch, q, k, v)


def attend_triton(
    normaliser: object,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    raw_qk: tuple[Tensor, Tensor] | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> AttnOutput:
    """A normaliser (one with a chunked backend) on its Triton kernel, as ``TiledNormaliser.attend_chunked`` runs it
    on the chunked one: q, k from ``normaliser.prepare``, and ``raw_qk`` the pair from before it (LSSA's kernel
    normalises those itself; without them it attends the prepared pair)."""
    q, k, qk_norm = normaliser.chunked_inputs(q, k, raw_qk)  # type: ignore[attr-defined]
    out = triton_attention(
        normaliser.chunked_rule(),  # type: ignore[attr-defined]
        q,
        k,
        v,
        causal=causal,
        scale=scale,
        window=window,
        qk_norm=qk_norm,
        block_m=block_m,
        block_n=block_n,
    )
    return AttnOutput(out, None, None)
