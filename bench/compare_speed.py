"""Old and new speed ratios in one run: ``attnlab speed`` on an earlier commit and on this tree, back to back.

    python bench/compare_speed.py --old 9abcb88 --lengths 2048 --out runs/speed-compare

The earlier commit's ``src/`` is exported with ``git archive`` into a temporary folder and run with that folder
first on ``PYTHONPATH``; this tree runs as installed. Each run times its cases against its own SDPA softmax
(``ratio_vs_sdpa``), so the two columns are comparable although the machine may drift between the runs. Both runs
check every case against the reference before timing it (a case that fails its check is not timed). Memory and
training throughput are off by default: this compares the time of the fast paths.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = "import sys; from attnlab.cli import app; sys.argv[0] = 'attnlab'; app()"


def export_src(ref: str, dest: Path) -> Path:
    """The ``src/`` folder of commit ``ref`` under ``dest``."""
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def run_speed(src: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-c", LAUNCH, "speed", "--out", str(out), "--lengths", args.lengths]
    cmd += ["--repeats", str(args.repeats), "--long-repeats", str(args.repeats), "--threads", str(args.threads)]
    cmd += ["--no-memory", "--no-train", "--no-xt"]
    for case in args.case or []:
        cmd += ["--case", case]
    env = {**os.environ, "PYTHONPATH": str(src)}
    print(f"$ PYTHONPATH={src} attnlab {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, env=env, check=True)
    return json.loads((out / "speed.json").read_text())


def ratios(data: dict) -> dict[tuple[str, int, str], float]:
    return {
        (r["case"], r["T"], r["mode"]): r["ratio_vs_sdpa"]
        for r in data["timing"]
        if not r.get("skipped") and r.get("ratio_vs_sdpa") is not None
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--lengths", default="2048", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", action="append", help="a case or mechanism (repeatable); default all")
    parser.add_argument("--out", type=Path, default=Path("runs/speed-compare"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        old = ratios(run_speed(export_src(args.old, Path(tmp)), args.out / "old", args))
    new = ratios(run_speed(ROOT / "src", args.out / "new", args))
    lines = [f"{'case':34} {'T':>6} {'mode':18} {'old':>6} {'new':>6} {'new/old':>8}"]
    for key in sorted(set(old) | set(new)):
        o, n = old.get(key), new.get(key)
        change = f"{n / o:8.2f}" if (o and n) else f"{'-':>8}"
        cells = [f"{x:6.2f}" if x is not None else f"{'-':>6}" for x in (o, n)]
        lines.append(f"{key[0]:34} {key[1]:>6} {key[2]:18} {cells[0]} {cells[1]} {change}")
    text = "\n".join(lines)
    print(f"\ntime / SDPA softmax, old = {args.old}, new = this tree\n{text}")
    (args.out / "comparison.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
