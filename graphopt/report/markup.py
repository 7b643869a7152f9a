"""HTML building blocks the report page shares: escaping, number formatting, and `render_value`,
which turns any JSON-like stats value into readable HTML.

Pass stats are free-form (each pass reports what it decided in its own shape), so the page
cannot hard-code them all: `render_value` renders whatever it is given by shape. A list of
dicts or a dict of dicts becomes a table, a dict of scalars a two-column table, anything else a
definition list; every table is capped at `limit` rows with "N more rows" (the JSON report
holds them all), so a model with thousands of layers still gives a readable page.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

LIMIT = 50  # rows per table on the page
NUMBER = re.compile(r"[-+]?[\d.,]+(e[-+]?\d+)?x?( \([\d.e+-]+\))?|-|inf|nan")


def dict_table(rows: list[dict[str, Any]], limit: int = 500, first: str | None = None) -> str:
    """A list of dicts as an HTML table (union of keys, first-seen order; `first` names a
    column to put first)."""
    keys = list(dict.fromkeys(([first] if first else []) + [k for row in rows for k in row]))
    body = "".join("<tr>" + "".join(td(cell(row.get(k))) for k in keys) + "</tr>" for row in rows[:limit])
    return ("<table><tr>" + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>" + body + "</table>"
            + more_rows(len(rows), limit))


def pairs_table(pairs: list[tuple[Any, Any]], head: tuple[str, str] | None = None,
                limit: int = LIMIT) -> str:
    """Two columns (key, value), values rendered by shape."""
    top = f"<tr><th>{e(head[0])}</th><th>{e(head[1])}</th></tr>" if head else ""
    body = "".join(f"<tr><td>{e(k)}</td>" + (td(fmt(v)) if is_scalar(v) else f"<td>{render_value(v, 2)}</td>")
                   + "</tr>" for k, v in pairs[:limit])
    return f"<table class=kv>{top}{body}</table>" + more_rows(len(pairs), limit)


def td(text: str) -> str:
    """A cell: numbers (and "-") right-aligned, text left."""
    return f"<td class=num>{e(text)}</td>" if NUMBER.fullmatch(text) else f"<td>{e(text)}</td>"


def more_rows(total: int, limit: int) -> str:
    return f"<p class=more>({total - limit} more rows in the JSON report)</p>" if total > limit else ""


def render_value(value: Any, depth: int = 0, limit: int = LIMIT) -> str:
    """Any stats value as HTML, by shape (see the module docstring)."""
    if isinstance(value, dict):
        if not value:
            return "<span class=none>none</span>"
        if all(is_scalar(v) for v in value.values()):
            return pairs_table(list(value.items()), limit=limit)
        if depth < 2 and all(isinstance(v, dict) for v in value.values()):
            return dict_table([{"": k, **v} for k, v in value.items()], limit, first="")
        if depth >= 3:
            return e(cell(value))
        return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{render_value(v, depth + 1, limit)}</dd>"
                                for k, v in value.items()) + "</dl>"
    if isinstance(value, (list, tuple)):
        if not value:
            return "<span class=none>none</span>"
        if all(isinstance(v, dict) for v in value):
            return dict_table(list(value), limit)
        shown = ", ".join(cell(v) for v in value[:limit])
        return e(shown) + (f" … and {len(value) - limit} more" if len(value) > limit else "")
    return e(fmt(value))


def is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list, tuple))


def is_empty(value: Any) -> bool:
    """Nothing worth a line on the page: zero, false, none or an empty container."""
    if isinstance(value, (dict, list, tuple)):
        return all(is_empty(v) for v in (value.values() if isinstance(value, dict) else value))
    return value in (None, "", 0, False)


def cell(value: Any, width: int = 160) -> str:
    """A table cell's text: nested values flattened to `key: value` pairs, cut at `width`."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ", ".join(cell(v) for v in value)
    else:
        text = fmt(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)
