"""The speed benchmark: time and peak memory of every mechanism × backend, and training throughput.

What it measures, for attention cores on q, k, v of shape [B=1, H=8, T, D=64] (causal) at each T:

- **time**, forward (under ``torch.no_grad``) and forward + backward (``out.backward(dO)``), wall clock,
  median of repeats. All cases of one T run in ONE process, interleaved (case A, B, C, …, then again), after
  one warm-up call each (which is when flex compiles; its compile time is recorded separately). Ratios are
  to PyTorch's SDPA softmax of the same T and mode — the floor.
- **correctness first**: at a small T every case's output is compared with attnlab's reference of the same
  mechanism (max |Δ| / max |ref| ≤ 1e-4, float32); a case that fails is reported and never timed.
- **peak memory**, in a fresh subprocess per case (glibc told to return every block above 64 KiB to the OS:
  ``MALLOC_MMAP_THRESHOLD_=65536``, so resident memory tracks live tensors). For each T and mode: one warm-up
  call, then the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``), one call runs and
  the peak is read (``VmHWM``). Reported: peak minus the resident set just before the call, which already
  holds q, k, v and dO — i.e. what the call itself needs (output, saved activations, gradients, workspace).
- **training throughput** of a small ``TransformerLM``: tokens/s and achieved GFLOP/s of AdamW steps, fp32 or
  bf16 autocast, eager or ``torch.compile``, against the machine's fp32 and bf16 matmul GFLOP/s measured in
  the same run; the fastest setting is named.

Dense cases (attnlab's reference, x-transformers' non-flash ``Attend`` and its T×T position biases) are skipped
above ``dense_limit`` (default 2048): every T×T×H float32 matrix is 128 MiB at T = 2048, 512 MiB at 4096 and
2 GiB at 8192, and a dense forward + backward keeps several, which on a 2-core machine takes minutes per call.

Threads: on a shared machine (other processes on the same cores) a multi-threaded call of many PyTorch ops waits
at every op for a descheduled worker thread, which punishes the chunked paths (many ops) far more than SDPA (one
op); ``threads=1`` measures per-core work instead, and the report says which was used.

x-transformers (``pip install x-transformers==2.31.10``) is compared like for like where it has the variant:
softmax (``flash=True``, SDPA), ALiBi and T5 bias (its bias modules, then SDPA with the T×T bias), soft-clamped
logits, a learned sink logit per head, Cog's signed softmax, and sigmoid (its ``Attend`` with
``custom_attn_fn=σ(s + b)``, the same bias as attnlab's; its own ``sigmoid=True`` has no bias). It has no
sliding window, LSSA/LSSAR or clipped softmax. When it is not installed those cases are skipped.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference
from attnlab.attention.build import sdpa
from attnlab.errors import ConfigError

LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
QUICK_LENGTHS = (64, 128)
HEADS, HEAD_DIM = 8, 64
CHECK_T = 128  # sequence length of the correctness check
CHECK_TOLERANCE = 1e-4
SOFTCAP = 50.0  # Gemma 2's attention logit cap
WINDOW = 256
MODES = ("forward", "forward+backward")
XT_PIN = "x-transformers==2.31.10"

AttnFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Case:
    """One mechanism on one backend. ``build(T)`` returns ``fn(q, k, v) -> out`` with its parameters made."""

    mechanism: str
    backend: str
    build: Callable[[int], AttnFn]
    dense: bool = False  # materialises T×T tensors: skipped above dense_limit
    compiled: bool = False  # compiles on its first call at each T (flex)

    @property
    def name(self) -> str:
        return f"{self.mechanism}/{self.backend}"


# --- the cases -----------------------------------------------------------------------------------------


def site(t: int) -> AttentionSite:
    return AttentionSite(d_model=HEADS * HEAD_DIM, n_heads=HEADS, causal=True, seq_len=t)


def normaliser(name: str, t: int, **args: Any) -> torch.nn.Module:
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params(**args), site(t))


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    """Build parameters (T5 table, sink logits) identically for every backend of a mechanism."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return fn()
    finally:
        torch.random.set_rng_state(state)


def position_mod(kind: str | None, t: int) -> tuple[Any, Any]:
    """(position module, score_mod) for None, "alibi" or "t5"."""
    if kind is None:
        return None, None
    from attnlab.position.alibi import ALiBi
    from attnlab.position.t5 import T5RelativeBias

    module = ALiBi(None, site(t)) if kind == "alibi" else seeded(lambda: T5RelativeBias(None, site(t)))
    return module, module.score_mod


