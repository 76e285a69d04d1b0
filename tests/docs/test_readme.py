"""The README's claims are produced by the code: its example runs and its zoo table is current."""

import re
import subprocess
import sys
from pathlib import Path

from attnlab.cli import zoo_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_zoo_table_is_the_output_of_attnlab_zoo_markdown():
    text = README.read_text()
    table = text.split("<!-- zoo-table:start -->\n", 1)[1].split("\n<!-- zoo-table:end -->", 1)[0]
    assert table == zoo_markdown(), "README's zoo table is stale: paste the output of `attnlab zoo --markdown`"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tensor(" in result.stdout


def test_readme_quick_start_is_two_make_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
