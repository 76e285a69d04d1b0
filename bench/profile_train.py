"""Where a training step's time goes on the demo's models (``attnlab demo``: the ``quick`` sweep, MQAR), before and
after the step's overhead fixes, in one process, alternating.

    PYTHONPATH=src python bench/profile_train.py --threads 1 --steps 200 --rounds 3
    PYTHONPATH=src python bench/profile_train.py --threads 1 --mechanisms sigmoid --ops   # torch.profiler's ops

For each mechanism of the demo (its run at the sweep's first learning rate, seed 0: the model, task and training
config ``attnlab demo`` trains), the training step of ``attnlab.train.loop.fit`` is replayed for ``--steps`` steps
(the demo's learning-rate schedule; no early stop, so every variant does the same work) with a wall-clock timer
around each phase:

- data: ``Task.train_batch(step, batch)`` and the copy to the device;
- forward: the model and the loss (``token_loss``);
- backward: ``zero_grad`` and ``backward``;
- optimiser: gradient clipping and the AdamW step;
- evaluation: ``evaluate`` on the demo's evaluation set every ``eval_every`` steps (and at the last), per step;
- rest: the step's wall time minus the phases: the loop's own Python (learning-rate update, the finiteness check,
  ``aux_loss``, bookkeeping).

Variants, interleaved step by step (a step of each variant in turn, the order reversed every other round):
``after`` is the library as it is;
``before`` puts back, for the length of its run, the code the step ran before the overhead fixes (copies kept in
this script, not in the library): the training loss computed with the accuracy's argmax and dropped, AdamW as a
per-tensor Python loop, and the dense reference computing the masked scores that only a hook reads. Each phase is
the median over the rounds, in wall time and in CPU time (this process's, all threads: on a machine other jobs
share, the CPU time is what the step costs, the wall time what it waits). Every variant's losses are checked
bitwise against each other and against ``fit`` itself (run for the same steps): the replay is the loop, and the
fixes change no number.

``--fused`` adds ``after, fused AdamW`` (``torch.optim.AdamW(fused=True)``: other arithmetic, so other numbers): its
time and its largest loss difference from ``after``. ``--calls`` prints the median CPU µs of the per-step calls that
are not the model's compute (a batch, the dispatch decision of a layer, ``aux_loss``, a hook point, the optimiser
forms, gradient clipping).

``--chunked`` adds ``after, backend chunked`` for every mechanism whose layers that backend runs in tiles (on the
compiled CPU kernels of ``attnlab.attention.fast.native`` when they are built): its time and its largest loss
difference from backend ``auto`` (SDPA for softmax, the dense reference for the other normalisers of the demo). It
measures; it changes nothing: backend auto stays as the dispatch table says.

FLOPs are counted analytically (``attnlab.benchmarks.speed.training.train_flops_per_token``): 6 FLOPs per token per
weight of every ``nn.Linear`` (forward 2, backward 4: the q, k, v, o projections and the tied unembedding; the
embedding is a lookup) plus 6 · L · (T + 1) · d_model for the attention matmuls (q·kᵀ and weights·v over the
(T + 1) / 2 keys a causal query sees on average); evaluation is the forward third. The dense reference computes all
T keys and masks half: its executed FLOPs are higher than these useful ones. GFLOP/s = (training + evaluation
FLOPs) / wall time; tokens/s = training tokens / wall time, evaluation included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import build as attention_build
from attnlab.attention import dispatch
from attnlab.attention.core import attend_reference
from attnlab.benchmarks.speed.run import machine
from attnlab.benchmarks.speed.training import matmul_gflops, train_flops_per_token
from attnlab.model.encdec import build_model
from attnlab.runner.config import RunConfig
from attnlab.sweeps.quick import SWEEP
from attnlab.tasks.base import IGNORE
from attnlab.train import loop
from attnlab.train.device import autocast, grad_scaler, resolve_device

CLOCKS = ("wall", "cpu")
PHASES = ("data", "forward", "backward", "optimiser", "evaluation", "rest")
MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


# --- the code the step ran before the fixes (kept here only, to measure against) ------------------------------------


def old_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The old step: ``loss, _ = loss_and_accuracy(...)``, the accuracy (an argmax over the logits) dropped."""
    flat_logits = logits.float().flatten(0, 1)
    flat_targets = targets.flatten()
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE)
    scored = flat_targets != IGNORE
    correct = (flat_logits.argmax(-1) == flat_targets) & scored
    _ = correct.sum() / scored.sum().clamp(min=1)
    return loss


