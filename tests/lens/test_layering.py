"""The lens is a library: no module of it imports the paper experiments, the runner, the report or the CLI; the
experiments import the lens and the training loop, never the runner, the report or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "attnlab"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("lens", ("experiments", "runner", "report", "cli")),
        ("experiments", ("runner", "report", "cli")),
    ],
)
def test_imports_point_down(package: str, forbidden: tuple[str, ...]) -> None:
    files = list((SRC / package).rglob("*.py"))
    assert files, f"no modules under {SRC / package}"
    bad = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if any(module == f"attnlab.{f}" or module.startswith(f"attnlab.{f}.") for f in forbidden)
    ]
    assert not bad, "; ".join(bad)
