"""``attnlab longctx``: long-context inference on pretrained models (KV-cache policies; sparse prefill).

One group file that mounts each command's module (``longctx_kv.py``: ``attnlab longctx kv``); the logic lives in
``attnlab.longctx`` and ``attnlab.experiments``.
"""

from __future__ import annotations

import typer

from attnlab.cli.longctx_kv import kv

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Long-context inference: KV-cache policies against compression ratio (attnlab longctx kv smollm2).",
)
app.command("kv")(kv)
