"""Server paths of XNAT objects.

Every path built here is percent-encoded segment by segment, so a label or
file name can never add a path level or a query. Resources are addressed by
label (not the numeric id) so the same resource has the same URI whether it
came from an experiment's item JSON or from a file listing.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_ALIAS_PREFIX = re.compile(r"^(?:/REST|/data/archive)(?=/)")
_FILE_URI = re.compile(r"^(?P<container>.*?)/resources/(?P<resource>[^/]+)/files/(?P<path>.+)$")
_SUBJECT_URI = re.compile(r"^/data/projects/[^/]+/subjects/(?P<subject>[^/]+)$")


def seg(value: object) -> str:
    """One path segment, percent-encoded."""
    return quote(str(value), safe="")


def file_path(relpath: str) -> str:
    """A relative file path inside a resource, encoded but keeping its ``/``."""
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"not a relative file path: {relpath!r}")
    return "/".join(seg(p) for p in parts)


def project(project_id: str) -> str:
    return f"/data/projects/{seg(project_id)}"


def subject(project_id: str, subject_ref: str) -> str:
    return f"{project(project_id)}/subjects/{seg(subject_ref)}"


def experiment_in(project_id: str, subject_ref: str, experiment_ref: str) -> str:
    return f"{subject(project_id, subject_ref)}/experiments/{seg(experiment_ref)}"


def experiment(experiment_id: str) -> str:
    """An experiment by accession ID (the address that survives renames)."""
    return f"/data/experiments/{seg(experiment_id)}"


def scan(experiment_id: str, scan_id: str) -> str:
    return f"{experiment(experiment_id)}/scans/{seg(scan_id)}"


def resource(parent: str, label: str) -> str:
    return f"{parent.rstrip('/')}/resources/{seg(label)}"


def canonical(path: str) -> str:
    """``/REST/...`` and ``/data/archive/...`` spelled as ``/data/...``."""
    return _ALIAS_PREFIX.sub("/data", path)


def split_file_uri(uri: str) -> tuple[str, str, str] | None:
    """``(container, resource segment, decoded relative path)`` of a file URI.

    The container is the path up to ``/resources/``; the relative path is
    everything after the first ``/files/`` that follows the resource.
    """
    match = _FILE_URI.match(uri.split("?", 1)[0])
    if not match:
        return None
    return canonical(match["container"]), match["resource"], unquote(match["path"])


def with_files(uri: str) -> str:
    """The ``.../files`` listing address of a resource, scan or experiment."""
    uri = uri.rstrip("/")
    return uri if uri.endswith("/files") else uri + "/files"


def subject_by_id(subject_id: str) -> str:
    """A subject by accession ID, whichever project it is shown in."""
    return f"/data/subjects/{seg(subject_id)}"


def scans(experiment_id: str) -> str:
    """The scans of an experiment."""
    return f"{experiment(experiment_id)}/scans"


def resources(owner_uri: str) -> str:
    """The resources of a project, subject, experiment or scan."""
    return f"{owner_uri.rstrip('/')}/resources"


def resource_owner(resource_uri: str) -> str:
    """The project, subject, experiment or scan a resource belongs to."""
    return resource_uri.rsplit("/resources/", 1)[0]


def experiment_id_of(uri: str) -> str | None:
    """The experiment segment of an address under ``/data/experiments/``, else None."""
    parts = uri.split("/")
    if uri.startswith("/data/experiments/") and len(parts) > 3:
        return parts[3]
    return None


def subject_id_of(uri: str) -> str | None:
    """The subject segment of a subject's own address (``/data/projects/P/subjects/S``), else None."""
    match = _SUBJECT_URI.match(uri)
    return None if match is None else match["subject"]
