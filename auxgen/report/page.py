"""index.html: one static page, inline CSS, no JavaScript; figures linked by relative file name.

Every string that comes from a user (paths, folder and class names, messages quoting them) goes
through html.escape: a class folder named `<script>` must show as text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any

from auxgen.report.figures import Fig

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.2em 1.5em 3em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
.box { border-radius: 6px; padding: 0.6em 1em; margin: 0.8em 0; }
.warn { background: #fdecea; border: 1px solid #f5c2bd; } .warn li { margin: 0.2em 0; }
.note { background: #f4f6f8; border: 1px solid #dde3e8; } .ok { background: #edf7ed; border: 1px solid #c3e6c3; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.88em;
              word-break: break-all; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1em 1.4em; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #555; }
.wide img { width: auto; max-width: 100%; }
footer { margin-top: 3em; color: #888; font-size: 0.85em; }
</style>
</head>
<body>
<h1>auxgen report</h1>
<p class="sub">$subtitle</p>
$body
<footer>$footer</footer>
</body>
</html>
""")


def esc(x: Any) -> str:
    """Text for HTML: escaped, quotes included."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell; blanks for what was not recorded."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return esc(x)


def pct(x: Any) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{100 * x:.1f}%"


def figure(f: Fig, wide: bool = False) -> str:
    """A figure with its PNG (relative link) and caption."""
    cap = f"<figcaption>{esc(f.caption)}</figcaption>" if f.caption else ""
    cls = ' class="wide"' if wide else ""
    return f'<figure{cls}><img src="{esc(f.name)}.png" alt="{esc(f.title)}" loading="lazy">{cap}</figure>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; cells are HTML already (escape what goes into them)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(rows: Sequence[tuple[str, str]]) -> str:
    """Two columns, the first a heading (escaped here); values are HTML already."""
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def box(kind: str, title: str, items: Sequence[str]) -> str:
    """A coloured box with a list of (plain-text, escaped here) items."""
    if not items:
        return ""
    lis = "".join(f"<li>{esc(i)}</li>" for i in items)
    return f'<div class="box {kind}"><strong>{esc(title)}</strong><ul>{lis}</ul></div>'


@dataclass
class Page:
    """The page being assembled: sections of HTML in order."""

    title: str
    subtitle: str
    footer: str
    parts: list[str] = field(default_factory=list)

    def add(self, html_text: str) -> None:
        self.parts.append(html_text)

    def section(self, heading: str, intro: str = "") -> None:
        self.parts.append(f"<h2>{esc(heading)}</h2>" + (f"<p>{esc(intro)}</p>" if intro else ""))

    def render(self) -> str:
        return _PAGE.substitute(title=esc(self.title), subtitle=self.subtitle, footer=self.footer,
                                body="\n".join(self.parts))
