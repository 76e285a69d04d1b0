"""The speed and memory benchmark of every attention mechanism × backend (``attnlab speed`` without the CLI).

Checks every case's output against attnlab's reference first, then times forward and forward + backward
(interleaved, in one process; median of repeats; ratios to SDPA softmax), measures peak memory in one subprocess
per case, and training throughput of a small TransformerLM. Writes ``speed.json`` and plots into ``--out``.

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/speed.py --out runs/speed`` (about half an hour on 2 cores;
``--quick`` is a smoke test of a few seconds). Options: ``python bench/speed.py --help``.
"""

from __future__ import annotations

from attnlab.cli.speed import speed_app

if __name__ == "__main__":
    speed_app()
