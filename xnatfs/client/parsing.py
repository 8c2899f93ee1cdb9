"""Turning XNAT's JSON answers into the records of ``xnatfs.client.models``.

Two shapes exist (see the REST contract): listings
(``{"ResultSet": {"Result": [...]}}``, every value a string) and items
(``{"items": [{"meta", "data_fields", "children"}]}``, typed values).
Anything else is reported as a server error rather than guessed at.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from xnatfs.client import paths
from xnatfs.client.models import (
    Experiment,
    ExperimentContents,
    Project,
    RemoteFile,
    Resource,
    Scan,
    Subject,
)
from xnatfs.errors import XnatServerError

_DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d",
)


def rows(document: Any, *, url: str | None = None) -> list[dict[str, Any]]:
    """The rows of a listing answer."""
    try:
        result = document["ResultSet"]["Result"]
    except (TypeError, KeyError) as exc:
        raise XnatServerError("listing answer without ResultSet.Result", url=url) from exc
    if not isinstance(result, list):
        raise XnatServerError("listing answer whose Result is not a list", url=url)
    return [row for row in result if isinstance(row, dict)]


def items(document: Any, *, url: str | None = None) -> list[dict[str, Any]]:
    """The current (non-history) items of an item answer."""
    try:
        found = document["items"]
    except (TypeError, KeyError) as exc:
        raise XnatServerError("item answer without items", url=url) from exc
    if not isinstance(found, list):
        raise XnatServerError("item answer whose items is not a list", url=url)
    return [item for item in found if isinstance(item, dict) and not (item.get("meta") or {}).get("isHistory")]


def first_item(document: Any, *, url: str | None = None) -> dict[str, Any]:
    found = items(document, url=url)
    if not found:
        raise XnatServerError("item answer with no current item", url=url)
    return found[0]


def fields(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("data_fields") or {}


def children(item: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """The child items under ``field`` (e.g. ``scans/scan``) of an item."""
    found: list[dict[str, Any]] = []
    for child in item.get("children") or []:
        if isinstance(child, dict) and child.get("field") == field:
            found.extend(entry for entry in child.get("items") or [] if isinstance(entry, dict))
    return found


def text(value: Any) -> str:
    return "" if value is None else str(value)


def to_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def parse_datetime(value: Any) -> datetime | None:
    """XNAT's timestamps: ``2018-05-14 15:17:57.815`` or Java's ``Fri Apr 17 13:48:24 EDT 2015``."""
    value = text(value).strip()
    if not value:
        return None
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    words = value.split()
    if len(words) == 6:
        # Java's Date.toString(); the zone name is dropped (times are local).
        try:
            return datetime.strptime(" ".join(words[1:4] + words[5:]), "%b %d %H:%M:%S %Y")
        except ValueError:
            return None
    return None


# -- listings --------------------------------------------------------------


def project_from_row(row: dict[str, Any]) -> Project:
    project_id = text(row.get("ID") or row.get("id"))
    return Project(
        id=project_id,
        name=text(row.get("name")),
        description=text(row.get("description")),
        secondary_id=text(row.get("secondary_ID")),
        uri=paths.canonical(text(row.get("URI"))) or paths.project(project_id),
    )


def subject_from_row(row: dict[str, Any], listed_project: str) -> Subject:
    subject_id = text(row.get("ID"))
    owner = text(row.get("project")) or listed_project
    return Subject(
        id=subject_id,
        label=text(row.get("label")) or subject_id,
        project=owner,
        uri=paths.canonical(text(row.get("URI"))) or paths.subject_by_id(subject_id),
        insert_date=parse_datetime(row.get("insert_date")),
        shared=owner != listed_project,
    )


def experiment_from_row(row: dict[str, Any], listed_project: str) -> Experiment:
    experiment_id = text(row.get("ID") or row.get("xnat:subjectassessordata/id"))
    owner = text(row.get("project")) or listed_project
    return Experiment(
        id=experiment_id,
        label=text(row.get("label")) or experiment_id,
        project=owner,
        subject_id=text(row.get("subject_ID")),
        subject_label=text(row.get("subject_label")),
        xsi_type=text(row.get("xsiType")),
        date=text(row.get("date")),
        insert_date=parse_datetime(row.get("insert_date")),
        uri=paths.canonical(text(row.get("URI"))) or paths.experiment(experiment_id),
        shared=owner != listed_project,
    )


def _resource_id(values: dict[str, Any]) -> str:
    return text(values.get("xnat_abstractresource_id") or values.get("xnat_abstractResource_id"))


def resource_from_values(values: dict[str, Any], parent_uri: str) -> Resource:
    """A resource from a listing row or an item's ``data_fields``."""
    label = text(values.get("label"))
    resource_id = _resource_id(values)
    return Resource(
        label=label,
        uri=paths.resource(parent_uri, label or resource_id),
        id=resource_id,
        format=text(values.get("format")),
        content=text(values.get("content")),
        file_count=to_int(values.get("file_count")),
        file_size=to_int(values.get("file_size")),
    )


