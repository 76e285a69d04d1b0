"""The package's layers point down: ``lint-imports`` keeps the contracts in pyproject.toml ([tool.importlinter])."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")  # import-linter, a dev dependency
    result = subprocess.run(
        [str(lint), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_value_travels_as_an_attribute_of_a_tensor_or_a_function() -> None:
    """Positions hand their bias over as a typed value (``score_bias``), not as an attribute of the score_mod; no
    attribute named ``_attnlab_*`` is set on tensors."""
    pattern = re.compile(r"\.sdpa_form\s*=|_attnlab_")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
