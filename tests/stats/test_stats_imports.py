"""attnlab.stats is pure numbers: a report or a CLI command can use it without importing torch."""

from __future__ import annotations

import subprocess
import sys


def test_stats_imports_no_torch() -> None:
    code = "import sys, attnlab.stats; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
