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

from .http import BadRequest, Request
from .store import Store

SCAN = "xnat:imagescandata/"
SCAN_RESOURCE = "xnat:imagescandata/file/"
SESSION_RESOURCE = ("xnat:experimentdata/resources/resource/", "xnat:imagesessiondata/resources/resource/")
SUBJECT_RESOURCE = "xnat:subjectdata/resources/resource/"

SCAN_FIELDS = {"id": "scan_id", "type": "type", "series_description": "series_description",
               "quality": "quality", "note": "note", "frames": "frames", "uid": "uid"}
RESOURCE_FIELDS = {"label": "label", "format": "format", "content": "content",
                   "xnat_abstractresource_id": "id"}


def child_columns(request: Request, prefixes: tuple[str, ...]) -> list[str]:
    """The asked-for columns (lower case) that name one of the child tables ``prefixes``."""
    asked = request.param("columns") or ""
    return [c.strip().lower() for c in asked.split(",") if c.strip().lower().startswith(prefixes)]


def _field(column: str, prefix: str, known: dict[str, str]) -> str:
    name = column[len(prefix):]
    if name not in known:
        raise BadRequest(f"Unknown search field: {column}")
    return known[name]


def _resource_values(resource, columns: list[str], prefixes: tuple[str, ...]) -> dict:
    values = {}
    for column in columns:
        prefix = next(p for p in prefixes if column.startswith(p))
        field = _field(column, prefix, RESOURCE_FIELDS)
        values[column] = "" if resource is None else resource[field]
    return values


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
    scan_resource_columns = [c for c in scan_columns if c.startswith(SCAN_RESOURCE)]
    scan_only_columns = [c for c in scan_columns if not c.startswith(SCAN_RESOURCE)]
    for column in scan_only_columns:
        _field(column, SCAN, SCAN_FIELDS)
    expanded = []
    for row in rows:
        joined = [row]
        if scan_columns:
            joined = [dict(base, **extra) for base in joined
                      for extra in _scan_rows(store, row["ID"], scan_only_columns, scan_resource_columns)]
        if resource_columns:
            resources = store.resources("experiment", row["ID"]) or [None]
            joined = [dict(base, **_resource_values(resource, resource_columns, SESSION_RESOURCE))
                      for base in joined for resource in resources]
        expanded.extend(joined)
    return expanded


def _scan_rows(store: Store, experiment_id: str, scan_columns: list[str],
               resource_columns: list[str]) -> list[dict]:
    found = []
    for scan in store.scans(experiment_id) or [None]:
        values = {c: ("" if scan is None else scan[SCAN_FIELDS[c[len(SCAN):]]]) for c in scan_columns}
        resources = store.resources("scan", str(scan["pk"])) if scan is not None and resource_columns else []
        for resource in resources or [None]:
            found.append(dict(values, **_resource_values(resource, resource_columns, (SCAN_RESOURCE,))))
    return found


def expand_subjects(store: Store, rows: list[dict], request: Request, *, known: bool = True) -> list[dict]:
    """Subject rows joined with the subjects' resources when asked for (``known`` as above)."""
    columns = child_columns(request, (SUBJECT_RESOURCE,))
    if not columns:
        return rows
    if not known:
        _refuse(columns)
    expanded = []
    for row in rows:
        for resource in store.resources("subject", row["ID"]) or [None]:
            expanded.append(dict(row, **_resource_values(resource, columns, (SUBJECT_RESOURCE,))))
    return expanded
