"""HTML tables without heavy imports (used by the report and by `cnnbench bench-report`)."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable

Cell = str | tuple[str, float]  # display text (HTML), or (display text, sort key)


def html_table(header: list[str], rows: Iterable[list[Cell]], numeric: set[int] = frozenset(),
               row_class: Callable[[int], str] = lambda i: "", sortable: bool = False) -> str:
    """An HTML table; cells are HTML already (escape text before). (text, key) cells sort by key."""
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if i in numeric else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            text, key = cell if isinstance(cell, tuple) else (cell, None)
            attrs = (' class="num"' if i in numeric else "") + (f' data-v="{key}"' if key is not None else "")
            cells.append(f"<td{attrs}>{text}</td>")
        cls = row_class(r)
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>' if cls else f"<tr>{''.join(cells)}</tr>")
    kind = ' class="sortable"' if sortable else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
