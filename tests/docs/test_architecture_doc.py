"""docs/architecture.md lists the dispatch table as the code has it: every rule, in order, with its path."""

from __future__ import annotations

import re
from pathlib import Path

from attnlab.attention.dispatch import RULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_documented_table_is_the_dispatch_table() -> None:
    rows = re.findall(r"^\| (\d+) \| `([a-z0-9-]+)` \| ([a-z_]+) \|", DOC.read_text(), flags=re.M)
    assert [(int(n), rule, path) for n, rule, path in rows] == [
        (i, rule.name, rule.path) for i, rule in enumerate(RULES, start=1)
    ]
