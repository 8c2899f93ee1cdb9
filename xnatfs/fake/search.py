"""Listings whose ``columns=`` reach into child tables.

XNAT's search joins a child table when a column names it by its XML path,
e.g. ``/data/experiments?project=P&columns=ID,xnat:imagescandata/id,
xnat:imagescandata/file/label``: one row per child (per scan, per scan
resource), and one row with the child's columns empty for a parent without
children. Such columns come back named in lower case.

Understood here: scans and their resources under experiments, session
resources under experiments, and resources under subjects. Any other field
of those children is refused with 400, as an unknown search field is.
"""

from __future__ import annotations

import sqlite3

from .http import BadRequest, Request
from .store import Store

SCAN = "xnat:imagescandata/"
SCAN_RESOURCE = "xnat:imagescandata/file/"
SESSION_RESOURCE = ("xnat:experimentdata/resources/resource/", "xnat:imagesessiondata/resources/resource/")
SUBJECT_RESOURCE = "xnat:subjectdata/resources/resource/"

SCAN_FIELDS = {
    "id": "scan_id",
    "type": "type",
    "series_description": "series_description",
    "quality": "quality",
    "note": "note",
    "frames": "frames",
    "uid": "uid",
}
RESOURCE_FIELDS = {"label": "label", "format": "format", "content": "content", "xnat_abstractresource_id": "id"}


def child_columns(request: Request, prefixes: tuple[str, ...]) -> list[str]:
    """The asked-for columns (lower case) that name one of the child tables ``prefixes``."""
    asked = request.param("columns") or ""
    return [c.strip().lower() for c in asked.split(",") if c.strip().lower().startswith(prefixes)]


def _fields(columns: list[str], prefixes: tuple[str, ...], known: dict[str, str]) -> dict[str, str]:
    """Each column with the store field it names; an unknown one is refused."""
    fields = {}
    for column in columns:
        prefix = next(p for p in prefixes if column.startswith(p))
        name = column[len(prefix) :]
        if name not in known:
            raise BadRequest(f"Unknown search field: {column}")
        fields[column] = known[name]
    return fields


def _values(record: sqlite3.Row | None, fields: dict[str, str]) -> dict:
    """A row's child columns from ``record``, empty where there is no child."""
    return {column: "" if record is None else record[field] for column, field in fields.items()}


def _or_none(children: list[sqlite3.Row]) -> list[sqlite3.Row | None]:
    """``children``, or one None for a parent without any (its child columns stay empty)."""
    return list(children) or [None]


def _refuse(columns: list[str]) -> None:
    raise BadRequest(f"Unknown search field: {columns[0]}")


def expand_experiments(store: Store, rows: list[dict], request: Request, *, known: bool = True) -> list[dict]:
    """Experiment rows joined with the scans, scan resources and session resources asked for.

    ``known=False`` refuses every child-table column, as a server without
    such searches does.
    """
    scan_columns = child_columns(request, (SCAN,))
    resource_columns = child_columns(request, SESSION_RESOURCE)
    if not scan_columns and not resource_columns:
        return rows
    if not known:
        _refuse(scan_columns + resource_columns)
    scan_fields = _fields([c for c in scan_columns if not c.startswith(SCAN_RESOURCE)], (SCAN,), SCAN_FIELDS)
    scan_resource_fields = _fields(
        [c for c in scan_columns if c.startswith(SCAN_RESOURCE)], (SCAN_RESOURCE,), RESOURCE_FIELDS
    )
    resource_fields = _fields(resource_columns, SESSION_RESOURCE, RESOURCE_FIELDS)
    expanded = []
    for row in rows:
        joined = [row]
        if scan_columns:
            joined = [
                dict(base, **extra)
                for base in joined
                for extra in _scan_rows(store, row["ID"], scan_fields, scan_resource_fields)
            ]
        if resource_fields:
            resources = _or_none(store.resources("experiment", row["ID"]))
            joined = [dict(base, **_values(resource, resource_fields)) for base in joined for resource in resources]
        expanded.extend(joined)
    return expanded


def _scan_rows(
    store: Store, experiment_id: str, scan_fields: dict[str, str], resource_fields: dict[str, str]
) -> list[dict]:
    found = []
    for scan in _or_none(store.scans(experiment_id)):
        values = _values(scan, scan_fields)
        resources = store.resources("scan", str(scan["pk"])) if scan is not None and resource_fields else []
        for resource in _or_none(resources):
            found.append(dict(values, **_values(resource, resource_fields)))
    return found


def expand_subjects(store: Store, rows: list[dict], request: Request, *, known: bool = True) -> list[dict]:
    """Subject rows joined with the subjects' resources when asked for (``known`` as above)."""
    columns = child_columns(request, (SUBJECT_RESOURCE,))
    if not columns:
        return rows
    if not known:
        _refuse(columns)
    fields = _fields(columns, (SUBJECT_RESOURCE,), RESOURCE_FIELDS)
    expanded = []
    for row in rows:
        for resource in _or_none(store.resources("subject", row["ID"])):
            expanded.append(dict(row, **_values(resource, fields)))
    return expanded
