"""Plain records of what XNAT listings say.

These are what the client hands upward: immutable, free of HTTP details, and
cheap to keep in a cache. Times are naive ``datetime`` values in the
server's local time, or None where XNAT gives none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str = ""
    description: str = ""
    secondary_id: str = ""
    uri: str = ""


@dataclass(frozen=True, slots=True)
class Subject:
    id: str  # accession ID, e.g. XNAT_S00001
    label: str  # label in the project it was listed under
    project: str  # owning project
    uri: str = ""
    insert_date: datetime | None = None
    shared: bool = False  # listed under a project that only holds a share


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str  # accession ID, e.g. XNAT_E00001
    label: str  # label in the project it was listed under
    project: str  # owning project
    subject_id: str = ""
    subject_label: str = ""
    xsi_type: str = ""
    date: str = ""  # YYYY-MM-DD or ""
    insert_date: datetime | None = None
    uri: str = ""
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Resource:
    label: str
    uri: str  # e.g. /data/experiments/XNAT_E00001/scans/3/resources/DICOM
    id: str = ""  # xnat_abstractresource_id
    format: str = ""
    content: str = ""
    file_count: int | None = None
    file_size: int | None = None


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str  # relative path inside its resource, may contain "/"
    size: int
    uri: str  # download address
    resource_label: str = ""
    resource_uri: str = ""  # the resource it belongs to (as in Resource.uri)
    digest: str = ""  # MD5 hex where the server records one
    format: str = ""
    content: str = ""
    tags: str = ""


@dataclass(frozen=True, slots=True)
class Scan:
    id: str
    type: str = ""
    series_description: str = ""
    quality: str = ""
    xsi_type: str = ""
    uri: str = ""
    resources: tuple[Resource, ...] = ()


@dataclass(frozen=True, slots=True)
class ExperimentContents:
    experiment_id: str
    scans: tuple[Scan, ...] = ()
    resources: tuple[Resource, ...] = field(default_factory=tuple)  # session-level
    insert_date: datetime | None = None
