"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

from analysis.tables import markdown_table


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str  # may hold `code` and **bold**


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    header: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report's folder
    alt: str


Block = Heading | Para | Bullets | Grid | Image


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Grid):
            parts.append(markdown_table(list(b.header), [list(c) for c in b.cells]))
        elif isinstance(b, Image):
            parts.append(f"![{b.alt}]({b.path})")
    return "\n\n".join(parts) + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #ddd;margin:.5rem 0}code{background:#f4f4f4;padding:0 .2rem}"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    """Images are embedded as data URIs so the file stands alone."""
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Grid):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.cells)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode((folder / b.path).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}"></p>')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    # Titles, descriptions and labels come from files in the results folder: all of it is escaped (quotes
    # too, so nothing closes an attribute), and only links a reader can follow safely become links.
    text = html.escape(text, quote=True)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)",
                  lambda m: f'<a href="{m[2]}">{m[1]}</a>' if _safe_link(m[2]) else m[0], text)


def _safe_link(escaped_url: str) -> bool:
    """http(s) or relative. Browsers drop whitespace and control characters inside a scheme
    (`java\tscript:`), so the scheme is read the way they read it; they read a backslash as a slash, and
    `//host/x` (so `\\\\host\\x` too) as another host: a link starting with // or holding a backslash is refused."""
    url = re.sub(r"[\x00-\x20\x7f]", "", html.unescape(escaped_url))
    if url.startswith("//") or "\\" in url:
        return False
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", url)
    return scheme is None or scheme[1].lower() in ("http", "https")
