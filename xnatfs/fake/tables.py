"""Listing ("table") answers: ``ResultSet`` JSON, CSV, HTML and XML.

XNAT's listings send every value as a string, honour ``columns=``,
``sortBy=``/``sortOrder=``, ``limit=``/``offset=`` and wildcard field
filters, and always add ``ID`` and ``URI`` to a column selection.
"""

from __future__ import annotations

import csv
import fnmatch
import html
import io
import json
from datetime import datetime
from xml.sax.saxutils import escape, quoteattr

from .http import BadRequest, Request, Response

# Query parameters that steer the listing rather than filter its rows.
CONTROL_PARAMS = {
    "format",
    "columns",
    "sortby",
    "sortorder",
    "limit",
    "offset",
    "all",
    "accept-not-found",
    "event_reason",
    "event_type",
    "event_action",
    "event_comment",
    "includehistory",
    "locator",
    "file_format",
    "file_content",
    "file_tags",
    "structure",
    "recursive",
    "_",
}


def table_response(
    request: Request,
    rows: list[dict],
    columns: list[str],
    *,
    title: str | None = None,
    file_listing: bool = False,
    ignore: tuple[str, ...] = (),
    fixed_columns: bool = False,
) -> Response:
    """Answer a listing in the format the request asks for.

    ``rows`` hold every known field of each row (values may be any type;
    they are sent as strings); ``columns`` are the ones shown by default.
    ``fixed_columns`` ignores ``columns=``, as XNAT's resource and file
    listings do. Parameters named in ``ignore`` are not row filters.
    """
    fmt = (request.param("format") or "json").lower()
    rows = _filter(rows, request, {name.lower() for name in ignore})
    rows = _sort(rows, request)
    rows = _page(rows, request)
    shown = list(columns) if fixed_columns else _columns(request, columns)
    table = [{c: _text(_lookup(row, c)) for c in shown} for row in rows]
    if fmt == "json":
        result: dict = {"Result": table, "totalRecords": str(len(table))}
        if title:
            result["title"] = title
        if file_listing:
            result["Columns"] = [{"key": "URI", "serverRoot": ""}]
        return Response(200, json.dumps({"ResultSet": result}).encode(), "application/json")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(shown)
        for row in table:
            writer.writerow([row[c] for c in shown])
        return Response(200, out.getvalue().encode(), "text/csv;charset=UTF-8")
    if fmt == "xml":
        return Response(200, _xml(table, shown, title).encode(), "text/xml;charset=UTF-8")
    if fmt == "html":
        return Response(200, _html(table, shown, title).encode(), "text/html;charset=UTF-8")
    raise BadRequest(f"Unsupported format for a listing: {fmt}")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(row: dict, column: str):
    """A row's value for a column, also when asked by its long ``xsiType/field`` name."""
    if column in row:
        return row[column]
    if column.lower() in row:  # a child table's column, named in lower case
        return row[column.lower()]
    field = _field_name(row, column)
    return row[field] if field else ""


def _columns(request: Request, defaults: list[str]) -> list[str]:
    asked = request.param("columns")
    if not asked:
        return list(defaults)
    shown = [c.strip() for c in asked.split(",") if c.strip()]
    for always in ("ID", "URI"):
        if always in defaults and always not in shown:
            shown.append(always)
    return shown


def _filter(rows: list[dict], request: Request, ignore: set[str]) -> list[dict]:
    for key, wanted in request.query_items:
        if key.lower() in CONTROL_PARAMS or key.lower() in ignore or not rows:
            continue
        field = _field_name(rows[0], key)
        if field is None:
            continue
        rows = [row for row in rows if _matches(_text(row.get(field)), wanted, field)]
    return rows


def _field_name(row: dict, key: str) -> str | None:
    if key in row:
        return key
    short = key.rsplit("/", 1)[-1].lower()
    for name in row:
        if name.lower() == short:
            return name
    return None


def _matches(value: str, wanted: str, field: str) -> bool:
    for option in wanted.split(","):
        option = option.strip()
        if "date" in field.lower() and _in_date_range(value, option):
            return True
        if fnmatch.fnmatchcase(value.lower(), option.lower()):
            return True
    return False


def _in_date_range(value: str, option: str) -> bool:
    """``MM/DD/YYYY-MM/DD/YYYY`` (either end may be missing) against an ISO date."""
    if "/" not in option or "-" not in option:
        return False
    low, _, high = option.partition("-")
    try:
        day = datetime.strptime(value[:10], "%Y-%m-%d")
        if low and day < datetime.strptime(low.strip(), "%m/%d/%Y"):
            return False
        if high and day > datetime.strptime(high.strip(), "%m/%d/%Y"):
            return False
    except ValueError:
        return False
    return True


def _sort(rows: list[dict], request: Request) -> list[dict]:
    key = request.param("sortBy")
    if not key or not rows:
        return rows
    field = _field_name(rows[0], key)
    if field is None:
        return rows
    descending = (request.param("sortOrder") or "").upper() == "DESC"
    return sorted(rows, key=lambda r: _text(r.get(field)), reverse=descending)


def _page(rows: list[dict], request: Request) -> list[dict]:
    limit = request.param("limit")
    offset = request.param("offset")
    try:
        start = int(offset) if offset else 0
        if limit and limit != "*":
            return rows[start : start + int(limit)]
    except ValueError as exc:
        raise BadRequest("limit and offset must be whole numbers") from exc
    return rows[start:]


def _xml(table: list[dict], shown: list[str], title: str | None) -> str:
    head = "".join(f"<column>{escape(c)}</column>" for c in shown)
    body = "".join("<row>" + "".join(f"<cell>{escape(row[c])}</cell>" for c in shown) + "</row>" for row in table)
    title_attr = f" title={quoteattr(title)}" if title else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ResultSet totalRecords="{len(table)}"{title_attr}>'
        f"<results><columns>{head}</columns><rows>{body}</rows></results></ResultSet>\n"
    )


def _html(table: list[dict], shown: list[str], title: str | None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row[c])}</td>" for c in shown) + "</tr>" for row in table)
    return (
        f"<html><head><title>{html.escape(title or 'Listing')}</title></head><body>"
        f"<table><tr>{head}</tr>{body}</table></body></html>\n"
    )
