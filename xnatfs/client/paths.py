"""Server paths of XNAT objects: every REST address xnatfs uses is built, or read back, here.

Every path built here is percent-encoded segment by segment, exactly once,
so a label or file name can never add a path level or a query. Resources are addressed by
label (not the numeric id) so the same resource has the same URI whether it
came from an experiment's item JSON or from a file listing.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_ALIAS_PREFIX = re.compile(r"^(?:/REST|/data/archive)(?=/)")
_SUBJECT_IN_PROJECT = re.compile(r"^/data/projects/[^/]+/subjects/(?P<subject>[^/]+)$")
_EXPERIMENT_OWNED = re.compile(r"^/data/experiments/(?P<experiment>[^/]+)(?:/|$)")
_FILE_URI = re.compile(r"^(?P<container>.*?)/resources/(?P<resource>[^/]+)/files/(?P<path>.+)$", re.DOTALL)


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


def subject_by_id(subject_id: str) -> str:
    """A subject by accession ID."""
    return f"/data/subjects/{seg(subject_id)}"


def subject_of(uri: str) -> str | None:
    """The subject (decoded) of a ``/data/projects/P/subjects/S`` address; None for any other."""
    match = _SUBJECT_IN_PROJECT.match(uri)
    return unquote(match["subject"]) if match else None


def experiment_in(project_id: str, subject_ref: str, experiment_ref: str) -> str:
    return f"{subject(project_id, subject_ref)}/experiments/{seg(experiment_ref)}"


def experiment(experiment_id: str) -> str:
    """An experiment by accession ID (the address that survives renames)."""
    return f"/data/experiments/{seg(experiment_id)}"


def scan(experiment_id: str, scan_id: str) -> str:
    return f"{experiment(experiment_id)}/scans/{seg(scan_id)}"


def scans_of(experiment_uri: str) -> str:
    """The scan listing of an experiment."""
    return f"{experiment_uri.rstrip('/')}/scans"


def resources_of(owner_uri: str) -> str:
    """The resource listing of a project, subject, experiment or scan."""
    return f"{owner_uri.rstrip('/')}/resources"


def resource(parent: str, label: str) -> str:
    return f"{resources_of(parent)}/{seg(label)}"


def resource_owner(resource_uri: str) -> str:
    """The project, subject, experiment or scan a resource address belongs to."""
    return resource_uri.rsplit("/resources/", 1)[0]


def is_scan_resource(resource_uri: str) -> bool:
    return "/scans/" in resource_uri


def owning_experiment(uri: str) -> str | None:
    """The experiment ID (decoded) of a ``/data/experiments/E[/...]`` address; None for any other."""
    match = _EXPERIMENT_OWNED.match(uri)
    return unquote(match["experiment"]) if match else None


def canonical(path: str) -> str:
    """``/REST/...`` and ``/data/archive/...`` spelled as ``/data/...``."""
    return _ALIAS_PREFIX.sub("/data", path)


def split_file_uri(uri: str, name: str = "") -> tuple[str, str, str, str] | None:
    """``(container, resource segment, relative path, request path)`` of a listing's file URI.

    The container is the path up to ``/resources/``; the relative path is
    everything after the first ``/files/`` that follows the resource. XNAT
    appends a file's relative path to the ``URI`` column as stored, without
    percent-encoding (``b0dwi+00001.dcm`` stays ``b0dwi+00001.dcm``, ``%41``
    stays ``%41``); other servers encode it. ``name``, the listing's raw
    file name, tells the two apart: the path is taken as it stands when it
    ends in that name, and decoded when only its decoded form does. The
    request path is the file's address quoted exactly once either way.
    """
    match = _FILE_URI.match(uri)
    if not match:
        return None
    listed = match["path"]
    if name and not _ends_in(listed, name) and _ends_in(unquote(listed), name):
        relpath, quoted = unquote(listed), listed
    else:
        relpath, quoted = listed, quote(listed, safe="/")
    container, resource_segment = canonical(match["container"]), match["resource"]
    return container, resource_segment, relpath, f"{container}/resources/{resource_segment}/files/{quoted}"


def _ends_in(path: str, name: str) -> bool:
    return path == name or path.endswith("/" + name)


def with_files(uri: str) -> str:
    """The ``.../files`` listing address of a resource, scan or experiment."""
    uri = uri.rstrip("/")
    return uri if uri.endswith("/files") else uri + "/files"