def attnlab_case(mechanism: str, backend: str, norm: str, *, position: str | None = None, **args: Any) -> Case:
    """attnlab's normaliser ``norm`` on ``backend`` (reference, chunked, flex), with an optional position."""

    def build(t: int) -> AttnFn:
        module = normaliser(norm, t, **args)
        _, make_mod = position_mod(position, t)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            qp, kp, scale = module.prepare(q, k, None)
            kwargs = dict(causal=True, scale=scale, score_mod=make_mod() if make_mod else None)
            if backend == "reference":
                if hasattr(module, "attend"):  # kernel attention's quadratic reference
                    return module.attend(qp, kp, v, **kwargs).out
                return attend_reference(qp, kp, v, normaliser=module, **kwargs).out
            return getattr(module, f"attend_{backend}")(qp, kp, v, **kwargs).out

        return fn

    return Case(mechanism, backend, build, dense=backend == "reference", compiled=backend == "flex")


def window_case(backend: str) -> Case:
    """Softmax with a sliding window of ``WINDOW`` keys."""

    def build(t: int) -> AttnFn:
        module = normaliser("softmax", t)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if backend == "sdpa":  # attnlab's SDPA path: a boolean T×T mask
                return sdpa(q, k, v, causal=True, scale=None, window=WINDOW)
            if backend == "reference":
                return attend_reference(q, k, v, normaliser=module, causal=True, window=WINDOW).out
            return getattr(module, f"attend_{backend}")(q, k, v, causal=True, window=WINDOW).out

        return fn

    return Case("softmax+window", backend, build, dense=backend == "reference", compiled=backend == "flex")


def sdpa_case() -> Case:
    def build(t: int) -> AttnFn:
        return lambda q, k, v: sdpa(q, k, v, causal=True, scale=None)

    return Case("softmax", "sdpa", build)


def sink_logits() -> Tensor:
    return seeded(lambda: torch.randn(HEADS, 1), seed=1)  # gpt-oss: one learned logit per head


def sinks_case(backend: str, kind: str = "logit") -> Case:
    """gpt-oss sinks (one learned logit per head, value zero), or ``kind="kv"``: one learned key/value per head."""

    def build(t: int) -> AttnFn:
        from attnlab.attention import HEADS as HEAD_REGISTRY

        entry = HEAD_REGISTRY.entry("sinks")
        heads = seeded(lambda: entry.factory(entry.params(n_sinks=1, kind=kind), site(t)), seed=1)
        if kind == "logit":
            heads.sink_logit = torch.nn.Parameter(sink_logits())
        else:
            heads.sink_v.data.copy_(seeded(lambda: torch.randn_like(heads.sink_v), seed=2))
        soft = normaliser("softmax", t)
        if backend == "reference":
            return lambda q, k, v: heads.attend(q, k, v, normaliser=soft, causal=True).out
        if backend == "sdpa":
            return lambda q, k, v: heads.attend_sdpa(q, k, v, normaliser=soft, causal=True).out
        from attnlab.attention.fast.flex import attend_with_sinks

        sinks = {"sink_logits": heads.sink_logit} if kind == "logit" else {}
        if kind == "kv":
            sinks = {"sink_keys": heads.sink_k, "sink_values": heads.sink_v}
        return lambda q, k, v: attend_with_sinks(q, k, v, **sinks, causal=True)[0]

    mechanism = "softmax+sinks" if kind == "logit" else "softmax+sinks_kv"
    return Case(mechanism, backend, build, dense=backend == "reference", compiled=backend == "flex")


DOCUMENT_FRACTIONS = (0.4, 0.25, 0.2, 0.15)  # packed documents: a run of ids per fraction of T


def documents_of(t: int) -> Tensor:
    """[1, T] document ids: runs of DOCUMENT_FRACTIONS of T (the last takes the remainder)."""
    lengths = [max(1, int(f * t)) for f in DOCUMENT_FRACTIONS[:-1]]
    lengths.append(max(0, t - sum(lengths)))
    ids = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])[:t]
    return ids[None]


def documents_case(backend: str) -> Case:
    """Causal softmax within packed documents: reference (dense), sdpa (one SDPA call per run length),
    sdpa-mask (SDPA with the boolean T×T mask)."""

    def build(t: int) -> AttnFn:
        from attnlab.attention.core import causal_mask
        from attnlab.attention.fast.sdpa_variants import document_sdpa

        docs = documents_of(t)
        mask = (docs[0][:, None] == docs[0][None, :]) & causal_mask(t, t)
        soft = normaliser("softmax", t)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if backend == "sdpa":
                return document_sdpa(q, k, v, docs, causal=True)
            if backend == "sdpa-mask":
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            return soft(scores, mask) @ v

        return fn

    return Case("softmax+documents", backend, build, dense=backend != "sdpa")


