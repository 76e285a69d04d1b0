"""The probes behind docs/diagnosis.md (``attnlab.benchmarks.diagnose``): why Cog and clipped softmax stay at
chance on the demo's MQAR. One thread; each probe prints one table.

Run: ``.venv/bin/python bench/diagnose_mechanisms.py {paths,init,threshold,represent,trained DB ...}``.
"""

from __future__ import annotations

import sys

from attnlab.benchmarks.diagnose import main

if __name__ == "__main__":
    sys.exit(main())