def file_from_row(row: dict[str, Any], resource_uri: str | None = None) -> RemoteFile | None:
    """A file from a file-listing row; None for a row without a usable URI.

    ``resource_uri`` is the resource that was listed; without it (a scan or
    experiment listing) the resource is worked out from the file's URI.
    """
    split = paths.split_file_uri(text(row.get("URI")), text(row.get("Name")))
    if split is None:
        return None
    container, resource_segment, relpath, request_path = split
    label = text(row.get("collection"))
    if resource_uri is None:
        resource_uri = paths.resource(container, label) if label else f"{container}/resources/{resource_segment}"
    # A session's listing repeats these for every file: one copy each keeps large walks small.
    return RemoteFile(
        path=relpath,
        size=to_int(row.get("Size")) or 0,
        uri=request_path,
        resource_label=sys.intern(label),
        resource_uri=sys.intern(resource_uri),
        digest=text(row.get("digest")),
        format=sys.intern(text(row.get("file_format"))),
        content=sys.intern(text(row.get("file_content"))),
        tags=sys.intern(text(row.get("file_tags"))),
    )


# -- experiment item -------------------------------------------------------


def _has_resource_identity(values: dict[str, Any]) -> bool:
    return bool(values.get("label") or _resource_id(values))


def scan_from_item(item: dict[str, Any], experiment_id: str) -> Scan:
    values = fields(item)
    scan_id = text(values.get("ID"))
    scan_uri = paths.scan(experiment_id, scan_id)
    resources = tuple(
        resource_from_values(fields(entry), scan_uri)
        for entry in children(item, "file")
        if _has_resource_identity(fields(entry))
    )
    return Scan(
        id=scan_id,
        type=text(values.get("type")),
        series_description=text(values.get("series_description")),
        quality=text(values.get("quality")),
        xsi_type=text((item.get("meta") or {}).get("xsi:type")),
        uri=scan_uri,
        resources=resources,
    )


def experiment_contents(item: dict[str, Any], fallback_id: str = "") -> ExperimentContents:
    """Scans (with their resources) and session resources of an experiment item."""
    values = fields(item)
    experiment_id = text(values.get("ID") or values.get("id")) or fallback_id
    experiment_uri = paths.experiment(experiment_id)
    scans = tuple(scan_from_item(entry, experiment_id) for entry in children(item, "scans/scan"))
    resources = tuple(
        resource_from_values(fields(entry), experiment_uri)
        for entry in children(item, "resources/resource")
        if _has_resource_identity(fields(entry))
    )
    inserted = parse_datetime(values.get("insert_date")) or parse_datetime((item.get("meta") or {}).get("start_date"))
    return ExperimentContents(experiment_id=experiment_id, scans=scans, resources=resources, insert_date=inserted)


