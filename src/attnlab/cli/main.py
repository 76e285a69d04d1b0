"""The ``attnlab`` application: every command group mounted on one typer app.

Groups without a name add their commands at the top level (``attnlab run``); the others are sub-commands
(``attnlab data build``). Each group's module imports only typer and rich at module level, so ``attnlab --help``
does not import torch's heavier corners, Ray or transformers.
"""

from __future__ import annotations

import typer

from attnlab.cli.check import check_app
from attnlab.cli.circuits import circuits_app
from attnlab.cli.claims import claims_app
from attnlab.cli.compare import compare_app
from attnlab.cli.data import data_app
from attnlab.cli.experiments import experiments_app
from attnlab.cli.explain import explain_app
from attnlab.cli.inspect import inspect_app
from attnlab.cli.intervene import intervene_app
from attnlab.cli.longctx import longctx_app
from attnlab.cli.quantise import quantise_app
from attnlab.cli.sensitivity import sensitivity_app
from attnlab.cli.speed import speed_app
from attnlab.cli.sweeps import sweeps_app
from attnlab.cli.zoo import zoo_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="attnlab: a laboratory for attention mechanisms.")

app.add_typer(zoo_app)  # zoo, docs
app.add_typer(explain_app)  # explain
app.add_typer(check_app)  # check
app.add_typer(sweeps_app)  # run, demo, presets, leaderboard, report, export
app.add_typer(compare_app)  # compare
app.add_typer(inspect_app)  # inspect
app.add_typer(quantise_app)  # quantise
app.add_typer(sensitivity_app)  # sensitivity
app.add_typer(data_app, name="data", help="Build and list the real-text corpora (attnlab data build NAME).")
# One group for every measured change: head edits (ablate, scale, pear, act) and the cache / position ones.
intervene_app.registered_commands.extend(experiments_app.registered_commands)
app.add_typer(
    intervene_app,
    name="intervene",
    help="Change a model and measure before / after: ablate, scale, pear, act, kv-eviction, rope-scaling, sinks.",
)
app.add_typer(
    speed_app,
    name="speed",
    help="Time and peak memory of every mechanism × backend against SDPA, the reference and x-transformers.",
)
app.add_typer(
    claims_app,
    name="claims",
    help="Each source paper's headline claim put to the test, with a verdict: attnlab claims list | run | report.",
)
app.add_typer(
    circuits_app,
    name="circuits",
    help="Find a task's circuit in a pretrained model: patching, attribution, head classes (attnlab circuits ioi).",
)
app.add_typer(
    longctx_app,
    name="longctx",
    help="Long-context inference on SmolLM2: sparse prefill patterns and KV-cache policies (attnlab longctx).",
)
