"""Which path computes each attention layer of a model, and the rule that chose it (``attnlab explain``).

``explain_model`` builds the model on PyTorch's meta device (no weights are allocated or initialised), attaches a
no-op hook at each named hook point, and asks every attention layer the same question its forward pass asks:
``Attention.choose_path`` → ``attnlab.attention.dispatch.choose``, for ``seq_len`` queries against as many keys.
On a CPU the answer may depend on whether the compiled kernels are available: asking builds them on first use
(``attnlab.attention.fast.native``), as the first forward pass would. For CUDA on a machine without one, the
Triton kernels count as running where triton is installed (what a GPU with this environment would do).
``format_explanation`` prints the rows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnlab.attention import Attention
from attnlab.errors import ConfigError
from attnlab.hook_points import hook_points
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model


@dataclass(frozen=True)
class LayerPath:
    """One attention layer: where it sits, what it is made of, and how it is computed."""

    module: str  # its module path, e.g. blocks.0.attn
    layer: int
    site: str  # self | cross
    normaliser: str
    heads: str
    position: str
    backend: str
    path: str
    rule: str
    reason: str


def explain_model(
    cfg: ModelConfig,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seq_len: int | None = None,
    hooks: Sequence[str] = (),
) -> list[LayerPath]:
    """Each attention layer's path for a forward pass of ``seq_len`` tokens (default: ``cfg.max_seq_len``) on
    ``device`` in ``dtype``, with hooks reading the named hook points (e.g. ``blocks.0.attn.hook_pattern``)."""
    t = cfg.max_seq_len if seq_len is None else seq_len
    if t < 1:
        raise ConfigError("seq_len", t, "must be a positive number of tokens", ">= 1")
    with torch.device("meta"):
        model = build_model(cfg)
    points = hook_points(model)
    unknown = [name for name in hooks if name not in points]
    if unknown:
        raise ConfigError("hooks", unknown[0], "unknown hook point", [*sorted(points)[:8], "..."])
    for name in hooks:
        points[name].register_forward_hook(lambda *_: None)
    # CUDA explained on a machine without one: the Triton kernels run there if triton is installed
    absent_gpu = torch.device(device).type == "cuda" and not torch.cuda.is_available()
    triton_runs = importlib.util.find_spec("triton") is not None if absent_gpu else None
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, Attention):
            continue
        choice = module.choose_path(t_q=t, t_k=t, device=device, dtype=dtype, triton_runs=triton_runs)
        site, attention = module.site, module.cfg
        rows.append(
            LayerPath(
                module=name,
                layer=site.layer_idx,
                site="cross" if site.cross else "self",
                normaliser=module.normaliser_name,
                heads=attention.heads,
                position="nope" if site.cross else attention.position,
                backend=attention.backend,
                path=choice.path,
                rule=choice.rule,
                reason=choice.reason,
            )
        )
    return rows


COLUMNS = ("module", "layer", "site", "normaliser", "heads", "position", "backend", "path", "rule", "reason")


def format_explanation(rows: Sequence[LayerPath]) -> str:
    """A plain-text table, one line per layer, columns padded to their widest cell."""
    cells = [list(COLUMNS)] + [[str(getattr(row, column)) for column in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
