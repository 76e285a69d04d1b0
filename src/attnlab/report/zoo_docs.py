"""Docs generated from the registries: one page per entry with its picture, and the compatibility matrix.

``attnlab docs`` writes ``docs/zoo/<axis>/<name>.md``, ``docs/zoo/img/<axis>-<name>.png``,
``docs/zoo/README.md`` (the index) and ``docs/compatibility.md``. Pages are rebuilt from the code, so
they cannot drift from it; a test checks that the committed pages match.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnlab.attention import HEADS, NORMALISERS, AttentionConfig, AttentionSite, build_attention
from attnlab.attention.linear.feature_maps import FEATURE_MAPS
from attnlab.checks import AXES, entry_config  # the config that shows one entry, as the checks build it
from attnlab.errors import ConfigError
from attnlab.position import POSITIONS
from attnlab.registry import Capabilities, Entry
from attnlab.report.tables import md_cell

USES = (("causal", "causal"), ("non-causal", "non_causal"), ("cross", "cross"), ("KV cache", "kv_cache"))
PICTURE_T = 24


def entry_site(entry: Entry) -> AttentionSite:
    caps = entry.capabilities
    return AttentionSite(d_model=32, n_heads=4, causal=caps.causal, n_layers=1, seq_len=PICTURE_T)


@torch.no_grad()
def pattern_of(axis: str, entry: Entry, seed: int = 0) -> torch.Tensor:
    """Head-by-head attention weights [H, T, T] of a freshly initialised layer on a fixed input."""
    torch.manual_seed(seed)
    cfg, site = entry_config(axis, entry), entry_site(entry)
    module = build_attention(cfg, site).eval()
    for p in module.parameters():  # lively weights: the default init makes every pattern uniform
        p.normal_(0.0, 0.35 if p.dim() > 1 else 0.1)
    g = torch.Generator().manual_seed(seed)
    if axis == "position":  # same content everywhere, so the picture shows what the position does
        x = torch.randn(1, 1, site.d_model, generator=g).expand(1, PICTURE_T, site.d_model).clone()
        x += 0.05 * torch.randn(1, PICTURE_T, site.d_model, generator=g)
    else:
        x = torch.randn(1, PICTURE_T, site.d_model, generator=g)
    captured: dict[str, torch.Tensor] = {}
    handle = module.hook_pattern.register_forward_hook(lambda _m, _i, out: captured.setdefault("w", out))
    try:
        module(x)
    finally:
        handle.remove()
    return captured["w"][0].float()


def draw_pattern(weights: torch.Tensor, title: str, path: Path) -> Path:
    signed = bool((weights < 0).any())
    n = weights.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.5), dpi=90)
    for h, ax in enumerate(axes if n > 1 else [axes]):
        w = weights[h]
        if signed:
            lim = float(w.abs().max()) or 1.0
            ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
        else:
            ax.imshow(w, cmap="viridis", vmin=0.0)
        ax.set_title(f"head {h}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + ("  (red +, blue −)" if signed else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def _mark(flag: bool) -> str:
    return "✓" if flag else "–"


def params_table(entry: Entry) -> list[str]:
    if entry.params is None or not entry.params.model_fields:
        return ["No arguments."]
    lines = ["| argument | type | default |", "|---|---|---|"]
    for name, f in entry.params.model_fields.items():
        default = "required" if f.is_required() else repr(f.default)
        annotation = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        lines.append(f"| `{name}` | {md_cell(annotation)} | {md_cell(default)} |")
    return lines


def capability_lines(caps: Capabilities) -> list[str]:
    lines = [
        "| " + " | ".join(u for u, _ in USES) + " | row-stochastic | signed | backends |",
        "|---|---|---|---|---|---|---|",
    ]
    cells = [_mark(getattr(caps, c)) for _, c in USES]
    cells += [_mark(caps.row_stochastic), _mark(caps.signed), ", ".join(caps.backends)]
    return [lines[0], lines[1], "| " + " | ".join(cells) + " |"]


def entry_page(axis: str, entry: Entry, picture: str) -> str:
    module = sys.modules[entry.factory.__module__]
    doc = inspect.cleandoc(module.__doc__ or "")
    config = entry_config(axis, entry)
    example = {k: v for k, v in config.model_dump().items() if v not in ({}, None, "auto")}
    lines = [
        f"# `{entry.name}` ({axis})",
        "",
        f"{entry.summary}.",
        "",
        f"Paper: {entry.paper or '—'}. Source: `{entry.factory.__module__.replace('.', '/')}.py`.",
        "",
        "## From the source",
        "",
        "```text",
        doc,
        "```",
        "",
        "## Capabilities",
        "",
        *capability_lines(entry.capabilities),
        "",
        "## Arguments",
        "",
        *params_table(entry),
        "",
        "## Use",
        "",
        "```python",
        f"AttentionConfig(**{example!r})",
        "```",
        "",
        f"![pattern of `{entry.name}`]({picture})",
        "",
        f"*Attention weights of the {PICTURE_T}-token pattern of a freshly initialised layer (random weights, "
        + ("one content vector at every position, so only position shapes it" if axis == "position" else "random input")
        + "), per head; made by `attnlab docs`.*",
        "",
    ]
    return "\n".join(lines)


def compatibility_markdown() -> str:
    """Entry × use, and mechanism × position for causal self-attention, both decided by the registry."""
    lines = [
        "# Compatibility matrix",
        "",
        "Generated by `attnlab docs` from the capability records; `✓` builds and runs, `–` is rejected with a",
        "message naming the field and the allowed values. Tests check both directions.",
        "",
        "## Entry × use",
        "",
        "| axis | entry | " + " | ".join(u for u, _ in USES) + " | backends |",
        "|---|---|" + "---|" * (len(USES) + 1),
    ]
    for axis, (registry, _key) in AXES.items():
        for e in registry.entries():
            marks = [_mark(getattr(e.capabilities, c)) for _, c in USES]
            lines.append(f"| {axis} | `{e.name}` | " + " | ".join(marks) + f" | {', '.join(e.capabilities.backends)} |")
    positions = POSITIONS.names()
    lines += [
        "",
        "## Mechanism × position (causal self-attention)",
        "",
        "| mechanism | " + " | ".join(f"`{p}`" for p in positions) + " |",
        "|---|" + "---|" * len(positions),
    ]
    for axis in ("normaliser", "heads"):
        registry = AXES[axis][0]
        for e in registry.entries():
            row = [_mark(pair_supported(axis, e.name, p)) for p in positions]
            lines.append(f"| {axis} `{e.name}` | " + " | ".join(row) + " |")
    heads = HEADS.names()
    lines += [
        "",
        "## Normaliser × heads (causal self-attention, RoPE)",
        "",
        "| normaliser | " + " | ".join(f"`{h}`" for h in heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for n in NORMALISERS.names():
        lines.append(f"| `{n}` | " + " | ".join(_mark(combo_supported(n, h)) for h in heads) + " |")
    lines.append("")
    return "\n".join(lines)


def combo_config(normaliser: str, heads: str) -> AttentionConfig:
    return AttentionConfig(
        normaliser=normaliser,
        normaliser_args=dict(NORMALISERS.entry(normaliser).example),
        heads=heads,
        heads_args=dict(HEADS.entry(heads).example),
    )


def combo_supported(normaliser: str, heads: str) -> bool:
    try:
        combo_config(normaliser, heads).check_site(AttentionSite(d_model=32, n_heads=4, causal=True, seq_len=16))
    except ConfigError:
        return False
    return True


def pair_config(axis: str, name: str, position: str) -> AttentionConfig:
    registry, key = AXES[axis]
    return AttentionConfig(**{key: name, f"{key}_args": dict(registry.entry(name).example), "position": position})


def pair_supported(axis: str, name: str, position: str) -> bool:
    try:
        cfg = pair_config(axis, name, position)
        cfg.check_site(AttentionSite(d_model=32, n_heads=4, causal=True, seq_len=16))
    except ConfigError:
        return False
    return True


def feature_map_instance(entry: Entry):
    """A callable φ for a feature-map entry: the function itself, or its module built from ``example``."""
    return entry.factory(**entry.example) if isinstance(entry.factory, type) else entry.factory


@torch.no_grad()
def feature_map_pattern(entry: Entry, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Causal linear-attention weights φ(q_i)·φ(k_j) / Σ_j' φ(q_i)·φ(k_j') [1, T, T] for random q, k [T, d]."""
    torch.manual_seed(seed)
    phi = feature_map_instance(entry)
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 1, PICTURE_T, d, generator=g) for _ in range(2))
    kernel = (phi(q) @ phi(k).transpose(-1, -2))[0]  # [1, T, T]
    kernel = kernel.masked_fill(torch.ones(PICTURE_T, PICTURE_T, dtype=torch.bool).triu(1), 0.0)
    return kernel / kernel.sum(-1, keepdim=True)


