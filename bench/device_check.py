"""One command for a machine with a GPU (under 8 minutes on one H100-class GPU): the equivalence tests on the
device, the speed of every Triton rule against SDPA, and a short bf16 training run (``attnlab.benchmarks.
device_check``). Without a GPU it runs what it can and prints ``skipped: <why>`` for the rest.

Run: ``PYTHONPATH=src python bench/device_check.py`` (``--quick``: seconds, the test suite's smoke test).
"""

from __future__ import annotations

from attnlab.benchmarks.device_check import main

if __name__ == "__main__":
    main()