def xt_available() -> bool:
    try:
        import x_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def xt_case(mechanism: str, *, flash: bool, position: str | None = None, **attend_args: Any) -> Case:
    """x-transformers' ``Attend`` on the same q, k, v (its position bias modules for ALiBi / T5)."""

    def build(t: int) -> AttnFn:
        from x_transformers.attend import Attend
        from x_transformers.x_transformers import AlibiPositionalBias, RelativePositionBias

        args = dict(attend_args)
        if mechanism == "sigmoid":
            bias = normaliser("sigmoid", t).bias
            args["custom_attn_fn"] = lambda sim: (sim + bias).sigmoid()
        attend = Attend(causal=True, flash=flash, heads=HEADS, **args)
        if mechanism == "softmax+sinks":
            attend.head_attn_sink.data.copy_(sink_logits()[:, 0])
        bias_module: torch.nn.Module | None = None
        if position == "alibi":
            bias_module = AlibiPositionalBias(heads=HEADS)
        elif position == "t5":
            bias_module = RelativePositionBias(scale=1.0, causal=True, heads=HEADS)
            table, _ = position_mod("t5", t)
            bias_module.relative_attention_bias.weight.data.copy_(table.bias.data)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            attn_bias = bias_module(q.shape[2], k.shape[2]) if bias_module is not None else None
            return attend(q, k, v, attn_bias=attn_bias)[0]

        return fn

    return Case(mechanism, "x-transformers", build, dense=not flash or position is not None)


def all_cases(*, flex: bool = True, xt: bool = True) -> list[Case]:
    """Every mechanism × backend the benchmark knows, in a fixed order (SDPA first: the denominator)."""
    cases = [sdpa_case()]
    softmax_family = [
        ("softmax", {}),
        ("softmax+alibi", {"position": "alibi"}),
        ("softmax+t5", {"position": "t5"}),
        ("softmax+softcap", {"softcap": SOFTCAP}),
    ]
    for mechanism, args in softmax_family:
        exact_sdpa = ("sdpa",) if "position" in args else ()  # ALiBi, T5: exact SDPA reformulations
        for backend in ("reference", *exact_sdpa, "chunked", *(("flex",) if flex else ())):
            cases.append(attnlab_case(mechanism, backend, "softmax", **args))
    for backend in ("sdpa", "reference", "chunked", *(("flex",) if flex else ())):
        cases.append(window_case(backend))
    for kind in ("logit", "kv"):
        for backend in ("reference", "sdpa", *(("flex",) if flex else ())):
            cases.append(sinks_case(backend, kind))
    for backend in ("reference", "sdpa", "sdpa-mask"):
        cases.append(documents_case(backend))
    for name in ("cog", "sigmoid", "lssa", "lssar", "clipped_softmax"):
        for backend in ("reference", "chunked"):
            cases.append(attnlab_case(name, backend, name))
    for backend in ("reference", "chunked"):
        cases.append(attnlab_case("linear_elu", backend, "linear_elu"))
    if xt and xt_available():
        cases += [
            xt_case("softmax", flash=True),
            xt_case("softmax+alibi", flash=True, position="alibi"),
            xt_case("softmax+t5", flash=True, position="t5"),
            xt_case("softmax+softcap", flash=False, softclamp_logits=True, logit_softclamp_value=SOFTCAP),
            xt_case("softmax+sinks", flash=False, head_learned_sink=True),
            xt_case("cog", flash=False, cog_signed=True),
            xt_case("sigmoid", flash=False),
        ]
    return cases


QUICK_CASES = ("softmax/sdpa", "softmax/reference", "sigmoid/reference", "sigmoid/chunked", "cog/chunked")


def select_cases(names: Sequence[str] | None, *, flex: bool, xt: bool) -> list[Case]:
    """The cases named (``mechanism/backend``, or a mechanism for all its backends); all by default."""
    cases = all_cases(flex=flex, xt=xt)
    if not names:
        return cases
    known = {c.name for c in cases} | {c.mechanism for c in cases}
    for n in names:
        if n not in known:
            raise ConfigError("cases", n, "unknown case", sorted(known))
    chosen = [c for c in cases if c.name in names or c.mechanism in names]
    if not any(c.name == "softmax/sdpa" for c in chosen):
        chosen.insert(0, sdpa_case())  # the floor every ratio is taken against
    return chosen


# --- measuring -----------------------------------------------------------------------------------------


