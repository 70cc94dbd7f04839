"""The HTML page around the sections: header, table of contents, styles. No external resources."""

from __future__ import annotations

import html
from datetime import datetime, timezone

from jinja2 import Environment

from cnnbench.report.section import Section

_TEMPLATE = Environment(autoescape=False).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cnnbench - {{ title }}</title>
<style>
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:1rem 1.5rem 4rem}
header{background:#1d2330;color:#fff;padding:1.2rem 1.5rem}
header h1{margin:0;font-size:1.5rem} header p{margin:.3rem 0 0;color:#c9d1e0;max-width:1100px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #e3e6ec;padding:.4rem 1.5rem;z-index:1;font-size:.9rem}
nav a{margin-right:1rem;color:#2958a8;text-decoration:none}
section{margin-top:2rem} h2{border-bottom:2px solid #e3e6ec;padding-bottom:.2rem} h3{margin-bottom:.3rem}
table{border-collapse:collapse;font-size:.88rem;background:#fff;margin:.5rem 0}
th,td{padding:.3rem .55rem;border-bottom:1px solid #e3e6ec;text-align:left;vertical-align:top}
th{background:#f0f2f6;position:sticky;top:2.2rem} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{background:#f4f7fd;font-weight:600}
.alarm{border:3px solid #c62828;background:#fdecea;padding:.2rem 1rem;margin:.5rem 0;font-size:1.05rem}
.better{color:#1a7f37;font-weight:600}.worse{color:#c62828;font-weight:600}.nodiff{color:#5f6b7a}
figure{margin:.8rem 0} figure img{max-width:100%;height:auto;background:#fff;border:1px solid #e3e6ec}
figcaption{font-size:.85rem;color:#5f6b7a;max-width:900px}
.note{font-size:.88rem;color:#5f6b7a;max-width:950px} code{background:#eef0f4;padding:0 .25rem;border-radius:3px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:1rem}
details{margin:.6rem 0;background:#fff;border:1px solid #e3e6ec;border-radius:4px;padding:.3rem .8rem}
summary{cursor:pointer;font-weight:600}
table.sortable th{cursor:pointer} table.sortable th:hover{background:#e3e8f2}
</style></head><body>
<header><h1>cnnbench study: {{ title }}</h1>{% if description %}<p>{{ description }}</p>{% endif %}</header>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
{% for s in sections %}<section id="{{ s.id }}"><h2>{{ s.title }}</h2>
{{ s.html }}
</section>
{% endfor %}
<p class="note">Generated {{ generated }} by cnnbench from the run files under <code>{{ results }}</code>.</p>
</main>
<script>
// click a column header of a sortable table: numeric cells sort by their data-v value
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.dataset.dir = dir === 1 ? "asc" : "desc";
  const key = r => { const c = r.cells[col]; return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.textContent; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    return dir * (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))); });
  rows.forEach(r => body.appendChild(r));
}));
</script></body></html>
""")


def render_page(ctx, sections: list[Section]) -> str:
    return _TEMPLATE.render(
        title=html.escape(ctx.title), description=html.escape(ctx.description), sections=sections,
        results=html.escape(str(ctx.results_dir)),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
