"""A report as a list of blocks (headings, paragraphs, lists, tables, figures), rendered to markdown and HTML.

Every string may come from a results database (run names, configs, error messages), so both renderers
escape it: HTML with ``html.escape`` everywhere (text, attributes, alt texts), markdown by turning ``& < >``
into entities (raw HTML in a name stays inert when the markdown is rendered) and backslash-escaping the
characters that would change the markdown structure (``\\ ` * [ ] |``). The HTML page is self-contained:
inline CSS, figures as base64 ``data:`` URIs, no scripts, and a Content-Security-Policy that forbids
loading anything else.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    """Monospace text (a run id, a path)."""

    text: str


Part = str | Code


@dataclass
class Heading:
    """A section heading (level 2, 3, ...); level-2 headings with an anchor make the HTML's table of contents."""

    level: int
    text: str
    anchor: str = ""


@dataclass
class Paragraph:
    """Running text: plain strings and ``Code`` parts."""

    parts: list[Part]


@dataclass
class Items:
    """A bullet list; each item is a list of parts."""

    items: list[list[Part]]


@dataclass
class Table:
    """A table of strings; ``css`` is the HTML class (``leaderboard``, ``runs``, ...)."""

    columns: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    css: str = ""


@dataclass
class Figure:
    """A PNG: a file beside report.md, a data URI in report.html."""

    name: str  # file name beside report.md
    png: bytes
    caption: str


Block = Heading | Paragraph | Items | Table | Figure

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def md_text(text: object) -> str:
    """Plain text for markdown: entities for ``& < >``, backslashes before ``\\ ` * [ ] |``, one line."""
    escaped = html.escape(str(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", escaped).replace("\r", " ").replace("\n", " ")


def md_code(text: object, in_table: bool = False) -> str:
    """A markdown code span holding ``text`` verbatim (its fence is longer than any backtick run inside)."""
    body = str(text).replace("\r", " ").replace("\n", " ")
    if in_table:
        body = body.replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def _md_parts(parts: list[Part]) -> str:
    return "".join(md_code(p.text) if isinstance(p, Code) else md_text(p) for p in parts)


def slug(text: str) -> str:
    """A file-name and anchor-safe form of ``text`` (letters, digits, ``_ . -``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def render_markdown(title: str, blocks: list[Block]) -> str:
    """The report as GitHub-flavoured markdown; figures refer to their PNG files by name."""
    out = [f"# {md_text(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * block.level} {md_text(block.text)}", ""]
        elif isinstance(block, Paragraph):
            out += [_md_parts(block.parts), ""]
        elif isinstance(block, Items):
            out += [f"- {_md_parts(item)}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(md_text(c) for c in block.columns) + " |")
            out.append("|" + "".join("---:|" if i in block.numeric else "---|" for i in range(len(block.columns))))
            out += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Figure):
            out += [f"![{md_text(block.caption)}]({block.name})", ""]
    return "\n".join(out)


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #d6d6d6; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
code { font: 12px ui-monospace, "SFMono-Regular", Menlo, monospace; background: #f3f3f3; padding: 0 .2em; }
figure { margin: 1em 0 1.6em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12px; } nav ul { columns: 3; } .muted { color: #666; }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_parts(parts: list[Part]) -> str:
    return "".join(f"<code>{_e(p.text)}</code>" if isinstance(p, Code) else _e(p) for p in parts)


def render_html(title: str, blocks: list[Block]) -> str:
    """The report as one self-contained HTML page: inline CSS, PNGs as data URIs, no scripts."""
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2 and b.anchor]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if toc:
        links = "".join(f'<li><a href="#{_e(h.anchor)}">{_e(h.text)}</a></li>' for h in toc)
        out.append(f"<nav><ul>{links}</ul></nav>")
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{_e(block.anchor)}"' if block.anchor else ""
            out.append(f"<h{block.level}{anchor}>{_e(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_html_parts(block.parts)}</p>")
        elif isinstance(block, Items):
            out.append("<ul>" + "".join(f"<li>{_html_parts(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            out.append(_html_table(block))
        elif isinstance(block, Figure):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_e(block.caption)}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>"
            )
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _html_table(table: Table) -> str:
    def cell(tag: str, i: int, text: str) -> str:
        css = ' class="num"' if i in table.numeric else ""
        return f"<{tag}{css}>{_e(text)}</{tag}>"

    css = f' class="{_e(table.css)}"' if table.css else ""
    head = "".join(cell("th", i, c) for i, c in enumerate(table.columns))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
