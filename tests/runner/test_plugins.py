"""Entries from outside attnlab run under every backend: a run records the plugin that defines them, and a worker
that cannot import it fails the run with one line naming the entry, its registry, the plugin and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.errors import ConfigError
from attnlab.plugins import PluginError, import_needed, import_plugin
from attnlab.runner.config import RunConfig, run_from_json
from attnlab.runner.store import Store
from plugin_files import REPO, attnlab, softmax1_sweep

A_ZOO_RUN = {
    "task": {"name": "mqar", "vocab": 32, "length": 16, "num_kv_pairs": 2},
    "model": {"vocab_size": 32, "d_model": 32, "n_heads": 2, "n_layers": 1, "max_seq_len": 16},
    "seed": 3,
    "sweep": "x",
}


def test_a_zoo_only_run_keeps_the_id_and_json_of_earlier_versions() -> None:
    """The id printed by the code before plugins existed (commit ef56252, the same config with normaliser
    sigmoid): `python -c "from attnlab.runner.config import RunConfig; ..."` printed 7ccc97c1690dfec4."""
    model = {**A_ZOO_RUN["model"], "attention": {"normaliser": "sigmoid"}}
    run = RunConfig.parse({**A_ZOO_RUN, "model": model})
    assert run.plugins == {}
    assert "plugins" not in json.loads(run.canonical_json())
    assert run.run_id == "7ccc97c1690dfec4"


def test_a_file_entry_is_recorded_with_its_file_and_left_out_of_the_run_id(tmp_path: Path) -> None:
    path = tmp_path / "plugin_recorded.py"
    path.write_text(
        "from attnlab.attention.normalisers.base import NORMALISERS\n"
        "from attnlab.attention.normalisers.softmax import Softmax, SoftmaxParams\n"
        "NORMALISERS.register('softmax_recorded', params=SoftmaxParams, row_stochastic=True)(\n"
        "    type('Recorded', (Softmax,), {}))\n"
    )
    import_plugin(str(path))
    model = {**A_ZOO_RUN["model"], "attention": {"normaliser": "softmax_recorded"}}
    run = RunConfig.parse({**A_ZOO_RUN, "model": model})
    assert run.plugins == {"normaliser:softmax_recorded": str(path.resolve())}
    assert json.loads(run.canonical_json())["plugins"] == run.plugins
    assert run.run_id == run.model_copy(update={"plugins": {"normaliser:softmax_recorded": "elsewhere.py"}}).run_id
    assert run_from_json(run.canonical_json()) == run  # imported once per process: no second registration


def test_a_plugin_file_the_worker_cannot_read_is_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.py")
    with pytest.raises(PluginError) as err:
        import_needed({"normaliser:softmax1": missing}, "the worker on node-2 (pid 7)")
    line = str(err.value)
    assert "\n" not in line and isinstance(err.value, ConfigError)
    assert line.startswith(f"normaliser 'softmax1' comes from {missing}, which the worker on node-2 (pid 7) cannot")
    assert "FileNotFoundError" in line and "make the file readable at this path" in line


def test_a_module_the_worker_cannot_import_is_one_line() -> None:
    with pytest.raises(PluginError) as err:
        import_needed({"heads:my_heads": "no_such_plugin_module"}, "the worker on node-2 (pid 7)")
    assert str(err.value) == (
        "heads 'my_heads' comes from no_such_plugin_module, which the worker on node-2 (pid 7) cannot import "
        "(ModuleNotFoundError: No module named 'no_such_plugin_module'): install its package wherever runs are "
        "trained (pip install -e PACKAGE) or put its folder on PYTHONPATH"
    )


def test_a_plugin_that_does_not_register_the_entry_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "registers_nothing.py"
    empty.write_text("X = 1\n")
    with pytest.raises(PluginError, match=r"^position 'mine' is not registered in this process after importing .*"):
        import_needed({"position:mine": str(empty)}, "this process")


def test_a_sweep_file_with_its_own_normaliser_runs_in_the_process_pool(tmp_path: Path) -> None:
    """The case of issue 14: every run done with --workers 2, the normaliser's runs recording the sweep file."""
    sweep = softmax1_sweep(tmp_path)
    db = tmp_path / "results.sqlite"
    result = attnlab("run", str(sweep), "--db", str(db), "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    with Store(db) as store:
        rows = store.runs()
    assert [r["status"] for r in rows] == ["done"] * 4, [r["error"] for r in rows]
    plugins = {r["mechanism"]: json.loads(r["config"]).get("plugins") for r in rows}
    assert plugins == {"softmax": None, "softmax1": {"normaliser:softmax1": str(sweep.resolve())}}
    assert "4 done, 0 failed" in result.stdout


NOTEBOOK = """
from attnlab.attention.normalisers.base import NORMALISERS
from attnlab.attention.normalisers.softmax import Softmax, SoftmaxParams
from attnlab.runner.config import Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig

@NORMALISERS.register("softmax_nb", params=SoftmaxParams, row_stochastic=True)
class NotebookSoftmax(Softmax):
    pass

if __name__ == "__main__":
    sweep = Sweep(
        name="nb",
        tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
        mechanisms=[{"normaliser": "softmax_nb"}],
        widths=[16],
        model={"n_layers": 1, "n_heads": 2},
        train=TrainConfig(steps=2, batch_size=4, eval_every=2, eval_examples=8),
    )
    with Store(DB) as store:
        summary = run_local(sweep.runs(), store, workers=1, threads=1)
        print(store.runs()[0]["error"].splitlines()[0])
"""


def test_an_entry_defined_where_no_worker_can_import_it_fails_the_run_with_one_line(tmp_path: Path) -> None:
    """A normaliser defined in a notebook cell (``python -c``: ``__main__`` without a file) exists only in the
    driver: its pool worker says so, in one line, and how to fix it."""
    code = f"DB = {str(tmp_path / 'nb.sqlite')!r}\n" + NOTEBOOK
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("PluginError: normaliser 'softmax_nb' is not registered in the worker on "), line
    assert "after importing __main__, where it came from: define it in a file" in line


def test_an_entry_registered_without_params_is_one_line(tmp_path: Path) -> None:
    from attnlab.attention import AttentionConfig

    path = tmp_path / "no_params.py"
    path.write_text(
        "from attnlab.attention.normalisers.base import NORMALISERS, NormaliserBase\n"
        "NORMALISERS.register('no_params_here')(type('NoParamsHere', (NormaliserBase,), {}))\n"
    )
    import_plugin(str(path))
    with pytest.raises(ConfigError, match=r"registered without params=.*allowed: params=NoParams"):
        AttentionConfig(normaliser="no_params_here")