def feature_map_page(entry: Entry, picture: str) -> str:
    module = sys.modules[entry.factory.__module__]
    obj_doc = inspect.cleandoc(entry.factory.__doc__ or "")
    lines = [
        f"# `{entry.name}` (feature map)",
        "",
        f"{entry.summary}.",
        "",
        f"Paper: {entry.paper or '—'}. Source: `{entry.factory.__module__.replace('.', '/')}.py`.",
        "",
        "## From the source",
        "",
        "```text",
        inspect.cleandoc(module.__doc__ or ""),
        *(["", obj_doc] if obj_doc else []),
        "```",
        "",
        "Feature maps are used by the kernel-attention normalisers (`linear_elu`, `hedgehog`, `based`,",
        "`lightning`, `retnet`, `kernel_rpe_fft`); see their pages.",
        "",
        f"![kernel pattern of `{entry.name}`]({picture})",
        "",
        f"*Causal linear-attention weights φ(q_i)·φ(k_j) / Σ_j φ(q_i)·φ(k_j) for random q, k ({PICTURE_T} tokens, "
        "d = 16); made by `attnlab docs`.*",
        "",
    ]
    return "\n".join(lines)


def write_docs(out: Path) -> list[Path]:
    zoo = out / "zoo"
    written = []
    index = ["# The zoo", "", "One page per registry entry, generated by `attnlab docs`.", ""]
    for axis, (registry, _key) in AXES.items():
        index += [f"## {axis}", "", "| entry | summary | paper |", "|---|---|---|"]
        for e in registry.entries():
            picture = zoo / "img" / f"{axis}-{e.name}.png"
            draw_pattern(pattern_of(axis, e), f"{axis} {e.name}", picture)
            page = zoo / axis / f"{e.name}.md"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(entry_page(axis, e, f"../img/{picture.name}"))
            written += [page, picture]
            index.append(f"| [`{e.name}`]({axis}/{e.name}.md) | {md_cell(e.summary)} | {md_cell(e.paper)} |")
        index.append("")
    index += ["## feature map", "", "| entry | summary | paper |", "|---|---|---|"]
    for e in FEATURE_MAPS.entries():
        picture = zoo / "img" / f"feature_map-{e.name}.png"
        draw_pattern(feature_map_pattern(e), f"feature map {e.name}", picture)
        page = zoo / "feature_map" / f"{e.name}.md"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(feature_map_page(e, f"../img/{picture.name}"))
        written += [page, picture]
        index.append(f"| [`{e.name}`](feature_map/{e.name}.md) | {md_cell(e.summary)} | {md_cell(e.paper)} |")
    index.append("")
    (zoo / "README.md").write_text("\n".join(index))
    (out / "compatibility.md").write_text(compatibility_markdown())
    return [*written, zoo / "README.md", out / "compatibility.md"]
