"""Old and new speed ratios in one run: ``attnlab speed`` on an earlier commit and on this tree, case by case.

    python bench/compare_speed.py --old 9abcb88 --lengths 2048 --out runs/speed-compare

The earlier commit's ``src/`` is exported with ``git archive`` into a temporary folder and run with that folder
first on ``PYTHONPATH``; this tree runs as installed. For each case the two trees run back to back, alternating
which goes first (old, new; new, old; ...), each timing the case against its own SDPA softmax, interleaved, in the
same process (``ratio_vs_sdpa``): a slow drift of the machine hits both columns alike. Both check the case against
the reference before timing it (a case that fails its check is not timed). The dense reference cases are left out
unless asked for (``--with-reference``): this compares the fast paths. Memory and training throughput are off.
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


def run_speed(src: Path, out: Path, case: str, args: argparse.Namespace) -> dict:
    """One ``attnlab speed`` run of ``case`` (and SDPA softmax, its floor) with the package at ``src``."""
    cmd = [sys.executable, "-c", LAUNCH, "speed", "--out", str(out), "--lengths", args.lengths, "--case", case]
    cmd += ["--repeats", str(args.repeats), "--long-repeats", str(args.repeats), "--threads", str(args.threads)]
    cmd += ["--no-memory", "--no-train", "--no-xt"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    print(f"$ PYTHONPATH={src} attnlab {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "speed.json").read_text())


def ratios(data: dict) -> dict[tuple[str, int, str], float]:
    return {
        (r["case"], r["T"], r["mode"]): r["ratio_vs_sdpa"]
        for r in data["timing"]
        if not r.get("skipped") and r.get("ratio_vs_sdpa") is not None
    }


def fast_cases(with_reference: bool) -> list[str]:
    """The benchmark's case names (this tree's list), SDPA softmax itself left out (it is every run's floor)."""
    from attnlab.benchmarks.speed.cases import all_cases

    names = [c.name for c in all_cases(flex=True, xt=False) if c.name != "softmax/sdpa"]
    return [n for n in names if with_reference or not n.endswith("/reference")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--lengths", default="2048", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", action="append", help="a case (repeatable); default every fast path")
    parser.add_argument("--with-reference", action="store_true", help="also the dense reference cases")
    parser.add_argument("--out", type=Path, default=Path("runs/speed-compare"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    old: dict[tuple[str, int, str], float] = {}
    new: dict[tuple[str, int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_src = export_src(args.old, Path(tmp))
        for i, case in enumerate(args.case or fast_cases(args.with_reference)):
            runs = [("old", old_src, old), ("new", ROOT / "src", new)]
            for tag, src, into in runs if i % 2 == 0 else runs[::-1]:
                result = ratios(run_speed(src, args.out / tag / case.replace("/", "_"), case, args))
                into.update({key: value for key, value in result.items() if key[0] == case})
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
