"""``load_sweep``: a preset name or a Python file that defines ``SWEEP``."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.errors import ConfigError
from attnlab.runner.config import Sweep
from attnlab.sweeps import load_sweep
from attnlab.sweeps.quick import SWEEP as QUICK

SWEEP_FILE = """
from attnlab.runner.config import Sweep

SWEEP = Sweep(
    name="from-a-file",
    tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
    mechanisms=[{"normaliser": "softmax"}],
    widths=[16],
    lrs=[1e-3, 3e-3],
    model={"n_layers": 1, "n_heads": 2},
)
"""


def test_a_preset_loads_by_name() -> None:
    assert load_sweep("quick") == QUICK


def test_an_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"sweep=.nosuch.: .*\(allowed: .*lr-sensitivity, .*quick"):
        load_sweep("nosuch")


def test_a_python_file_defining_sweep_loads(tmp_path: Path) -> None:
    path = tmp_path / "my_sweep.py"
    path.write_text(SWEEP_FILE)
    sweep = load_sweep(str(path))
    assert isinstance(sweep, Sweep) and sweep.name == "from-a-file" and len(sweep.runs()) == 2


def test_a_python_file_without_sweep_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "not_a_sweep.py"
    path.write_text("CONFIG = 1\n")
    with pytest.raises(ConfigError, match=r"sweep='.*not_a_sweep\.py': the file must define SWEEP = Sweep\(\.\.\.\)"):
        load_sweep(str(path))


def test_a_missing_python_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_sweep(str(tmp_path / "absent.py"))