# -- project-wide searches ---------------------------------------------------
#
# XNAT's search behind ``/data/experiments?project=P&columns=...`` joins child
# tables when a column names them, giving one row per child (and one row with
# the child's columns empty for a parent without children). Column names come
# back lower-cased.

SCAN_ID = "xnat:imagescandata/id"
SCAN_TYPE = "xnat:imagescandata/type"
SCAN_DESCRIPTION = "xnat:imagescandata/series_description"
SCAN_QUALITY = "xnat:imagescandata/quality"
SCAN_RESOURCE = "xnat:imagescandata/file/label"
SESSION_RESOURCE = "xnat:experimentdata/resources/resource/label"
SUBJECT_RESOURCE = "xnat:subjectdata/resources/resource/label"


def _lowered(row: dict[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in row.items()}


def answers_columns(found: list[dict[str, Any]], *columns: str) -> bool:
    """Whether a search answer carries the child-table columns it was asked for.

    A server that does not know them may leave them out; an empty answer
    says nothing either way but is true (there is nothing to miss).
    """
    if not found:
        return True
    named = _lowered(found[0])
    return all(column in named for column in columns)


def experiment_contents_from_search(
    scan_rows: list[dict[str, Any]], resource_rows: list[dict[str, Any]]
) -> dict[str, ExperimentContents]:
    """Contents of every experiment in two project-wide search answers.

    ``scan_rows`` have one row per (experiment, scan, scan resource),
    ``resource_rows`` one per (experiment, session resource). Only
    experiments found in both are returned. The scans' ``xsi_type`` is
    unknown here (left empty); the item JSON has it.
    """
    scans: dict[str, dict[str, dict[str, Any]]] = {}
    for row in map(_lowered, scan_rows):
        experiment_id = text(row.get("id"))
        if not experiment_id:
            continue
        per_scan = scans.setdefault(experiment_id, {})
        scan_id = text(row.get(SCAN_ID))
        if not scan_id:
            continue
        scan = per_scan.setdefault(scan_id, {"row": row, "resources": []})
        label = text(row.get(SCAN_RESOURCE))
        if label and label not in scan["resources"]:
            scan["resources"].append(label)
    resources = _labels_by_parent(resource_rows, SESSION_RESOURCE)
    found = {}
    for experiment_id in scans.keys() & resources.keys():
        experiment_uri = paths.experiment(experiment_id)
        found[experiment_id] = ExperimentContents(
            experiment_id=experiment_id,
            scans=tuple(
                _scan_from_search(experiment_id, scan_id, scan["row"], scan["resources"])
                for scan_id, scan in scans[experiment_id].items()
            ),
            resources=tuple(
                Resource(label=label, uri=paths.resource(experiment_uri, label)) for label in resources[experiment_id]
            ),
        )
    return found


def _scan_from_search(experiment_id: str, scan_id: str, row: dict[str, Any], labels: list[str]) -> Scan:
    scan_uri = paths.scan(experiment_id, scan_id)
    return Scan(
        id=scan_id,
        type=text(row.get(SCAN_TYPE)),
        series_description=text(row.get(SCAN_DESCRIPTION)),
        quality=text(row.get(SCAN_QUALITY)),
        uri=scan_uri,
        resources=tuple(Resource(label=label, uri=paths.resource(scan_uri, label)) for label in labels),
    )


def subject_resources_from_search(found: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Resource labels of every subject in a project-wide subject search (one row per resource)."""
    return {subject_id: tuple(labels) for subject_id, labels in _labels_by_parent(found, SUBJECT_RESOURCE).items()}


def _labels_by_parent(found: list[dict[str, Any]], column: str) -> dict[str, list[str]]:
    """The distinct values of ``column`` by the rows' ID, every ID listed (a row without a child too)."""
    labels: dict[str, list[str]] = {}
    for row in map(_lowered, found):
        parent = text(row.get("id"))
        if not parent:
            continue
        mine = labels.setdefault(parent, [])
        label = text(row.get(column))
        if label and label not in mine:
            mine.append(label)
    return labels
