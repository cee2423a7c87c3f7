"""Markdown and self-contained HTML renderings of a Report (the JSON one is ``Report.to_json``).

The HTML page is one file: inline CSS, plots as ``data:image/png;base64`` images, no scripts and no links,
so it opens offline and can be mailed or attached to an issue. Every text from the caller is escaped.
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from .sections import Section, Table, sections

if TYPE_CHECKING:
    from .report import Report

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1240px;
       padding: 0 1rem; color: #212529; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #dee2e6; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta { color: #495057; margin-top: 0; } .notes { background: #fff9db; border-left: 4px solid #fab005;
       padding: 0.5rem 1rem; } .text { color: #495057; font-size: 0.93rem; }
nav a { margin-right: 0.8rem; color: #1864ab; text-decoration: none; font-size: 0.92rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.86rem; }
th, td { border: 1px solid #dee2e6; padding: 0.25rem 0.55rem; text-align: right; white-space: nowrap; }
.txt { text-align: left; } .ci { color: #868e96; font-size: 0.78rem; } th { background: #f1f3f5; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.2rem; }
.scroll { overflow-x: auto; } img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = [f"**{_md_cell(table.caption)}**", ""] if table.caption else []
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("|" + "|".join(["---" if i < table.text_columns else "---:" for i in range(len(table.header))]) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return [*lines, ""]


def _header_facts(report: Report) -> str:
    best = f"best member: {report.best_member}" + (f"; best fuser: {report.best_fuser}" if report.best_fuser else "")
    return f"Split: {report.split} · {report.rows} rows · labels: {', '.join(report.labels)} · {best}"


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown (tables only; the plots are in the HTML rendering)."""
    lines = [f"# {report.title}", "", _header_facts(report), ""]
    if report.notes:
        lines += ["> **Notes**", *(f"> - {note}" for note in report.notes), ""]
    for section in sections(report):
        lines += [f"## {section.title}", "", section.text, ""]
        for table in section.tables:
            lines += _md_table(table)
    return "\n".join(lines).rstrip() + "\n"


def _html_table(table: Table) -> str:
    esc = html.escape
    caption = f"<caption>{esc(table.caption)}</caption>" if table.caption else ""
    def cell(tag: str, i: int, text: str) -> str:
        first, _, second = text.partition("\n")
        inner = esc(first) + (f'<br><span class="ci">{esc(second)}</span>' if second else "")
        return f'<{tag} class="txt">{inner}</{tag}>' if i < table.text_columns else f"<{tag}>{inner}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(table.header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    return f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_section(section: Section) -> str:
    parts = [f'<section id="{section.id}">', f"<h2>{html.escape(section.title)}</h2>",
             f'<p class="text">{html.escape(section.text)}</p>']
    if section.plot is not None:
        data = base64.b64encode(section.plot()).decode("ascii")
        parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(section.plot_alt)}">')
    parts += [_html_table(t) for t in section.tables]
    return "\n".join([*parts, "</section>"])


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    parts = sections(report)
    notes = ("<div class=\"notes\"><strong>Notes</strong><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes)
             + "</ul></div>") if report.notes else ""
    nav = "<nav>" + "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in parts) + "</nav>"
    body = "\n".join(_html_section(s) for s in parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(report.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(report.title)}</h1>\n<p class=\"meta\">{esc(_header_facts(report))}</p>\n{notes}\n{nav}\n"
        f"{body}\n</body>\n</html>\n"
    )
