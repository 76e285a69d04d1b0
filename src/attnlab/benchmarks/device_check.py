"""One command for a machine with a GPU, often at hand for a few minutes only (``bench/device_check.py``).

Three steps, each of which runs what the machine allows and otherwise prints ``skipped: <why>``:

1. **equivalence**: the Triton kernels against the reference (``tests/attention/test_triton_kernels.py``:
   interpreted on small shapes, then compiled on CUDA through ``attnlab.benchmarks.triton_check``), the dispatch
   table (``tests/attention/test_dispatch.py``) and training on the device (``tests/train/
   test_device_precision.py``), through pytest with its skip reasons;
2. **speed**: forward and forward + backward of each Triton rule against SDPA in bf16, causal, at T = 1k, 4k and
   16k (``triton_check.speed``; 16k tokens per call); then ``attnlab speed``'s cases on the GPU (float32,
   T = 1k and 4k: every mechanism × backend but the compiled FlexAttention ones, checked against the reference
   there and timed against SDPA);
3. **training**: a short bf16 run of a bench model through the one training loop (``attnlab.train.fit``) on the
   device, once with softmax (SDPA) and once with sigmoid attention (the Triton path on CUDA): tokens/s and
   achieved TFLOP/s (``train_flops_per_token``: 6 × matmul weights + the attention products).

``--quick`` (seconds on a CPU, for the test suite): only the device tests of training, T = 1k, a tiny model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnlab.attention.fast.triton import available
from attnlab.benchmarks import triton_check
from attnlab.benchmarks.speed import run_speed
from attnlab.benchmarks.speed.training import train_flops_per_token
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks.base import Batch
from attnlab.train.config import TrainConfig
from attnlab.train.device import resolve_device
from attnlab.train.loop import fit

TESTS = Path(__file__).resolve().parents[3] / "tests"
EQUIVALENCE_TESTS = ("attention/test_triton_kernels.py", "attention/test_dispatch.py", "train/test_device_precision.py")
QUICK_TESTS = ("train/test_device_precision.py",)


def say(line: str) -> None:
    print(line, flush=True)


def equivalence(quick: bool) -> int:
    """Pytest on the equivalence tests (their skip reasons printed); returns pytest's exit status."""
    say("== equivalence")
    if not torch.cuda.is_available():
        say(f"skipped: compiled Triton kernels on cuda: {available('cuda')}")
    if not TESTS.is_dir():
        say(f"skipped: the equivalence tests: no tests folder at {TESTS} (run from a clone of the repository)")
        return 0
    files = [str(TESTS / f) for f in (QUICK_TESTS if quick else EQUIVALENCE_TESTS)]
    if quick:
        say("skipped: the Triton kernels' and the dispatch tests: --quick runs the device tests of training only")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tests set it where they need it
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(("SKIPPED", "FAILED", "ERROR")) or " passed" in line or " failed" in line:
            say(f"  {line}")
    return done.returncode


