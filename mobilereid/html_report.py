"""``report.html``: the Markdown report as one self-contained page, for a browser and for sending to a colleague.

The page is rendered from the same Markdown text as ``report.md`` (markdown-it-py, which rich already brings, with
its GFM table rule), so the two never disagree. Plots are embedded as ``data:`` PNG URIs, the style and the table
sorting (click a column header; numbers sort as numbers) are inline: the page loads nothing from anywhere, so it opens
offline and from an e-mail attachment. Every table gets ``data-sortable``; the script marks the body with
``data-ready`` when it has run, which the browser test checks.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#1b1f23}
table{border-collapse:collapse;margin:1em 0;font-size:13px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
figure{display:inline-block;margin:1em 1em 1em 0}figure img{max-width:640px;border:1px solid #d0d7de}
figcaption{font-size:12px;color:#57606a}
"""

# Click a header to sort by that column; a second click reverses. Cells that read as numbers (a leading +/-,
# a trailing % or unit) sort numerically, others as text; "-" sorts last.
_SCRIPT = """
(function(){
function key(t){var s=t.trim().replace(/[*%,]/g,'');var m=s.match(/^[+-]?\\d+(\\.\\d+)?(e[+-]?\\d+)?/i);
return m?[0,parseFloat(m[0])]:(s==='-'||s===''?[2,0]:[1,s.toLowerCase()]);}
function cmp(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:a[1]>b[1]?1:0;}
document.querySelectorAll('table').forEach(function(tb){
tb.setAttribute('data-sortable','');var ths=tb.querySelectorAll('thead th');
ths.forEach(function(th,i){th.addEventListener('click',function(){
var asc=!th.classList.contains('asc');ths.forEach(function(h){h.classList.remove('asc','desc');});
th.classList.add(asc?'asc':'desc');var body=tb.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(r1,r2){var c=cmp(key(r1.cells[i].textContent),key(r2.cells[i].textContent));return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});});
document.body.setAttribute('data-ready','1');
})();
"""


def render_html(markdown_text: str, title: str, plots: list[Path]) -> str:
    """One HTML page: the Markdown rendered, then each PNG of ``plots`` embedded with its file name as caption."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    figures = []
    for p in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        name = html.escape(Path(p).name)
        figures.append(
            f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'
        )
    plots_html = f"<h2>Plots</h2>\n{''.join(figures)}\n" if figures else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n{plots_html}<script>{_SCRIPT}</script>\n</body></html>\n"
    )
