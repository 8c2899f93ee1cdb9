"""The dataset-level files of the BIDS view, as bytes.

Every function here returns the exact bytes of one file, built only from
the records it is given, so the same listings give the same bytes on every
mount (sizes are stable before anything is read, and caches can compare
contents). JSON is written with two-space indentation and a final newline;
TSV files use tabs, ``\\n`` line ends, UTF-8, and ``n/a`` for anything XNAT
does not say, as BIDS asks. Rows are sorted by their first column.

What each column means and why:

- ``participants.tsv``: ``participant_id`` (``sub-<label>``), the XNAT
  ``xnat_label`` and ``xnat_accession`` (so a BIDS subject can be found in
  XNAT again, since the BIDS label may have been changed by the label
  rule), ``sex`` (``M``/``F``/``O``) and ``age`` (years) where XNAT's
  demographics have them. The subject listing does not carry demographics;
  the caller passes them (:class:`Demographics`) when it has them, e.g. by
  asking the project's subject listing for two more columns
  (``columns=...,xnat:subjectData/demographics/gender,``
  ``xnat:subjectData/demographics/age``): one request for all subjects, no
  per-subject calls. (Age at each session is the session's own ``age``
  field, a column of the experiment listing.)
- ``sessions.tsv``: ``session_id``, ``acq_time`` from the experiment's date
  (and time where known; a date alone is written at midnight, because BIDS
  wants a date-time there and the date is what matters for ordering),
  ``xnat_label``, ``xnat_accession``.
- ``scans.tsv``: one row per imaging file of the session, its path relative
  to the session folder, ``acq_time`` (the session date with the series'
  AcquisitionTime where a header gave one, else ``n/a``), ``xnat_scan_id``
  and ``xnat_uri`` (the scan's address on the server) — the link back from
  every file to its source.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xnatfs.bids.plan import NIFTI_EXTENSION, SessionPlan
from xnatfs.client import paths
from xnatfs.client.models import Experiment, Project, Subject
from xnatfs.errors import redact_url

BIDS_VERSION = "1.9.0"
NA = "n/a"

_SEX_CODES = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}

PARTICIPANT_COLUMNS: dict[str, dict[str, Any]] = {
    "participant_id": {"Description": "BIDS subject label, from the XNAT subject label"},
    "xnat_label": {"Description": "Subject label in XNAT"},
    "xnat_accession": {"Description": "Subject accession ID in XNAT"},
    "sex": {
        "Description": "Sex of the participant as recorded in XNAT",
        "Levels": {"M": "male", "F": "female", "O": "other"},
    },
    "age": {"Description": "Age of the participant as recorded in XNAT", "Units": "year"},
}


@dataclass(frozen=True, slots=True)
class Demographics:
    """What XNAT says about a subject: gender text as XNAT has it, age in years."""

    sex: str = ""
    age: float | None = None


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    label: str  # BIDS label, without "sub-"
    subject: Subject
    demographics: Demographics = Demographics()


@dataclass(frozen=True, slots=True)
class SessionRow:
    label: str  # BIDS label, without "ses-"
    experiment: Experiment
    time: str = ""  # HH:MM[:SS] of the session where known


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _tsv_bytes(header: Sequence[str], rows: Iterable[tuple[str, ...]]) -> bytes:
    lines = ["\t".join(header)] + ["\t".join(_cell(value) for value in row) for row in sorted(rows)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _cell(value: str) -> str:
    """A TSV cell: tabs and line breaks in XNAT text would break the table."""
    cleaned = " ".join(value.replace("\t", " ").splitlines()).strip()
    return cleaned or NA


def project_url(server_url: str, project: Project) -> str:
    """The project's address on the server, without credentials."""
    uri = project.uri or paths.project(project.id)
    return redact_url(server_url.rstrip("/")) + uri


