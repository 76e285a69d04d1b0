"""docs/extending.md runs as written: its Python blocks, put together in order, are ``my_attention.py``;
``attnlab check my_attention.py`` prints the table the page shows, and the sweep the file defines runs on two
worker processes with every run done."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from attnlab.runner.store import Store
from plugin_files import REPO, attnlab

DOC = REPO / "docs" / "extending.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def my_attention(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("extending") / "my_attention.py"
    path.write_text("\n\n".join(blocks("python")))
    return path


def test_check_prints_the_table_the_page_shows(my_attention: Path) -> None:
    assert "attnlab check my_attention.py\n" in blocks("bash")
    result = attnlab("check", my_attention.name, cwd=my_attention.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    printed = "".join(line.rstrip() + "\n" for line in result.stdout.splitlines())
    assert printed == blocks("text")[0]


def test_the_sweep_of_the_page_runs_on_two_workers(my_attention: Path) -> None:
    db = my_attention.parent / "runs" / "my_attention.sqlite"
    result = attnlab("run", my_attention.name, "--db", str(db), "--workers", "2", cwd=my_attention.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    with Store(db) as store:
        rows = store.runs()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}, [r["error"] for r in rows]
    needs = {json.dumps(json.loads(r["config"])["plugins"], sort_keys=True) for r in rows}
    file = str(my_attention.resolve())
    assert needs == {
        json.dumps({f"{k}": file for k in keys}, sort_keys=True)
        for keys in (
            ["task:lag"],
            ["normaliser:softmax1", "task:lag"],
            ["heads:scaled_heads", "normaliser:softmax1", "task:lag"],
            ["position:distance", "task:lag"],
            ["normaliser:softmax1", "position:distance", "task:lag"],
            ["heads:scaled_heads", "normaliser:softmax1", "position:distance", "task:lag"],
        )
    }


def test_the_entry_point_shown_is_the_example_package_s() -> None:
    (shown,) = blocks("toml")
    example = tomllib.loads((REPO / "examples" / "attnlab-softmax1" / "pyproject.toml").read_text())
    assert tomllib.loads(shown)["project"]["entry-points"] == example["project"]["entry-points"]
