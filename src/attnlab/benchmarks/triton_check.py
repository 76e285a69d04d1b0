"""Equivalence and speed checks of the Triton kernels on a device: the tests' comparison, and a GPU's command.

``compare`` runs one rule on one shape on a device and returns, for the output and the q, k, v gradients, the
error against ``attend_reference`` in float64 (on the CPU, on the same values) with its bound; the tests call it
under Triton's interpreter, and ``python -m attnlab.benchmarks.triton_check`` calls it on a GPU (compiled
kernels: TRITON_INTERPRET unset), then with ``--speed`` times forward and backward against PyTorch's SDPA.

Bounds. The kernels compute in float32 what the reference computes in float64 on the same values. The forward
error of a float32 sum or dot product of n terms is at most n·u·Σ|terms| with u = 2⁻²⁴ (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., §3.1); every quantity chains a dot product over the head dimension D
(scores, dw = dO·v) with sums over at most Tk keys (outputs, row statistics, dk, dv) or Tq rows, so errors are
bounded by (D + Tk + Tq)·u relative to the magnitudes involved, the tensors' own scale (weights are at most 1 in
magnitude). ``amplification`` multiplies that by how much a rule magnifies a score error: LSSA multiplies cosine
scores by c = log d · log N, and LSSAR then raises x = N·A − O to its power p (a relative error of x is p times
larger in xᵖ): c·p. The factor 8 covers the few ulps of exp, log and sigmoid and the chain score → weight →
output → gradient. bf16 / fp16 inputs are rounded to their precision u (2⁻⁸, 2⁻¹¹) when the weights and score
gradients meet the second matrix product (as in FlashAttention), so they are compared in RMS, within 4u; the
backward's D_i = dO_i · o_i reads the output as stored, in bf16 / fp16 (as FlashAttention does), and LSSAR's score
gradient multiplies that rounding (u/2) by p, hence p·u/2 more there.
"""

from __future__ import annotations

import argparse
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference
from attnlab.attention.fast.triton import attend_triton, available

RULES = ("sigmoid", "cog", "lssa", "clipped_softmax", "lssar")
UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


class Check(NamedTuple):
    label: str  # out, dq, dk, dv
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def normaliser(name: str, d_head: int, **params: object) -> torch.nn.Module:
    """The registry's normaliser at a site of 4 heads of ``d_head`` and training length 64 (sigmoid's −log n)."""
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params(**params), AttentionSite(d_model=4 * d_head, n_heads=4, seq_len=64))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a − e| / max(max |e|, 1): relative to the tensor's scale, or to the inputs' (q, k, v and dO are N(0, 1))
    for a tensor that cancels far below it (Cog's dq at T = 1 is exactly 0)."""
    a, e = actual.double().cpu(), expected.double().cpu()
    return ((a - e).abs().max() / e.abs().max().clamp(min=1.0)).item()


def rms_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double().cpu(), expected.double().cpu()
    return ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp(min=1e-30)).item()


def amplification(norm: torch.nn.Module, n_keys: int) -> float:
    """How much the rule magnifies a score's rounding error: LSSA's c = log d · log N, times LSSAR's power."""
    params = getattr(norm, "params", None)
    if params is None:
        return 1.0
    c = math.log(norm.d_head) * math.log(max(n_keys, 2)) if params.length_scale else 1.0
    return max(c, 1.0) * getattr(params, "power", 1.0)


