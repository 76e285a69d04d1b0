"""The block-sparse kernel against dense SDPA on random tensors of SmolLM2's shapes: cost per computed tile.

    python bench/block_sparse.py --lengths 4096,16384 --threads 2

For each length: q [9, T, 64], k, v [3, T, 64] (SmolLM2-135M's heads), dense causal
``F.scaled_dot_product_attention`` (GQA) and ``block_sparse_attention`` on A-shape layouts (1 sink block, w local
blocks of 64) from the full causal pattern down to 8 local blocks, interleaved in one run, median of ``--repeats``.
The last column, (kernel s / computed fraction) / SDPA s, is what a computed tile costs against SDPA's: a sparse
pattern is k× faster than dense only when its computed fraction is below 1 / (k × that ratio).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from attnlab.attention.fast.block_sparse import block_sparse_attention, unavailable_reason
from attnlab.longctx.prefill.a_shape import a_shape_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, compiled kernel: {unavailable_reason() or 'yes'}")
    print("| T | local blocks | computed | SDPA s | kernel s | speed-up | tile cost / SDPA's |")
    print("|---|---|---|---|---|---|---|")
    for t in (int(x) for x in args.lengths.split(",")):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(h, t, 64, generator=g) for h in (9, 3, 3))
        nq = t // 64
        layouts = {
            w: a_shape_layout(9, t, 64, 1, w) for w in sorted({nq, nq // 2, nq // 4, nq // 8, 16, 8}, reverse=True)
        }
        dense, sparse = [], {w: [] for w in layouts}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)
            dense.append(time.perf_counter() - t0)
            for w, layout in layouts.items():
                t0 = time.perf_counter()
                block_sparse_attention(q, k, v, layout)
                sparse[w].append(time.perf_counter() - t0)
        d = statistics.median(dense)
        for w, layout in layouts.items():
            s, f = statistics.median(sparse[w]), layout.density()
            print(f"| {t} | {w} | {100 * f:.1f}% | {d:.3f} | {s:.3f} | {d / s:.2f}× | {s / f / d:.2f} |")


if __name__ == "__main__":
    main()