def speed(quick: bool) -> None:
    """Milliseconds and TFLOP/s of every Triton rule and SDPA, bf16, causal, forward and forward + backward."""
    say("== speed (bf16, causal, 16 heads of 64, 16k tokens per call)")
    reason = available("cuda") if torch.cuda.is_available() else "torch sees no CUDA device"
    if reason is not None:
        say(f"skipped: Triton kernels against SDPA on cuda: {reason}")
        return
    columns = ("fwd ms", "TFLOP/s", "x sdpa", "fwd+bwd ms", "TFLOP/s", "x sdpa")
    say(f"{'T':>6} {'rule':16} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, (9, 8, 7, 11, 8, 7), strict=True)))
    for t in (1024,) if quick else (1024, 4096, 16384):
        base = None
        for name in ("sdpa", *triton_check.RULES):
            r = triton_check.speed(name, t, device="cuda")
            base = base or r
            fwd, both = r["fwd_ms"] / base["fwd_ms"], r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
            say(f"{t:6} {name:16} {r['fwd_ms']:9.3f} {r['fwd_tflops']:8.1f} {fwd:7.2f} "
                f"{r['fwd_bwd_ms']:11.3f} {r['fwd_bwd_tflops']:8.1f} {both:7.2f}")  # fmt: skip


def speed_cases(quick: bool) -> None:
    """``attnlab speed`` on the GPU (float32, causal, 8 heads of 64): every case checked against the reference
    there, then timed against SDPA, forward and forward + backward; no memory, training or x-transformers, and
    not the compiled FlexAttention cases (each compiles its forward and backward at each T, which would not fit
    the command's few minutes: ``attnlab speed --device cuda --case softmax+alibi/flex`` times one)."""
    say("== attnlab speed's cases on cuda (float32; every mechanism × backend against SDPA)")
    if not torch.cuda.is_available():
        say("skipped: attnlab speed's cases on cuda: torch sees no CUDA device")
        return
    with tempfile.TemporaryDirectory() as out:
        run_speed(
            Path(out),
            lengths=(1024,) if quick else (1024, 4096),
            repeats=3,
            long_repeats=3,
            memory=False,
            train=False,
            flex=False,
            xt=False,
            device="cuda",
            echo=lambda line: say(f"  {line}"),
        )


def tokens_per_s(cfg: ModelConfig, batch: int, steps: int, device: torch.device) -> tuple[float, float, str]:
    """Tokens/s of ``steps`` bf16 steps of ``fit`` on one fixed batch (after two warm-up steps that build the
    kernels), training FLOPs per token, and the attention path the model takes there."""
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    t = cfg.max_seq_len
    tokens = torch.randint(0, cfg.vocab_size, (batch, t + 1), generator=torch.Generator().manual_seed(0))
    data = Batch(tokens[:, :-1], tokens[:, 1:])
    stamps: list[float] = []
    train_cfg = TrainConfig(
        steps=steps, batch_size=batch, eval_every=steps, eval_examples=batch, device=str(device), precision="bf16"
    )
    fit(model, lambda step, size: data, data, train_cfg, on_step=lambda step, loss: stamps.append(time.perf_counter()))
    warm = max(2, steps // 4)  # the first steps build kernels (Triton compiles on CUDA)
    rate = batch * t * (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])
    layer = next(m for m in model.modules() if hasattr(m, "choose_path"))
    path = layer.choose_path(t_q=t, device=device.type, dtype=torch.bfloat16).path
    return rate, train_flops_per_token(model, cfg.n_layers, cfg.d_model, t), path


def training(quick: bool) -> None:
    """A short bf16 run of a bench model on the device through ``fit``: tokens/s after two warm-up steps."""
    device = resolve_device("auto")
    say(f"== training (bf16 autocast, device {device})")
    if device.type != "cuda":
        say(f"skipped: the bench model on a GPU: no CUDA device (a {'tiny' if quick else 'small'} model on {device})")
    if device.type == "cuda" and not quick:
        shape = dict(vocab_size=8192, d_model=768, n_layers=8, n_heads=12, max_seq_len=1024)
        batch, steps = 16, 30
    elif quick:
        shape = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
        batch, steps = 2, 10
    else:
        shape = dict(vocab_size=256, d_model=128, n_layers=2, n_heads=4, max_seq_len=128)
        batch, steps = 8, 8
    for normaliser in ("softmax", "sigmoid"):
        cfg = ModelConfig(**shape, attention={"normaliser": normaliser, "position": "rope"})
        rate, flops, path = tokens_per_s(cfg, batch, steps, device)
        say(f"  {normaliser:8} on {path:9} d_model {cfg.d_model}, {cfg.n_layers} layers, T = {cfg.max_seq_len}, "
            f"batch {batch}: {rate:12,.0f} tokens/s, {rate * flops / 1e12:9.4f} TFLOP/s")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Equivalence, speed and bf16 training on this machine's GPU.")
    parser.add_argument("--quick", action="store_true", help="seconds on a CPU: the test suite's smoke test")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    say(f"torch {torch.__version__}, GPU: {gpu}")
    status = equivalence(args.quick)
    speed(args.quick)
    speed_cases(args.quick)
    training(args.quick)
    say(f"done in {time.perf_counter() - start:.0f} s; equivalence tests {'passed' if status == 0 else 'FAILED'}")
    raise SystemExit(status)


if __name__ == "__main__":
    main()