def old_make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """The old AdamW: ``fused=False`` and PyTorch's default on CPU, a Python loop over the parameters."""
    return torch.optim.AdamW(loop.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=False)


def old_attend_reference(*args: Any, keep_scores: bool = True, **kwargs: Any) -> Any:
    """The old dense reference: the masked scores computed whether or not a hook reads them."""
    return attend_reference(*args, **kwargs)


def fused_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW's fused CPU kernel: not a fix (other arithmetic, so other numbers); measured for the report."""
    return torch.optim.AdamW(loop.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=True)


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """``after``: the library as it is; ``before``: the old step's code in its place for the block."""
    if name in ("after", "after, backend chunked"):
        yield
        return
    patches = (
        [(loop, "make_optimizer", fused_optimizer)]
        if name == "after, fused AdamW"
        else [
            (loop, "token_loss", old_token_loss),
            (loop, "make_optimizer", old_make_optimizer),
            (attention_build, "attend_reference", old_attend_reference),
        ]
    )
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, new in patches:
            setattr(obj, attr, new)
        yield
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)


# --- the replayed step -------------------------------------------------------------------------------------------


def demo_runs() -> dict[str, RunConfig]:
    """The demo's run per mechanism, at the sweep's first learning rate and seed."""
    out: dict[str, RunConfig] = {}
    for run in SWEEP.runs():
        if run.train.lr == SWEEP.lrs[0] and run.seed == SWEEP.seeds[0]:
            out.setdefault(run.mechanism, run)
    return out


def with_backend(run: RunConfig, backend: str) -> RunConfig:
    attention = run.model.attention.model_copy(update={"backend": backend})
    return run.model_copy(update={"model": run.model.model_copy(update={"attention": attention})})


def now() -> tuple[float, float]:
    """(wall, CPU) seconds: the CPU time of this process (all its threads) is what the step costs on a machine that
    other jobs share; the wall time is what a run waits."""
    return time.perf_counter(), time.process_time()


def replay(run: RunConfig, steps: int) -> Generator[None, None, dict[str, Any]]:
    """``fit``'s step for ``steps`` steps with a timer per phase (see the module docstring), one step per ``next``;
    returns the seconds (per clock: each phase, and the total of the steps themselves) and the losses."""
    cfg = run.train
    device = resolve_device(cfg.device)
    torch.manual_seed(run.seed)
    model = build_model(run.model).to(device)
    task = run.task.build(run.seed)
    eval_set = task.eval_batch(cfg.eval_examples)
    opt = loop.make_optimizer(model, cfg)
    scaler = grad_scaler(device, cfg.precision)
    spent = {clock: dict.fromkeys(PHASES, 0.0) for clock in CLOCKS}
    losses: list[float] = []

    def add(phase: str, a: tuple[float, float], b: tuple[float, float]) -> None:
        for i, clock in enumerate(CLOCKS):
            spent[clock][phase] += b[i] - a[i]

    total = dict.fromkeys(CLOCKS, 0.0)
    for step in range(1, steps + 1):
        start = now()
        for group in opt.param_groups:
            group["lr"] = loop.lr_at(step - 1, cfg)
        t0 = now()
        batch = loop.to_device(task.train_batch(step, cfg.batch_size), device)
        t1 = now()
        with autocast(device, cfg.precision):
            logits = loop.run_model(model, batch)
        loss = loop.token_loss(logits, batch.targets)
        t2 = now()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)} at step {step}")
        aux = model.aux_loss()
        t3 = now()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss if aux is None else loss + aux).backward()
        t4 = now()
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        t5 = now()
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == steps:
            t6 = now()
            loop.evaluate(model, eval_set, cfg)
            add("evaluation", t6, now())
        add("data", t0, t1)
        add("forward", t1, t2)
        add("backward", t3, t4)
        add("optimiser", t4, t5)
        end = now()
        for i, clock in enumerate(CLOCKS):
            total[clock] += end[i] - start[i]
        yield
    for clock in CLOCKS:
        spent[clock]["rest"] = total[clock] - sum(spent[clock].values())
    evals = sum(1 for s in range(1, steps + 1) if s % cfg.eval_every == 0 or s == steps)
    params = [p.detach().clone() for p in model.parameters()]
    return {"total_s": total, "phases_s": spent, "losses": losses, "evals": evals, "params": params, "model": model}


