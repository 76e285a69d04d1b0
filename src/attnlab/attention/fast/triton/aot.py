"""Compile the Triton kernels for a GPU without one: the check that the kernels the interpreter runs also compile.

Triton's interpreter runs a kernel's Python source with NumPy; the GPU path lowers the same source through
Triton's compiler (types, loop-carried variables, constexpr branches), which the interpreter never checks. This
module compiles every kernel of every rule down to a cubin for a chosen NVIDIA architecture (ptxas ships with
triton), on any machine: ``python -m attnlab.attention.fast.triton.aot [--arch 90]`` prints one line per kernel
with its shared memory; a failure is the compiler's error. It must run in a process where TRITON_INTERPRET is
unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from attnlab.attention.fast.triton import function, kernels
from attnlab.attention.fast.triton.spec import CLIPPED, COG, LSSA, LSSAR, SIGMOID, KernelSpec

POINTERS = {"Q", "K", "V", "OUT", "DO", "DQ", "DK", "DV"}  # in the inputs' dtype; STAT_* are float32
FLOATS = {"scale", "p0", "p1", "p2", "p3"}
TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# one spec per rule, with the flags that reach the most code (LSSAR: whole powers by products)
SPECS = (
    KernelSpec(SIGMOID, (-4.0, 0.0, 0.0, 0.0)),
    KernelSpec(COG),
    KernelSpec(LSSA, (2.77, 1e-8, 0.0, 0.0), length_scale=True),
    KernelSpec(LSSAR, (2.77, 1e-8, 15.0, 3.0), length_scale=True, p_int=15, p1_int=14),
    KernelSpec(CLIPPED, (-0.025, 1.0, 0.0, 0.0)),
)


@dataclass(frozen=True)
class Compiled:
    rule: str
    kernel: str
    seconds: float
    shared_bytes: int


def compile_kernels(
    specs: tuple[KernelSpec, ...] = SPECS,
    *,
    arch: int = 90,
    dtype: torch.dtype = torch.bfloat16,
    causal: bool = True,
    window: int | None = 256,
    head_dim: int = 64,
    block: int = 64,
) -> list[Compiled]:
    """Compile the forward, dq and dk-dv kernels of each spec for sm_``arch``; ValueError if they are interpreted."""
    if function.INTERPRETED:
        raise ValueError("TRITON_INTERPRET is set in this process: interpreted kernels cannot be compiled")
    q = torch.empty(1, 2, 128, head_dim, dtype=dtype, device="meta")
    target = GPUTarget("cuda", arch, 32)
    done = []
    for spec in specs:
        qk_norm = spec.rule in (LSSA, LSSAR)
        launch = function.Launch(causal, window, 1.0 if qk_norm else head_dim**-0.5, qk_norm, block, block)
        _, constexprs = function._sizes(q, q, q, spec, launch)
        options = {"num_warps": constexprs.pop("num_warps"), "num_stages": constexprs.pop("num_stages")}
        constexprs["P1_INT"] = spec.p1_int
        for fn in (kernels.attn_fwd, kernels.attn_bwd_dq, kernels.attn_bwd_dkdv):
            consts = {k: v for k, v in constexprs.items() if k in fn.arg_names}
            signature = {name: _arg_type(name, consts, dtype) for name in fn.arg_names}
            start = time.perf_counter()
            binary = triton.compile(ASTSource(fn, signature, consts), target=target, options=options)
            seconds = time.perf_counter() - start
            done.append(Compiled(spec.name, fn.__name__, seconds, int(binary.metadata.shared)))
    return done


def _arg_type(name: str, constexprs: dict[str, object], dtype: torch.dtype) -> str:
    if name in constexprs:
        return "constexpr"
    if name in POINTERS:
        return f"*{TRITON_DTYPES[dtype]}"
    if name.startswith("STAT_"):
        return "*fp32"
    return "fp32" if name in FLOATS else "i32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="NVIDIA compute capability × 10 (90: H100)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    for c in compile_kernels(arch=args.arch, dtype=dtype):
        print(f"sm_{args.arch} {args.dtype} {c.rule:<16} {c.kernel:<14} {c.seconds:5.1f} s  shared {c.shared_bytes} B")


if __name__ == "__main__":
    main()
