"""``attnlab explain``: which path computes each attention layer of a model, and the rule that chose it.

The answer comes from the same function the forward pass asks (``attnlab.attention.dispatch.choose``, through
``attnlab.model.explain``), for a model of a sweep (a preset or a sweep file; default the demo's ``quick``) or for
one of its models with another attention config given as JSON (never evaluated as code).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.errors import ConfigError

if TYPE_CHECKING:
    from attnlab.model.config import ModelConfig

explain_app = typer.Typer(add_completion=False)

DTYPES = ("float32", "bfloat16", "float16", "float64")
DEVICES = ("cpu", "cuda", "mps")


def parse_attention(text: str) -> dict[str, Any]:
    """An attention config from JSON text: an object of AttentionConfig's fields."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"not JSON ({err.msg} at column {err.colno})"
        raise ConfigError("attention", text, problem, '{"normaliser": "sigmoid"}') from None
    if not isinstance(value, dict):
        raise ConfigError("attention", text, "not a JSON object", '{"normaliser": "sigmoid", "position": "alibi"}')
    return value


def sweep_models(sweep: str) -> list[tuple[str, ModelConfig]]:
    """The distinct models of a sweep, each with the label of its mechanism and width."""
    from attnlab.sweeps import load_sweep

    models: dict[str, tuple[str, ModelConfig]] = {}
    for run in load_sweep(sweep).runs():
        label = f"{run.mechanism} / {run.position} / width {run.model.d_model}"
        models.setdefault(run.model.canonical_json(), (label, run.model))
    return list(models.values())


@explain_app.command()
@guarded
def explain(
    sweep: Annotated[str, typer.Argument(help="a preset name or a sweep file; its distinct models are explained")] = (
        "quick"
    ),
    attention: Annotated[
        str | None,
        typer.Option(
            help='an attention config as JSON for the sweep\'s first model, e.g. \'{"normaliser": "sigmoid", '
            '"position": "alibi", "window": 16}\''
        ),
    ] = None,
    seq_len: Annotated[int | None, typer.Option(help="tokens per forward pass (default: the model's max_seq_len)")] = (
        None
    ),
    device: Annotated[str, typer.Option(help=f"the device to explain for: {', '.join(DEVICES)}")] = "cpu",
    dtype: Annotated[str, typer.Option(help=f"the activations' dtype: {', '.join(DTYPES)}")] = "float32",
    hook: Annotated[
        list[str] | None, typer.Option(help="a hook point read by a hook (repeatable), e.g. blocks.0.attn.hook_pattern")
    ] = None,
) -> None:
    """Print each attention layer's path and the rule of the dispatch table that chose it."""
    import torch

    from attnlab.model.config import ModelConfig
    from attnlab.model.explain import explain_model, format_explanation

    if device not in DEVICES:
        raise ConfigError("device", device, "unknown device", DEVICES)
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, "unknown dtype", DTYPES)
    models = sweep_models(sweep)
    if attention is not None:
        label, model = models[0]
        fields = {**model.model_dump(mode="json"), "attention": parse_attention(attention)}
        models = [(f"the first model of {sweep} with attention {attention}", ModelConfig.parse(fields))]
    for label, model in models:
        rows = explain_model(model, device=device, dtype=getattr(torch, dtype), seq_len=seq_len, hooks=hook or ())
        t = seq_len or model.max_seq_len
        console.print(f"{label} ({device}, {dtype}, T = {t})", markup=False, highlight=False)
        console.print(format_explanation(rows), markup=False, highlight=False, soft_wrap=True)
        console.print()