def make_inputs(t: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v (leaves requiring grad) and the upstream gradient dO, [1, H, T, D] float32."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, d_out = (torch.randn(1, HEADS, t, HEAD_DIM, generator=g) for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), d_out


def runner(fn: AttnFn, inputs: tuple[Tensor, ...], mode: str) -> Callable[[], None]:
    """One timed call: the forward under no_grad, or forward then backward (gradients dropped after)."""
    q, k, v, d_out = inputs
    if mode == "forward":

        def forward() -> None:
            with torch.no_grad():
                fn(q, k, v)

        return forward

    def forward_backward() -> None:
        fn(q, k, v).backward(d_out)
        q.grad = k.grad = v.grad = None

    return forward_backward


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def check_cases(cases: Sequence[Case], t: int = CHECK_T) -> dict[str, dict[str, Any]]:
    """Every case's output vs the attnlab reference of its mechanism at length t (float32)."""
    q, k, v, _ = make_inputs(t, seed=1)
    expected: dict[str, Tensor] = {}
    report: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for case in cases:
            if case.backend == "reference":
                expected[case.mechanism] = case.build(t)(q, k, v)
        for case in cases:
            ref = expected.get(case.mechanism)
            try:
                out = case.build(t)(q, k, v)
            except Exception as err:  # a case that cannot run is reported, not timed
                report[case.name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                continue
            if ref is None:
                report[case.name] = {"ok": True, "error": None, "relative_error": None}
                continue
            err = relative_error(out, ref)
            report[case.name] = {"ok": err <= CHECK_TOLERANCE, "relative_error": err, "error": None}
    return report


def time_cases(
    cases: Sequence[Case],
    lengths: Sequence[int],
    repeats: int,
    long_repeats: int,
    dense_limit: int,
    echo: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Interleaved timing of every case at every length: (rows, compile records)."""
    rows: list[dict[str, Any]] = []
    compiles: list[dict[str, Any]] = []
    for t in lengths:
        inputs = make_inputs(t)
        active: list[tuple[Case, dict[str, Callable[[], None]]]] = []
        for case in cases:
            if case.dense and t > dense_limit:
                rows += [skip_row(case, t, mode, f"dense T×T (T > {dense_limit})") for mode in MODES]
                continue
            fn = case.build(t)
            runs = {mode: runner(fn, inputs, mode) for mode in MODES}
            start = time.perf_counter()
            try:
                for run in runs.values():
                    run()  # warm-up (flex compiles here)
            except Exception as err:
                rows += [skip_row(case, t, mode, f"{type(err).__name__}: {err}") for mode in MODES]
                continue
            if case.compiled:
                compiles.append({"case": case.name, "T": t, "warmup_s": time.perf_counter() - start})
            active.append((case, runs))
        n = repeats if t <= 2048 else long_repeats
        samples: dict[tuple[str, str], list[float]] = {(c.name, m): [] for c, _ in active for m in MODES}
        for _ in range(n):
            for case, runs in active:  # A B C … A B C …: slow drifts of the machine hit every case alike
                for mode, run in runs.items():
                    start = time.perf_counter()
                    run()
                    samples[(case.name, mode)].append(time.perf_counter() - start)
        for case, _ in active:
            for mode in MODES:
                ts = samples[(case.name, mode)]
                rows.append(row(case, t, mode, median_s=statistics.median(ts), samples_s=ts))
        echo(f"  timed T={t}: {len(active)} cases × {n} repeats")
        del inputs
        gc.collect()
    add_ratios(rows, "median_s", "ratio_vs_sdpa")
    return rows, compiles


def skip_row(case: Case, t: int, mode: str, reason: str) -> dict[str, Any]:
    return row(case, t, mode, skipped=reason)


def row(case: Case, t: int, mode: str, **values: Any) -> dict[str, Any]:
    """A result row: which case, at which T and mode, and the measured values (or ``skipped``: why not)."""
    return {
        "case": case.name,
        "mechanism": case.mechanism,
        "backend": case.backend,
        "T": t,
        "mode": mode,
        "skipped": None,
        **values,
    }


def add_ratios(rows: list[dict[str, Any]], key: str, ratio_key: str) -> None:
    """row[ratio_key] = row[key] / SDPA's row[key] at the same T and mode."""
    floor = {(r["T"], r["mode"]): r.get(key) for r in rows if r["case"] == "softmax/sdpa" and not r.get("skipped")}
    for r in rows:
        base = floor.get((r["T"], r["mode"]))
        value = r.get(key)
        r[ratio_key] = value / base if (value is not None and base) else None


# --- peak memory (one subprocess per case) ---------------------------------------------------------------


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (VmHWM) to its current resident set (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_worker(spec_json: str) -> None:
    """Subprocess entry: peak memory of some cases at every length and mode, printed as one JSON line."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    known = {c.name: c for c in all_cases(flex=spec["flex"], xt=spec["xt"])}
    out = []
    for name in spec["cases"]:
        case = known[name]
        for t in spec["lengths"]:
            if case.dense and t > spec["dense_limit"]:
                continue
            inputs = make_inputs(t)
            fn = case.build(t)
            for mode in MODES:
                run = runner(fn, inputs, mode)
                run()  # warm-up: compilation and first-touch allocations are not the call's memory
                gc.collect()
                reset_peak_rss()
                before = _proc_status_kib("VmRSS")
                run()
                peak = _proc_status_kib("VmHWM")
                out.append({"case": name, "T": t, "mode": mode, "peak_mib": (peak - before) / 1024})
            del inputs, fn
            gc.collect()
    print("MEMORY " + json.dumps(out))


def memory_available() -> str | None:
    """None if peak memory can be measured here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux /proc (this is {sys.platform})"
    try:
        reset_peak_rss()
    except OSError as err:
        return f"cannot reset the RSS high-water mark: {err}"
    return None


def measure_memory(
    cases: Sequence[Case],
    lengths: Sequence[int],
    dense_limit: int,
    flex: bool,
    xt: bool,
    echo: Callable[[str], None],
    one_process: bool = False,
) -> list[dict[str, Any]]:
    """Peak-memory rows for every case, each case in a fresh subprocess (or all in one: ``one_process``)."""
    rows: list[dict[str, Any]] = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1")
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    groups = [list(cases)] if one_process else [[c] for c in cases]
    for group in groups:
        spec = {
            "cases": [c.name for c in group],
            "lengths": list(lengths),
            "threads": torch.get_num_threads(),
            "dense_limit": dense_limit,
            "flex": flex and any(c.compiled for c in group),
            "xt": xt and any(c.backend == "x-transformers" for c in group),
        }
        code = "import sys; from attnlab.speed import memory_worker; memory_worker(sys.argv[1])"
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=3600
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        label = ", ".join(spec["cases"])
        if proc.returncode != 0 or not lines:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows += [
                skip_row(c, t, m, f"memory worker failed: {reason}") for c in group for t in lengths for m in MODES
            ]
            echo(f"  memory {label}: failed ({reason})")
            continue
        measured = {(r["case"], r["T"], r["mode"]): r["peak_mib"] for r in json.loads(lines[-1][len("MEMORY ") :])}
        for case in group:
            for t in lengths:
                for mode in MODES:
                    peak = measured.get((case.name, t, mode))
                    if peak is None:
                        rows.append(skip_row(case, t, mode, f"dense T×T (T > {dense_limit})"))
                    else:
                        rows.append(row(case, t, mode, peak_mib=peak))
        echo(f"  memory {label}: done")
    add_ratios(rows, "peak_mib", "ratio_vs_sdpa")
    return rows


# --- training throughput ---------------------------------------------------------------------------------


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n×n by n×n matmul in ``dtype`` (median of repeats): the machine's practical peak."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def train_flops_per_token(model: torch.nn.Module, n_layers: int, d_model: int, t: int) -> float:
    """6 × (matmul weights) + 6 × L × (T + 1) × d_model: forward + backward FLOPs per token of a causal LM.

    Every weight of a Linear (the tied unembedding included) costs 2 FLOPs per token forward, 4 backward; the
    attention matmuls (q·k and weights·v) cost 4·d_model per visible key forward, (T + 1)/2 keys on average.
    """
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * weights + 6.0 * n_layers * (t + 1) * d_model


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: Tensor, bf16: bool) -> None:
    """One AdamW step of next-token prediction on ``tokens`` [B, T + 1]."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def train_throughput(quick: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Tokens/s and GFLOP/s of AdamW steps of a small TransformerLM: fp32 / bf16 autocast × eager / compiled."""
    from attnlab.model.config import ModelConfig
    from attnlab.model.transformer import TransformerLM

    if quick:
        shape = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
        batch, steps, settings = 2, 2, [("fp32", False), ("bf16", False)]
    else:
        shape = dict(vocab_size=256, d_model=256, n_layers=4, n_heads=4, max_seq_len=256)
        batch, steps = 16, 10
        settings = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]
    cfg = ModelConfig(**shape, attention={"position": "rope"})
    t = cfg.max_seq_len
    n = 256 if quick else 2048
    peaks = {"fp32": matmul_gflops(torch.float32, n), "bf16": matmul_gflops(torch.bfloat16, n)}
    results = []
    for precision, compiled in settings:
        model = seeded(lambda: TransformerLM(cfg))
        flops = train_flops_per_token(model, cfg.n_layers, cfg.d_model, t)
        step_model = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, cfg.vocab_size, (batch, t + 1), generator=torch.Generator().manual_seed(0))

        start = time.perf_counter()
        for _ in range(2):  # warm-up (and compilation: from inductor's on-disk cache when it holds this graph)
            train_step(step_model, opt, tokens, precision == "bf16")
        warmup = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(step_model, opt, tokens, precision == "bf16")
            times.append(time.perf_counter() - start)
        tok_s = batch * t / statistics.median(times)
        gflops = tok_s * flops / 1e9
        results.append(
            {
                "precision": precision,
                "compiled": compiled,
                "tokens_per_s": tok_s,
                "gflops": gflops,
                "fraction_of_matmul_peak": gflops / peaks[precision],
                "warmup_s": warmup,
                "step_s": statistics.median(times),
            }
        )
        echo(f"  train {precision}{' compiled' if compiled else ''}: {tok_s:,.0f} tokens/s")
    best = max(results, key=lambda r: r["tokens_per_s"])
    return {
        "model": {**shape, "batch": batch, "params": sum(p.numel() for p in model.parameters())},
        "flops_per_token": flops,
        "matmul_peak_gflops": peaks,
        "settings": results,
        "fastest": {"precision": best["precision"], "compiled": best["compiled"]},
    }


# --- targets, tables, plots ----------------------------------------------------------------------------

SOFTMAX_VARIANTS = (  # the softmax-family variants of the issue, each against plain SDPA softmax
    "softmax+alibi",
    "softmax+t5",
    "softmax+softcap",
    "softmax+window",
    "softmax+sinks",
    "softmax+sinks_kv",
    "softmax+documents",
)
CHUNKED_NORMALISERS = ("cog", "sigmoid", "lssa", "lssar", "clipped_softmax")


def lookup(rows: list[dict[str, Any]], case: str, t: int, mode: str, key: str) -> float | None:
    for r in rows:
        if r["case"] == case and r["T"] == t and r["mode"] == mode and not r.get("skipped"):
            return r.get(key)
    return None


def best_attnlab(rows: list[dict[str, Any]], mechanism: str, t: int, mode: str, key: str) -> tuple[str, float] | None:
    """The fastest / smallest attnlab backend of a mechanism (not the reference)."""
    found = [
        (r["backend"], r[key])
        for r in rows
        if r["mechanism"] == mechanism
        and r["T"] == t
        and r["mode"] == mode
        and not r.get("skipped")
        and r["backend"] not in ("x-transformers", "reference", "sdpa-mask")  # not attnlab paths
        and r.get(key) is not None
    ]
    return min(found, key=lambda x: x[1]) if found else None


def targets(time_rows: list[dict[str, Any]], memory_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's acceptance targets, each with its measured value and whether it holds (None: not measured)."""
    out: list[dict[str, Any]] = []
    fb = "forward+backward"

    def add(name: str, measured: float | None, limit: float, holds: bool | None, detail: str = "") -> None:
        out.append({"target": name, "measured": measured, "limit": limit, "holds": holds, "detail": detail})

    floor = lookup(time_rows, "softmax/sdpa", 2048, fb, "median_s")
    for mech in SOFTMAX_VARIANTS:  # the target is per variant: its fastest attnlab backend counts
        best = best_attnlab(time_rows, mech, 2048, fb, "median_s")
        r = best[1] / floor if (best and floor) else None
        holds = None if r is None else r <= 1.3
        add(f"T=2048 fwd+bwd {mech} ≤ 1.3× SDPA", r, 1.3, holds, f"attnlab {best[0]}" if best else "")
    for mech in CHUNKED_NORMALISERS:
        r = lookup(time_rows, f"{mech}/chunked", 2048, fb, "ratio_vs_sdpa")
        add(f"T=2048 fwd+bwd {mech}/chunked ≤ 2.5× SDPA", r, 2.5, None if r is None else r <= 2.5)
    for mech in CHUNKED_NORMALISERS:
        r = lookup(memory_rows, f"{mech}/chunked", 8192, fb, "ratio_vs_sdpa")
        add(f"T=8192 fwd+bwd peak memory {mech}/chunked ≤ 1.2× SDPA", r, 1.2, None if r is None else r <= 1.2)
    for mode in MODES:
        r = lookup(time_rows, "linear_elu/chunked", 8192, mode, "ratio_vs_sdpa")
        add(f"T=8192 {mode} linear_elu/chunked faster than SDPA", r, 1.0, None if r is None else r < 1.0)
    xt_mechs = sorted({r["mechanism"] for r in time_rows if r["backend"] == "x-transformers"})
    for mech in xt_mechs:
        xt_time = lookup(time_rows, f"{mech}/x-transformers", 2048, fb, "median_s")
        ours = best_attnlab(time_rows, mech, 2048, fb, "median_s")
        ratio = ours[1] / xt_time if (ours and xt_time) else None
        detail = f"attnlab {ours[0]}" if ours else ""
        holds = None if ratio is None else ratio <= 1.0
        add(f"T=2048 fwd+bwd {mech}: attnlab time ≤ x-transformers", ratio, 1.0, holds, detail)
        xt_mem = lookup(memory_rows, f"{mech}/x-transformers", 2048, fb, "peak_mib")
        ours_mem = best_attnlab(memory_rows, mech, 2048, fb, "peak_mib")
        ratio = ours_mem[1] / xt_mem if (ours_mem and xt_mem) else None
        detail = f"attnlab {ours_mem[0]}" if ours_mem else ""
        holds = None if ratio is None else ratio <= 1.0
        add(f"T=2048 fwd+bwd {mech}: attnlab peak memory ≤ x-transformers", ratio, 1.0, holds, detail)
    return out


def table(rows: list[dict[str, Any]], mode: str, key: str, unit: str, scale: float) -> str:
    """A text table: one row per case, one column per T, cells 'ratio (value unit)'."""
    lengths = sorted({r["T"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    head = f"{'case':34s}" + "".join(f"{'T=' + str(t):>18s}" for t in lengths)
    lines = [head, "-" * len(head)]
    for case in cases:
        cells = []
        for t in lengths:
            r = next((r for r in rows if r["case"] == case and r["T"] == t and r["mode"] == mode), None)
            if r is None or r.get("skipped"):
                cells.append(f"{'skipped':>18s}")
            else:
                ratio = r.get("ratio_vs_sdpa")
                ratio_text = "  -  " if ratio is None else f"{ratio:5.2f}x"
                cells.append(f"{ratio_text} ({r[key] * scale:7.1f}{unit})".rjust(18))
        lines.append(f"{case:34s}" + "".join(cells))
    return "\n".join(lines)


COLOURS = {
    "reference": "tab:blue",
    "chunked": "tab:orange",
    "flex": "tab:green",
    "sdpa": "tab:purple",
    "sdpa-mask": "tab:brown",
    "x-transformers": "tab:red",
}


def plot(rows: list[dict[str, Any]], key: str, mode: str, ylabel: str, path: Path) -> None:
    """Value vs T on log-log axes: one panel per mechanism, one line per backend."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    cols = min(4, len(mechanisms))
    n_rows = math.ceil(len(mechanisms) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3.2 * n_rows), squeeze=False)
    floor = [
        (r["T"], r[key]) for r in rows if r["case"] == "softmax/sdpa" and r["mode"] == mode and not r.get("skipped")
    ]
    for ax, mech in zip(axes.flat, mechanisms, strict=False):
        if floor:
            ax.plot(*zip(*floor, strict=True), "k--", lw=1, label="SDPA softmax (floor)")
        for backend in dict.fromkeys(r["backend"] for r in rows if r["mechanism"] == mech):
            pts = [
                (r["T"], r[key])
                for r in rows
                if r["mechanism"] == mech and r["backend"] == backend and r["mode"] == mode and not r.get("skipped")
            ]
            if pts and not (mech == "softmax" and backend == "sdpa"):
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=backend, color=COLOURS.get(backend))
        ax.set(xscale="log", yscale="log", title=mech, xlabel="T")
        lengths = sorted({r["T"] for r in rows})
        ax.set_xticks(lengths, [str(t) for t in lengths], fontsize=7)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(mechanisms) :]:
        ax.axis("off")
    fig.suptitle(f"{ylabel}, {mode} (B=1, H={HEADS}, D={HEAD_DIM}, causal)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "native_kernels": _native_status(),
    }


def _native_status() -> str:
    """Whether the chunked backend ran on the compiled CPU kernels (``attnlab.attention.fast.native``)."""
    from attnlab.attention.fast import native

    reason = native.unavailable_reason()
    return "available" if reason is None else f"not used: {reason}"


# --- the entry point -----------------------------------------------------------------------------------


@dataclass
class SpeedResults:
    """What ``run_speed`` measured (also written to ``out_dir/speed.json``)."""

    data: dict[str, Any]
    report: str  # the printed tables
    files: list[Path] = field(default_factory=list)


def run_speed(
    out_dir: Path,
    *,
    lengths: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    repeats: int = 5,
    long_repeats: int = 3,
    dense_limit: int = 2048,
    memory: bool = True,
    train: bool = True,
    flex: bool = True,
    xt: bool = True,
    quick: bool = False,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> SpeedResults:
    """Check, then time (interleaved, one process) and measure peak memory of attention cases; train throughput.

    ``quick``: T = 64, 128, two repeats, five cases, one thread, memory in one subprocess, a tiny training run:
    a smoke test of the whole pipeline. ``threads``: torch threads for the run (default: as set). Writes
    ``speed.json`` and PNG plots of time and memory vs T into ``out_dir``; returns them with the tables.
    """
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "must be at least 1", ">= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if quick else previous))
    try:
        return _run_speed(
            out_dir, lengths, cases, repeats, long_repeats, dense_limit, memory, train, flex, xt, quick, echo
        )
    finally:
        torch.set_num_threads(previous)


def _run_speed(
    out_dir: Path,
    lengths: Sequence[int] | None,
    cases: Sequence[str] | None,
    repeats: int,
    long_repeats: int,
    dense_limit: int,
    memory: bool,
    train: bool,
    flex: bool,
    xt: bool,
    quick: bool,
    echo: Callable[[str], None],
) -> SpeedResults:
    if repeats < 1 or long_repeats < 1:
        raise ConfigError("repeats", min(repeats, long_repeats), "must be at least 1", ">= 1")
    if quick:
        lengths = lengths or QUICK_LENGTHS
        if not cases:  # the quick cases need neither flex (compilation) nor x-transformers (a slow import)
            cases, flex, xt = QUICK_CASES, False, False
        repeats, long_repeats = min(repeats, 2), min(long_repeats, 2)
    lengths = sorted(set(lengths or LENGTHS))
    if any(t < 1 for t in lengths):
        raise ConfigError("lengths", lengths, "every length must be positive", ">= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = select_cases(cases, flex=flex, xt=xt)
    echo(f"speed: {len(chosen)} cases, T = {', '.join(map(str, lengths))}, {torch.get_num_threads()} threads")
    info = machine()

    checks = check_cases(chosen)
    failed = [name for name, c in checks.items() if not c["ok"]]
    for name in failed:
        echo(f"  check FAILED {name}: {checks[name].get('error') or checks[name].get('relative_error')}")
    timed = [c for c in chosen if c.name not in failed]
    time_rows, compiles = time_cases(timed, lengths, repeats, long_repeats, dense_limit, echo)

    memory_rows: list[dict[str, Any]] = []
    memory_note = memory_available() if memory else "not requested"
    if memory_note is None:
        memory_rows = measure_memory(timed, lengths, dense_limit, flex, xt, echo, one_process=quick)
    train_data = train_throughput(quick, echo) if train else None
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    data = {
        "machine": info,
        "shape": {"B": 1, "H": HEADS, "D": HEAD_DIM, "causal": True, "dtype": "float32"},
        "settings": {
            "lengths": lengths,
            "repeats": repeats,
            "long_repeats": long_repeats,
            "dense_limit": dense_limit,
            "window": WINDOW,
            "softcap": SOFTCAP,
            "x_transformers": XT_PIN,
        },
        "checks": checks,
        "timing": time_rows,
        "compile": compiles,
        "memory": memory_rows,
        "memory_method": memory_note
        or "per-case subprocess, MALLOC_MMAP_THRESHOLD_=65536, VmHWM reset via "
        "/proc/self/clear_refs, peak minus resident set before the call (inputs and dO already allocated)",
        "train": train_data,
        "targets": targets(time_rows, memory_rows),
    }
    report = render(data)
    echo(report)
    files = [out_dir / "speed.json"]
    write_json(files[0], data)
    for mode in MODES:
        tag = mode.replace("+", "_")
        path = out_dir / f"time_{tag}.png"
        plot(time_rows, "median_s", mode, "seconds", path)
        files.append(path)
        if memory_rows:
            path = out_dir / f"memory_{tag}.png"
            plot(memory_rows, "peak_mib", mode, "peak MiB", path)
            files.append(path)
    echo(f"wrote {', '.join(str(f) for f in files)}")
    return SpeedResults(data, report, files)


def render(data: dict[str, Any]) -> str:
    """The printed report: time tables, memory tables, training throughput and the targets."""
    parts = [
        f"machine: {data['machine']['cpu']}, {data['machine']['threads']} threads, torch {data['machine']['torch']}, "
        f"load average {data['machine']['load_average']} → {data['machine'].get('load_average_end')}",
        f"native CPU kernels (chunked backend): {data['machine'].get('native_kernels', 'not recorded')}",
    ]
    for mode in MODES:
        parts += [
            f"\ntime, {mode}: ratio to SDPA softmax (median ms)",
            table(data["timing"], mode, "median_s", "ms", 1e3),
        ]
    if data["memory"]:
        for mode in MODES:
            parts += [
                f"\npeak memory, {mode}: ratio to SDPA softmax (MiB)",
                table(data["memory"], mode, "peak_mib", "M", 1),
            ]
    else:
        parts.append(f"\npeak memory: not measured ({data['memory_method']})")
    if data["compile"]:
        worst = max(data["compile"], key=lambda c: c["warmup_s"])
        where = f"{worst['case']}, T={worst['T']}"
        parts.append(f"\nflex warm-up (compile) per case and T: up to {worst['warmup_s']:.1f} s ({where})")
    if data["train"]:
        tr = data["train"]
        peaks = tr["matmul_peak_gflops"]
        parts.append(
            f"\ntraining throughput, {tr['model']}: matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, "
            f"bf16 {peaks['bf16']:.0f} GFLOP/s"
        )
        for st in tr["settings"]:
            how = "compiled" if st["compiled"] else "eager   "
            share = 100 * st["fraction_of_matmul_peak"]
            parts.append(
                f"  {st['precision']:4s} {how}  {st['tokens_per_s']:10,.0f} tokens/s  {st['gflops']:7.1f} GFLOP/s  "
                f"({share:.0f}% of {st['precision']} matmul peak); first 2 steps {st['warmup_s']:.1f} s"
            )
        fastest = tr["fastest"]
        parts.append(f"  fastest: {fastest['precision']} {'compiled' if fastest['compiled'] else 'eager'}")
    parts.append("\ntargets:")
    for tg in data["targets"]:
        mark = {True: "HOLDS", False: "FAILS", None: "n/a  "}[tg["holds"]]
        value = "-" if tg["measured"] is None else f"{tg['measured']:.2f}"
        parts.append(f"  {mark}  {tg['target']}: {value} {tg['detail']}".rstrip())
    return "\n".join(parts)