def compare(
    name: str,
    t_q: int,
    t_k: int,
    causal: bool,
    window: int | None,
    kv_heads: int,
    *,
    d_head: int = 16,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    params: dict[str, object] | None = None,
    block: int | None = None,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> list[Check]:
    """The kernel's output and q, k, v gradients on ``device`` against the float64 reference on the same values.

    q has 4 heads; ``inputs`` (float64 q, k, v) replaces the N(0, 1) ones.
    """
    norm = normaliser(name, d_head, **(params or {}))
    if inputs is None:
        inputs = (
            torch.randn(batch, 4, t_q, d_head, dtype=torch.float64),
            torch.randn(batch, kv_heads, t_k, d_head, dtype=torch.float64),
            torch.randn(batch, kv_heads, t_k, d_head, dtype=torch.float64),
        )
    inputs = tuple(x.to(dtype).double() for x in inputs)  # the values both sides see
    results = []
    grad_out = None
    for exact in (True, False):
        args = [(x if exact else x.to(device=device, dtype=dtype)).detach().requires_grad_() for x in inputs]
        qp, kp, scale = norm.prepare(args[0], args[1], None)
        if exact:
            out = attend_reference(qp, kp, args[2], normaliser=norm, causal=causal, window=window, scale=scale).out
            grad_out = torch.randn_like(out)
        else:
            tiles = {"block_m": block, "block_n": block}
            raw = {"raw_qk": (args[0], args[1])}  # LSSA's kernel normalises the raw q, k itself
            out = attend_triton(norm, qp, kp, args[2], causal=causal, window=window, scale=scale, **raw, **tiles).out
            assert out.dtype == dtype and out.device == args[2].device
        results.append((out, *torch.autograd.grad(out, args, grad_out.to(device=out.device, dtype=out.dtype))))
    unit = UNIT[dtype]
    if dtype == torch.float32:
        extent = inputs[0].shape[-1] + inputs[0].shape[2] + inputs[1].shape[2]
        bound, metric = 8 * extent * unit * amplification(norm, inputs[1].shape[2]), relative_error
    else:
        power = getattr(getattr(norm, "params", None), "power", 0.0)
        bound, metric = (4 + power / 2) * unit, rms_relative_error
    labels = ("out", "dq", "dk", "dv")
    assert all(x.dtype == dtype for x in results[1]), "outputs and gradients keep the inputs' dtype"
    return [Check(label, metric(got, want), bound) for label, want, got in zip(labels, *results, strict=True)]


def speed(name: str, t: int, *, device: str = "cuda", d_head: int = 64, heads: int = 16, tokens: int = 16384) -> dict:
    """Forward and forward + backward milliseconds of a rule (or "sdpa": PyTorch's fused softmax) in bf16,
    causal, at sequence length ``t`` with ``tokens`` / t sequences, and the achieved TFLOP/s (the backward counted
    as 2.5 forwards, FlashAttention-2's convention)."""
    import triton.testing

    batch = max(1, tokens // t)
    q, k, v = (torch.randn(batch, heads, t, d_head, device=device, dtype=torch.bfloat16) for _ in range(3))
    for x in (q, k, v):
        x.requires_grad_()
    if name == "sdpa":

        def run() -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        norm = normaliser(name, d_head)

        def run() -> torch.Tensor:
            qp, kp, scale = norm.prepare(q, k, None)
            return attend_triton(norm, qp, kp, v, causal=True, scale=scale, raw_qk=(q, k)).out

    grad = torch.randn(batch, heads, t, d_head, device=device, dtype=torch.bfloat16)
    forward = triton.testing.do_bench(run)
    both = triton.testing.do_bench(lambda: run().backward(grad))
    flops = 4 * batch * heads * t * t * d_head / 2  # causal: half the score matrix, two products
    return {"rule": name, "T": t, "fwd_ms": forward, "fwd_bwd_ms": both, "fwd_tflops": flops / forward / 1e9,
            "fwd_bwd_tflops": 3.5 * flops / both / 1e9}  # fmt: skip


CASES = (  # (t_q, t_k, causal, window, kv heads)
    (128, 128, True, None, 2),
    (200, 200, False, None, 4),
    (7, 300, True, None, 1),
    (256, 256, True, 64, 2),
)


def main() -> None:
    parser = argparse.ArgumentParser(description="The Triton kernels against the reference on a device, then speed.")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--speed", action="store_true", help="also time forward / backward against SDPA (bf16)")
    args = parser.parse_args()
    reason = available(args.device)
    if reason is not None:
        print(f"skipped: Triton kernels on {args.device}: {reason}")
        return
    failed = 0
    for name in RULES:
        for dtype in (torch.float32, torch.bfloat16):
            for case in CASES:
                checks = compare(name, *case, d_head=64, dtype=dtype, device=args.device)
                failed += sum(not c.ok for c in checks)
                worst = max(checks, key=lambda c: c.error / c.bound)
                status = "ok" if all(c.ok for c in checks) else "FAIL"
                line = f"{status:4} {name:16} {str(dtype)[6:]:9} {case}"
                print(f"{line}  worst {worst.label} {worst.error:.1e} ≤ {worst.bound:.1e}")
    if args.speed:
        for t in (1024, 4096, 16384):
            for name in ("sdpa", "softmax", *RULES):  # softmax: this kernel family's own FlashAttention
                r = speed(name, t, device=args.device)
                print(f"T={t:6} {name:16} fwd {r['fwd_ms']:8.3f} ms {r['fwd_tflops']:6.1f} TFLOP/s   "
                      f"fwd+bwd {r['fwd_bwd_ms']:8.3f} ms {r['fwd_bwd_tflops']:6.1f} TFLOP/s")  # fmt: skip
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
