"""``attnlab longctx``: long-context inference on pretrained models (sparse prefill; KV-cache policies).

One group file that mounts each command's module (``longctx_prefill.py``: ``attnlab longctx prefill``;
``longctx_kv.py``: ``attnlab longctx kv``); the logic lives in ``attnlab.longctx`` and ``attnlab.experiments``.
"""

from __future__ import annotations

import typer

from attnlab.cli.longctx_kv import kv
from attnlab.cli.longctx_prefill import prefill

longctx_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Long-context inference: sparse prefill patterns and KV-cache policies (attnlab longctx prefill | kv).",
)
longctx_app.command("prefill")(prefill)
longctx_app.command("kv")(kv)