def interleaved(runs: dict[str, RunConfig], steps: int, order: list[str]) -> dict[str, dict[str, Any]]:
    """Replay every variant step by step in turn (a step of each, in ``order``, then the next step): a drift of a
    shared machine's speed hits every variant alike. Each variant's code is in place only during its own steps."""
    running = {v: replay(runs[v], steps) for v in order}
    results: dict[str, dict[str, Any]] = {}
    while running:
        for v in order:
            if v not in running:
                continue
            with variant(v):
                try:
                    next(running[v])
                except StopIteration as done:
                    results[v] = done.value
                    del running[v]
    return results


def replayed(run: RunConfig, steps: int) -> dict[str, Any]:
    """One variant's replay, run to its end (in whatever code is in place)."""
    gen = replay(run, steps)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


class _Stop(Exception):
    pass


def fit_losses(run: RunConfig, steps: int) -> tuple[list[float], float]:
    """The losses of ``loop.fit`` itself for its first ``steps`` steps (stopped there by its ``on_step``)."""
    torch.manual_seed(run.seed)
    model = build_model(run.model)
    task = run.task.build(run.seed)
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step == steps:
            raise _Stop

    start = time.perf_counter()
    with contextlib.suppress(_Stop):
        loop.fit(model, task.train_batch, task.eval_batch(run.train.eval_examples), run.train, on_step=on_step)
    return losses, time.perf_counter() - start


def batch_one_cost(run: RunConfig, repeats: int = 30) -> dict[str, float]:
    """Median ms of a forward + backward of the model at batch 1 and at the demo's batch: the first is the per-call
    cost that does not scale with the data (Python, module calls, dispatch, op launches)."""
    torch.manual_seed(run.seed)
    model = build_model(run.model)
    task = run.task.build(run.seed)
    out: dict[str, float] = {}
    for rows in (1, run.train.batch_size):
        batch = task.train_batch(1, rows)
        times = []
        for _ in range(repeats + 3):
            t0 = time.perf_counter()
            loop.token_loss(loop.run_model(model, batch), batch.targets).backward()
            times.append(time.perf_counter() - t0)
        out[f"fwd_bwd_ms_batch{rows}"] = 1e3 * statistics.median(times[3:])
    return out


def op_table(run: RunConfig, steps: int = 20) -> str:
    """torch.profiler's table of the ops' own CPU time over ``steps`` replayed steps, and the matmuls' share."""
    from torch.profiler import ProfilerActivity, profile

    replayed(run, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        replayed(run, steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL_OPS))
    table = events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60)
    return f"{table}\nmatmul and attention kernels ({', '.join(MATMUL_OPS)}): {100 * matmul / total:.0f}% of op time"


def median_cpu_us(fn: Callable[[], object], repeats: int = 200) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e6 * statistics.median(times)


