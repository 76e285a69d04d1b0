"""Landmark and CCA heads: their fast path (backend auto, dispatch path ``heads_sdpa``) against their dense reference
(backend reference, path ``heads``), forward + backward of one attention layer, with plain softmax (SDPA) beside.

    python bench/longctx_heads.py --lengths 512 2048 --threads 1

Each case first checks the fast path against the reference (outputs, float32 bound from the length), then times
both interleaved (reference, fast, reference, fast, ...) and prints the median seconds and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention

CASES = {
    "softmax": {},
    "landmark": {"heads": "landmark", "heads_args": {"block": 16}},
    "cca": {"heads": "cca", "heads_args": {"group": 16, "window": 64}},
}


def step(layer: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    layer(x).square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    site = AttentionSite(d_model=256, n_heads=4, seq_len=max(args.lengths))
    print(f"{'case':>10} {'T':>6} {'reference s':>12} {'fast s':>8} {'ratio':>6}")
    for name, cfg in CASES.items():
        for t in args.lengths:
            torch.manual_seed(0)
            fast = build_attention(AttentionConfig(**cfg), site)
            ref = build_attention(AttentionConfig(**cfg, backend="reference"), site)
            ref.load_state_dict(fast.state_dict())
            x = torch.randn(1, t, 256)
            with torch.no_grad():
                want, got = ref(x), fast(x)
            bound = 8 * t * torch.finfo(torch.float32).eps * float(want.abs().max())
            assert float((got - want).abs().max()) <= bound, f"{name} at T={t}: fast path differs from the reference"
            times: dict[str, list[float]] = {"ref": [], "fast": []}
            for _ in range(args.repeats):
                times["ref"].append(step(ref, x))
                times["fast"].append(step(fast, x))
            r, f = statistics.median(times["ref"]), statistics.median(times["fast"])
            print(f"{name:>10} {t:>6} {r:>12.3f} {f:>8.3f} {r / f:>6.1f}")


if __name__ == "__main__":
    main()