def dataset_description(
    project: Project,
    *,
    server_url: str,
    xnatfs_version: str,
    converter_version: str,
    converter_name: str = "dcm2niix",
    bids_version: str = BIDS_VERSION,
) -> bytes:
    """``dataset_description.json`` of a project's view."""
    return _json_bytes(
        {
            "Name": project.name or project.id,
            "BIDSVersion": bids_version,
            "DatasetType": "raw",
            "GeneratedBy": [
                {
                    "Name": "xnatfs",
                    "Version": xnatfs_version,
                    "Description": "BIDS view of an XNAT project, converted on demand",
                },
                {"Name": converter_name, "Version": converter_version},
            ],
            "SourceDatasets": [{"URL": project_url(server_url, project)}],
        }
    )


def readme(project: Project, *, server_url: str) -> bytes:
    """``README``: what the dataset is and where it comes from."""
    lines = [
        f"{project.name or project.id}",
        "",
        f"This dataset is a read-only BIDS view of the XNAT project {project.id}",
        f"at {project_url(server_url, project)}, made by xnatfs.",
        "NIfTI files are converted from the archived DICOM series on demand.",
        "Scans no rule could name, localizers, derived maps and scans marked",
        "unusable are not included; `xnatfs bids-check` lists them with the reason.",
    ]
    if project.description:
        lines += ["", " ".join(project.description.split())]
    return ("\n".join(lines) + "\n").encode("utf-8")


def sex_code(text: str) -> str:
    return _SEX_CODES.get(text.strip().lower(), NA)


def _age_text(age: float | None) -> str:
    if age is None:
        return NA
    return str(int(age)) if float(age).is_integer() else f"{age:g}"


def participants_tsv(rows: Iterable[ParticipantRow]) -> bytes:
    return _tsv_bytes(
        list(PARTICIPANT_COLUMNS),
        (
            (
                f"sub-{row.label}",
                row.subject.label,
                row.subject.id,
                sex_code(row.demographics.sex),
                _age_text(row.demographics.age),
            )
            for row in rows
        ),
    )


def participants_json() -> bytes:
    return _json_bytes(PARTICIPANT_COLUMNS)


def acq_time(date: str, time: str = "") -> str:
    """BIDS ``acq_time`` from an XNAT date (``YYYY-MM-DD``) and optional time; ``n/a`` without a date."""
    if not date:
        return NA
    clock = time.strip() or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    return f"{date}T{clock}"


def sessions_tsv(rows: Iterable[SessionRow]) -> bytes:
    """``sub-<label>_sessions.tsv`` of one subject."""
    return _tsv_bytes(
        ("session_id", "acq_time", "xnat_label", "xnat_accession"),
        (
            (f"ses-{row.label}", acq_time(row.experiment.date, row.time), row.experiment.label, row.experiment.id)
            for row in rows
        ),
    )


def _clock(acquisition_time: Any) -> str:
    """dcm2niix's ``AcquisitionTime`` (``HH:MM:SS.ffffff``) to whole seconds."""
    return str(acquisition_time).split(".", 1)[0] if acquisition_time else ""


def scans_tsv(
    plan: SessionPlan,
    *,
    server_url: str,
    session_date: str = "",
    files: Mapping[str, Sequence[str]] | None = None,
    acquisition_times: Mapping[str, str] | None = None,
    extension: str = NIFTI_EXTENSION,
) -> bytes:
    """``sub-<s>_ses-<t>_scans.tsv`` of one planned session.

    ``files`` maps a scan ID to the imaging files conversion wrote for it
    (paths relative to the session folder); a target without an entry is
    listed under its planned name ``<datatype>/<stem><extension>``.
    ``acquisition_times`` maps scan IDs to the series' AcquisitionTime.
    """
    files = files or {}
    acquisition_times = acquisition_times or {}
    base = redact_url(server_url.rstrip("/"))
    rows = []
    for target in plan.targets:
        scan = target.scan
        clock = _clock(acquisition_times.get(scan.id))
        when = acq_time(session_date, clock) if clock else NA
        for path in files.get(scan.id, (target.path(extension),)):
            rows.append((path, when, scan.id, base + scan.uri if scan.uri else NA))
    return _tsv_bytes(("filename", "acq_time", "xnat_scan_id", "xnat_uri"), rows)
