"""What the benchmark prints and draws: text tables of ratios to SDPA, the report, and plots of value vs T."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnlab.benchmarks.speed.cases import HEAD_DIM, HEADS, MODES


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


def plot(rows: list[dict[str, Any]], key: str, mode: str, ylabel: str, path: Path) -> None:
    """Value vs T on log-log axes: one panel per mechanism, one line per backend (the report draws the same)."""
    from attnlab.report.plots import speed_png, write_atomic

    write_atomic(path, speed_png(rows, key, mode, ylabel, f"{ylabel}, {mode} (B=1, H={HEADS}, D={HEAD_DIM}, causal)"))


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
