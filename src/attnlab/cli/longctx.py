"""``attnlab longctx``: long-context inference on pretrained models (sparse prefill; KV-cache policies)."""

from __future__ import annotations

import typer

from attnlab.cli.longctx_prefill import prefill

longctx_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Long-context inference: sparse prefill (attnlab longctx prefill)."
)
longctx_app.command("prefill")(prefill)
