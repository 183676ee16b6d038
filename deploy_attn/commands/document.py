"""A report as blocks, rendered as Markdown and as HTML."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Sequence


# --- blocks: what the report says, independent of the format ---------------------------
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Plot:
    file: str  # PNG name beside report.md
    alt: str
    png: bytes


Block = Heading | Para | Table | Plot


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        elif isinstance(b, Plot):
            out.append(f"![{b.alt}]({b.file})")
        out.append("")
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;
max-width:1150px;color:#1d2430;line-height:1.4}h1{border-bottom:3px solid #2b6cb0}
h2{margin-top:1.8em;border-bottom:1px solid #cbd5e0}table{border-collapse:collapse;
margin:.6em 0;font-size:13px}th{background:#2b6cb0;color:#fff;text-align:left}
th,td{border:1px solid #cbd5e0;padding:3px 7px;vertical-align:top}
tr:nth-child(even) td{background:#f1f5fa}img{max-width:100%;display:block;margin:1em 0}
td.fail{color:#c53030;font-weight:600}td.pass{color:#2f855a}"""


def render_html(blocks: Sequence[Block]) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                       + "</tr>")
            for row in b.rows:
                cells = []
                for c in row:
                    cls = {"pass": " class='pass'", "FAIL": " class='fail'"}.get(c, "")
                    cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        elif isinstance(b, Plot):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f"<img alt='{html.escape(b.alt)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)
