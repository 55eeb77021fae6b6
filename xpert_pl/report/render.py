"""A tiny document model rendered twice from the same blocks: Markdown, and a self-contained HTML page.

Inline text may use `code` and **bold**; everything else is escaped in HTML. Figures are linked by relative
path in Markdown and embedded as base64 data URIs in HTML, so the page needs no other file and no network.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    """Rows of already formatted cells; `numeric` marks right-aligned columns."""

    header: list[str]
    rows: list[list[str]]
    numeric: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    """A verbatim block; `title` makes it a collapsed `<details>` in HTML and a labelled block in Markdown."""

    text: str
    lang: str = ""
    title: str | None = None


Block = Heading | Paragraph | Bullets | Table | Figure | Code

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f4f4f4;padding:0 0.2em}pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:0.85em}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:0.9em;color:#555}
details{margin:0.4em 0}summary{cursor:pointer}
"""


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown text; figure paths are written relative to `base` (the report's directory)."""
    return "\n\n".join(_markdown_block(block, base) for block in blocks) + "\n"


def _markdown_block(block: Block, base: Path) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return _markdown_table(block)
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.path.relative_to(base).as_posix()})\n\n*{block.caption}*"
    fence = "````" if "```" in block.text else "```"
    label = f"**{block.title}**\n\n" if block.title else ""
    return f"{label}{fence}{block.lang}\n{block.text.rstrip()}\n{fence}"


def _markdown_table(table: Table) -> str:
    numeric = _numeric(table)
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numeric(table: Table) -> tuple[bool, ...]:
    return tuple(table.numeric) + (False,) * (len(table.header) - len(table.numeric))


def to_html(blocks: list[Block], title: str) -> str:
    """A complete HTML page with inline CSS and every figure embedded."""
    body = "\n".join(_html_block(block) for block in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{inline_html(i)}</li>" for i in block.items) + "\n</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return (
            f'<figure><img alt="{html.escape(block.caption)}" src="{data_uri(block.path)}">'
            f"<figcaption>{inline_html(block.caption)}</figcaption></figure>"
        )
    pre = f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"
    return f"<details><summary>{inline_html(block.title)}</summary>{pre}</details>" if block.title else pre


def _html_table(table: Table) -> str:
    numeric = _numeric(table)
    head = "".join(f"<th>{inline_html(h)}</th>" for h in table.header)
    cells = (zip(row, numeric, strict=True) for row in table.rows)
    rows = ["<tr>" + "".join(_html_cell(c, n) for c, n in row) + "</tr>" for row in cells]
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _html_cell(text: str, numeric: bool) -> str:
    return f"<td{' class=num' if numeric else ''}>{inline_html(text)}</td>"


def inline_html(text: str) -> str:
    """Escape `text`, then turn `code` and **bold** into tags."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def data_uri(path: Path) -> str:
    """The file as a base64 `data:` URI (PNG, SVG, JPEG by suffix)."""
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
    kind = mime.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