def call_costs(run: RunConfig) -> dict[str, float]:
    """Median CPU µs per call of what a step does besides the model's compute (see the module docstring)."""
    torch.manual_seed(run.seed)
    model = build_model(run.model)
    task = run.task.build(run.seed)
    layer = model.blocks[0].attn
    batch = task.train_batch(1, run.train.batch_size)
    loop.token_loss(model(batch.inputs), batch.targets).backward()
    cfg = run.train
    t = run.task.seq_len

    def decide() -> object:
        call = layer.describe(device="cpu", dtype=torch.float32, t_q=t, t_k=t, score_mod=None, bias=None)
        return dispatch.choose(call)

    x = torch.randn(cfg.batch_size, run.model.n_heads, t, run.model.d_model // run.model.n_heads)
    costs = {
        "train_batch": median_cpu_us(lambda: task.train_batch(7, cfg.batch_size)),
        "describe+choose (one layer)": median_cpu_us(decide),
        "aux_loss": median_cpu_us(model.aux_loss),
        "hook point call": median_cpu_us(lambda: layer.hook_q(x)),
        "clip_grad_norm_": median_cpu_us(lambda: nn.utils.clip_grad_norm_(model.parameters(), 1.0)),
    }
    for label, make in (("AdamW per-tensor", old_make_optimizer), ("AdamW foreach", loop.make_optimizer)):
        opt = make(model, cfg.model_copy(update={"lr": 1e-9}))
        costs[f"{label} step"] = median_cpu_us(opt.step)
    opt = fused_optimizer(model, cfg.model_copy(update={"lr": 1e-9}))
    costs["AdamW fused step"] = median_cpu_us(opt.step)
    return costs


def summarise(run: RunConfig, results: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Per clock: the median over rounds of each phase (ms per step) and of the total, tokens/s and GFLOP/s."""
    cfg, t = run.train, run.task.seq_len
    model = results[0]["model"]
    flops = train_flops_per_token(model, run.model.n_layers, run.model.d_model, t)
    tokens = steps * cfg.batch_size * t
    work = tokens * flops + results[0]["evals"] * cfg.eval_examples * t * flops / 3
    out: dict[str, Any] = {"flops_per_token": flops}
    for clock in CLOCKS:
        total = statistics.median(r["total_s"][clock] for r in results)
        phases = {p: statistics.median(r["phases_s"][clock][p] for r in results) for p in PHASES}
        out[clock] = {
            "ms_per_step": {p: 1e3 * phases[p] / steps for p in PHASES},
            "total_ms_per_step": 1e3 * total / steps,
            "tokens_per_s": tokens / total,
            "gflops": work / total / 1e9,
        }
    return out


def profile_mechanism(name: str, run: RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    variants = ["before", "after"] + (["after, fused AdamW"] if args.fused else [])
    runs = dict.fromkeys(variants, run)
    if args.chunked and run.model.attention.backend == "auto":
        chunked = with_backend(run, "chunked")
        layer = build_model(chunked.model).blocks[0].attn
        if layer.choose_path(t_q=run.task.seq_len).path in ("native", "chunked"):
            variants.append("after, backend chunked")
            runs["after, backend chunked"] = chunked
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        rounds = interleaved(runs, args.steps, variants if r % 2 == 0 else variants[::-1])
        for v in variants:
            results[v].append(rounds[v])
    fit_check = {}
    diffs: dict[str, float] = {}
    for v in ("before", "after"):
        with variant(v):
            fit_check[v] = fit_losses(run, args.steps)
    ref = results["after"][0]["losses"]
    same = all(res["losses"] == ref for v in ("before", "after") for res in results[v])
    for v in variants[2:]:
        other = results[v][0]["losses"]
        diffs[v] = max(abs(a - b) for a, b in zip(ref, other, strict=True))
    same_fit = all(fit_check[v][0] == ref for v in fit_check)
    same_params = all(
        torch.equal(a, b) for a, b in zip(results["before"][0]["params"], results["after"][0]["params"], strict=True)
    )
    out: dict[str, Any] = {
        "mechanism": name,
        "path": build_model(run.model).blocks[0].attn.choose_path(t_q=run.task.seq_len).path,
        "variants": {v: summarise(runs[v], results[v], args.steps) for v in variants},
        "fit_s": {v: fit_check[v][1] for v in fit_check},
        "bitwise_equal": {"replay_losses": same, "fit_losses": same_fit, "final_params": same_params},
        "fixed_cost": batch_one_cost(run),
    }
    out["max_loss_diff_from_after"] = diffs
    return out


def print_mechanism(res: dict[str, Any], echo: Callable[[str], None]) -> None:
    for clock in CLOCKS:
        echo(f"\n{res['mechanism']} (path {res['path']}): {clock} ms per step, median of rounds")
        head = "".join(f"{p:>11}" for p in PHASES)
        echo(f"  {'variant':<24}{head}{'total':>9}{'tokens/s':>11}{'GFLOP/s':>9}")
        for v, summary in res["variants"].items():
            s = summary[clock]
            cells = "".join(f"{s['ms_per_step'][p]:>11.2f}" for p in PHASES)
            echo(f"  {v:<24}{cells}{s['total_ms_per_step']:>9.2f}{s['tokens_per_s']:>11,.0f}{s['gflops']:>9.2f}")
        before, after = res["variants"]["before"][clock], res["variants"]["after"][clock]
        echo(f"  after / before: {after['total_ms_per_step'] / before['total_ms_per_step']:.3f} of the {clock} time")
    echo(f"  fit itself, wall: before {res['fit_s']['before']:.2f} s, after {res['fit_s']['after']:.2f} s")
    echo(f"  bitwise equal: {res['bitwise_equal']}")
    fixed = res["fixed_cost"]
    echo("  forward + backward, median wall ms: " + ", ".join(f"{k.split('_')[-1]} {v:.2f}" for k, v in fixed.items()))
    for v, diff in res["max_loss_diff_from_after"].items():
        echo(f"  {v}: largest |training loss - after's| over the steps {diff:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    runs = demo_runs()
    parser.add_argument("--mechanisms", default=",".join(runs), help=f"comma-separated, of: {', '.join(runs)}")
    parser.add_argument("--steps", type=int, default=200, help="training steps per replay (the demo's schedule)")
    parser.add_argument("--rounds", type=int, default=3, help="replays per variant, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--chunked", action="store_true", help="also time backend chunked where auto is the reference")
    parser.add_argument("--fused", action="store_true", help="also time AdamW's fused kernel (other numbers)")
    parser.add_argument("--calls", action="store_true", help="print the CPU cost of the per-step calls")
    parser.add_argument("--ops", action="store_true", help="print torch.profiler's op table per mechanism")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    chosen = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in runs]
    if unknown:
        parser.error(f"--mechanisms {','.join(unknown)}: not a demo mechanism (allowed: {', '.join(runs)})")
    info = machine(native_status=args.chunked)  # only --chunked needs the kernels (building them takes a minute)
    peak = matmul_gflops(torch.float32, 1024)
    print(
        f"{info['cpu']}, {info['cores']} cores, {torch.get_num_threads()} thread(s), torch {info['torch']}; "
        f"fp32 matmul 1024² {peak:.1f} GFLOP/s; load average {info['load_average']}",
        flush=True,
    )
    print(f"{args.steps} steps × {args.rounds} rounds per variant; demo config {SWEEP.train}", flush=True)
    results = []
    for name in chosen:
        if args.ops:
            print(f"\n{name}: torch.profiler, own CPU time per op over 20 steps (after)\n{op_table(runs[name])}")
        if args.calls:
            costs = call_costs(runs[name])
            print(f"\n{name}: median CPU µs per call: " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()))
        res = profile_mechanism(name, runs[name], args)
        print_mechanism(res, lambda s: print(s, flush=True))
        results.append(res)
    end_load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\nload average at the end {end_load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "matmul_gflops": peak, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
