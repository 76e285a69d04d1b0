"""An installed plugin package registers its entries through the ``attnlab.plugins`` entry point: ``attnlab zoo``
lists them, ``attnlab check`` passes them, sweeps run them in workers; a broken mechanism is caught by the checks,
and a plugin that fails to import is one line.

The example package (examples/attnlab-softmax1) is really installed, with pip, into a folder of its own that the
commands get on PYTHONPATH: its entry point is read from the installed metadata, as on a user's machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.runner.store import Store
from plugin_files import REPO, attnlab

EXAMPLE = REPO / "examples" / "attnlab-softmax1"


def pip_install(source: Path, target: Path) -> None:
    """``pip install`` a package folder into ``target`` (a copy is built, so the source stays clean; offline)."""
    build = target.parent / f"{source.name}-src"
    shutil.copytree(source, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*cmd, "--target", str(target), str(build)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user who ran ``pip install examples/attnlab-softmax1``."""
    target = tmp_path_factory.mktemp("plugin") / "site"
    pip_install(EXAMPLE, target)
    assert (next(target.glob("*.dist-info")) / "entry_points.txt").read_text().split() == [
        "[attnlab.plugins]",
        "softmax1",
        "=",
        "attnlab_softmax1",
    ]
    return {"PYTHONPATH": str(target)}


def test_zoo_lists_the_installed_plugin(site: dict[str, str]) -> None:
    result = attnlab("zoo", env=site)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") > 2}
    assert "softmax1" in rows


def test_check_passes_the_installed_plugin(site: dict[str, str]) -> None:
    result = attnlab("check", "attnlab_softmax1", env=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "1 entries: 11 checks hold, 0 fail, 0 do not apply"


def test_check_catches_a_normaliser_that_lets_queries_see_the_future(site: dict[str, str]) -> None:
    result = attnlab("check", "attnlab_softmax1.leaky", env=site)
    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failures[0].startswith("FAIL normaliser softmax1_leaky: causal: changing tokens 6-8 moved logits 0-5 by")
    assert failures[0].endswith(": queries see the future")
    assert any(line.startswith("FAIL normaliser softmax1_leaky: masking: a future key has weight") for line in failures)


def test_a_sweep_runs_the_installed_plugin_in_pool_workers(site: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "uses_softmax1.py"
    sweep.write_text(
        "from attnlab.runner.config import Sweep\n"
        "from attnlab.train.config import TrainConfig\n"
        "SWEEP = Sweep(name='pkg', tasks=[{'name': 'mqar', 'vocab': 16, 'length': 16, 'num_kv_pairs': 2}],\n"
        "    mechanisms=[{'normaliser': 'softmax1'}, {'normaliser': 'softmax1', 'backend': 'chunked'}],\n"
        "    widths=[16], model={'n_layers': 1, 'n_heads': 2},\n"
        "    train=TrainConfig(steps=10, batch_size=8, eval_every=5, eval_examples=16))\n"
    )
    db = tmp_path / "results.sqlite"
    result = attnlab("run", str(sweep), "--db", str(db), "--workers", "2", env=site)
    assert result.returncode == 0, result.stdout + result.stderr
    with Store(db) as store:
        rows = store.runs()
    assert [r["status"] for r in rows] == ["done", "done"], [r["error"] for r in rows]
    assert {json.dumps(json.loads(r["config"])["plugins"]) for r in rows} == {
        '{"normaliser:softmax1": "attnlab_softmax1"}'
    }


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "attnlab-broken"
    (broken / "attnlab_broken").mkdir(parents=True)
    (broken / "attnlab_broken" / "__init__.py").write_text("import no_such_dependency\n")
    (broken / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "attnlab-broken"\nversion = "0.1.0"\n'
        '[project.entry-points."attnlab.plugins"]\nbroken = "attnlab_broken"\n'
    )
    pip_install(broken, tmp_path / "site")
    result = attnlab("zoo", env={"PYTHONPATH": str(tmp_path / "site")})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "error: plugin 'broken' (attnlab_broken, entry point of attnlab-broken) failed to import: "
        "ModuleNotFoundError: No module named 'no_such_dependency'; fix it or uninstall it (pip uninstall "
        "attnlab-broken)\n"
    )


def test_check_of_a_module_that_does_not_exist_is_one_line() -> None:
    result = attnlab("check", "no_such_module_here")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: module='no_such_module_here': cannot be imported (ModuleNotFoundError: No module named "
    )
    assert result.stderr.count("\n") == 1


def test_check_passes_the_example_sweep_file_with_its_own_normaliser() -> None:
    result = attnlab("check", "sweeps/softmax1.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1 entries: 10 checks hold, 0 fail, 1 do not apply"
