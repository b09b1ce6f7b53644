"""A report as one HTML page and one Markdown page, from sections of text, tables and figures.

Both pages sit beside the figures they show (relative links), so a report folder can be
copied or served as it is. Nothing here knows what a sweep or an analysis is: callers build
`Section`s.
"""

from __future__ import annotations

import dataclasses
import html
import posixpath
from collections.abc import Sequence
from pathlib import Path

from transfusion_jax.paths import to_path

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
.conclusion { background: #f6f9ff; border-left: 4px solid #4a7bd0; padding: .6em 1em; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


@dataclasses.dataclass
class Table:
    """A small table: ``header`` and ``rows`` of already formatted cells."""

    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclasses.dataclass
class Figure:
    """An image file (absolute or relative to the report) with its caption."""

    path: str | Path
    caption: str


@dataclasses.dataclass
class Section:
    """A heading with paragraphs, then tables, then figures. ``highlight`` boxes the text."""

    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    highlight: bool = False


def _rel(path: str | Path, out_dir: Path) -> str:
    return posixpath.relpath(str(to_path(path)), str(to_path(out_dir)))  # local or gs://


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in t.rows)
    caption = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(t: Table) -> str:
    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines += ["| " + " | ".join(map(str, t.header)) + " |",
              "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in t.rows]
    return "\n".join(lines)


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], *,
                 name: str = "report") -> tuple[Path, Path]:
    """Writes ``out_dir/{name}.html`` and ``out_dir/{name}.md``; returns their paths."""
    out = to_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    body, md = [f"<h1>{html.escape(title)}</h1>"], [f"# {title}", ""]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        text = "".join(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
        body.append(f'<div class="conclusion">{text}</div>' if s.highlight and text else text)
        md += [p + "\n" for p in s.paragraphs]
        for t in s.tables:
            body.append(_html_table(t))
            md += [_md_table(t), ""]
        for f in s.figures:
            if not f.path or not to_path(f.path).is_file():
                continue
            rel = _rel(f.path, out)
            body.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(f.caption)}">'
                        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
            md += [f"![{f.caption}]({rel})", "", f"*{f.caption}*", ""]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    html_path, md_path = out / f"{name}.html", out / f"{name}.md"
    html_path.write_text(page)
    md_path.write_text("\n".join(md) + "\n")
    return html_path, md_path
