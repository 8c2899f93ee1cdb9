"""The DICOM import service: a zip of DICOM files becomes an archived session.

Files are read with pydicom (headers only) and filed into scans by
SeriesInstanceUID, numbered by SeriesNumber; a scan's type and series
description come from SeriesDescription, the session from StudyInstanceUID.
Where the request does not name project, subject and session, they come
from the DICOM headers as XNAT's default routing does: ``Project:``,
``Subject:`` and ``Session:`` in PatientComments, else the subject from
PatientName and the session from PatientID.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from .http import BadRequest, Request, Response, error_page, method_not_allowed
from .store import Store, required

logger = logging.getLogger(__name__)

SESSION_TYPES = {"MR": "xnat:mrSessionData", "CT": "xnat:ctSessionData", "PT": "xnat:petSessionData"}
SCAN_TYPES = {"MR": "xnat:mrScanData", "CT": "xnat:ctScanData", "PT": "xnat:petScanData"}
ACCEPTED_HANDLERS = {"", "dicom-zip", "si"}
UNSAFE_LABEL = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Series:
    uid: str
    number: str
    description: str
    modality: str
    first: pydicom.Dataset
    files: list[tuple[str, Path]] = field(default_factory=list)  # (name in resource, staged file)


def _label(value) -> str:
    return UNSAFE_LABEL.sub("_", str(value or "").strip())


def _routing(request: Request) -> dict[str, str]:
    """Project, subject and session asked for by parameters or ``dest=``."""
    wanted: dict[str, str] = {}
    for key, names in (
        ("project", ("project", "PROJECT_ID")),
        ("subject", ("subject", "SUBJECT_ID")),
        ("session", ("session", "EXPT_LABEL")),
    ):
        for name in names:
            if value := request.param(name):
                wanted[key] = value
                break
    dest = request.param("dest")
    if dest:
        parts = [p for p in dest.split("/") if p]
        if parts and parts[0] == "prearchive":
            raise BadRequest("This server has no prearchive; archive directly with /archive/...")
        if not parts or parts[0] != "archive":
            raise BadRequest(f"Invalid destination: {dest}")
        pairs = dict(zip(parts[1::2], parts[2::2]))
        for key, name in (("project", "projects"), ("subject", "subjects"), ("session", "experiments")):
            if name in pairs:
                wanted[key] = pairs[name]
    return wanted


def _from_headers(dataset: pydicom.Dataset) -> dict[str, str]:
    found = {}
    comments = str(dataset.get("PatientComments", "") or "")
    for key in ("Project", "Subject", "Session"):
        match = re.search(rf"{key}\s*:\s*(\S+)", comments)
        if match:
            found[key.lower()] = match.group(1)
    found.setdefault("subject", _label(dataset.get("PatientName", "")))
    found.setdefault("session", _label(dataset.get("PatientID", "")))
    return {k: v for k, v in found.items() if v}


def _stage_body(request: Request, new_path: Callable[[], Path]) -> Path:
    staged = new_path()
    if request.content_type.lower().startswith("multipart/"):
        head = f"Content-Type: {request.content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + request.read_body())
        parts = [p for p in message.iter_parts() if p.get_filename()] if message.is_multipart() else []
        if not parts:
            raise BadRequest("No file in the multipart upload.")
        payload = parts[0].get_payload(decode=True)
        staged.write_bytes(payload if isinstance(payload, bytes) else b"")
    else:
        request.body_to_file(staged)
    return staged


def _read_series(archive_path: Path, new_path: Callable[[], Path], skip_unparsable: bool) -> dict[str, Series]:
    series: dict[str, Series] = {}
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                staged = new_path()
                with archive.open(info) as src, open(staged, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                try:
                    dataset = pydicom.dcmread(staged, stop_before_pixels=True)
                    uid = str(dataset.SeriesInstanceUID)
                except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
                    if skip_unparsable:
                        continue
                    raise BadRequest(f"Unable to parse {info.filename} as DICOM.") from exc
                entry = series.get(uid)
                if entry is None:
                    entry = series[uid] = Series(
                        uid=uid,
                        number=str(dataset.get("SeriesNumber", "") or ""),
                        description=str(dataset.get("SeriesDescription", "") or ""),
                        modality=str(dataset.get("Modality", "") or ""),
                        first=dataset,
                    )
                entry.files.append((posixpath.basename(info.filename), staged))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BadRequest("Unable to identify upload format.") from exc
    return series


def _session_fields(dataset: pydicom.Dataset) -> dict[str, str]:
    fields = {}
    for key, tag in (
        ("modality", "Modality"),
        ("scanner/manufacturer", "Manufacturer"),
        ("scanner/model", "ManufacturerModelName"),
        ("fieldStrength", "MagneticFieldStrength"),
        ("dcmPatientId", "PatientID"),
        ("dcmPatientName", "PatientName"),
        ("acquisition_site", "InstitutionName"),
        ("operator", "OperatorsName"),
    ):
        value = dataset.get(tag)
        if value not in (None, ""):
            fields[key] = str(value)
    return fields


def _iso(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}" if re.fullmatch(r"\d{8}", date) else ""


def _clock(value: str) -> str:
    return f"{value[:2]}:{value[2:4]}:{value[4:6]}" if re.match(r"\d{6}", value) else ""


def import_service(request: Request, server) -> Response:
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    handler = (request.param("import-handler") or "").lower()
    if handler not in ACCEPTED_HANDLERS:
        return error_page(400, f"Unsupported import handler: {handler}")
    if not request.content_type:
        return error_page(400, "Unsupported format")
    if request.content_type.lower().startswith("multipart/") and request.flag("inbody"):
        return error_page(406, "In-body uploads cannot be multipart.")
    wanted = _routing(request)
    overwrite = (request.param("overwrite") or "none").lower()
    with server.store.staging() as new_path:
        staged = _stage_body(request, new_path)
        if staged.stat().st_size == 0:
            return error_page(400, "No content was uploaded.")
        series = _read_series(staged, new_path, request.flag("Ignore-Unparsable"))
        if not series:
            return error_page(400, "Unable to identify upload format: no DICOM files found.")
        studies = {str(s.first.get("StudyInstanceUID", "")) for s in series.values()}
        if len(studies) > 1:
            return error_page(400, "The upload contains multiple imaging sessions.")
        first = next(iter(series.values())).first
        routed = {**_from_headers(first), **wanted}
        missing = [k for k in ("project", "subject", "session") if not routed.get(k)]
        if missing:
            return error_page(400, f"Unable to identify experiment: no {', '.join(missing)} given.")
        return _archive(request, server, routed, series, first, studies.pop(), overwrite)


def _archive(
    request: Request, server, routed: dict, series: dict[str, Series], first, study_uid: str, overwrite: str
) -> Response:
    store: Store = server.store
    project = store.project(routed["project"])
    if project is None:
        return error_page(404, f"Unable to find project {routed['project']}.")
    project_id = project["id"]
    subject, session = routed["subject"], routed["session"]
    experiment_id = store.experiment_id(project_id, session)
    if experiment_id is not None and overwrite not in ("append", "delete"):
        return error_page(409, f"Session {session} already exists; import with overwrite=append or overwrite=delete.")
    modality = str(first.get("Modality", "") or "")
    with store.batch():
        if experiment_id is None:
            experiment_id = store.add_experiment(
                project_id,
                subject,
                session,
                xsi_type=SESSION_TYPES.get(modality, "xnat:otherDicomSessionData"),
                date=_iso(str(first.get("StudyDate", "") or "")),
                time_of_day=_clock(str(first.get("StudyTime", "") or "")),
                uid=study_uid,
                insert_user=request.user or "admin",
                fields=_session_fields(first),
            )
        elif overwrite == "delete":
            for scan in store.scans(experiment_id):
                store.delete_scan(scan["pk"])
    _file_series(store, experiment_id, series)
    if server.autorun_on_import and (request.param("triggerPipelines") or "true").lower() != "false":
        store.add_workflow(experiment_id)
    experiment = required(store.experiment(experiment_id), "Experiment")
    subject_label = required(store.subject(experiment["subject_id"]), "Subject")["label"]
    uri = f"/data/archive/projects/{project_id}/subjects/{subject_label}/experiments/{experiment['label']}"
    logger.info("imported %d series into %s", len(series), uri)
    return Response(200, (uri + "\r\n").encode(), "text/plain;charset=UTF-8")


def _file_series(store: Store, experiment_id: str, series: dict[str, Series]) -> None:
    by_number: dict[str, list[Series]] = defaultdict(list)
    for entry in series.values():
        by_number[entry.number or "0"].append(entry)
    existing = {s["scan_id"]: s for s in store.scans(experiment_id)}
    for number, entries in by_number.items():
        for index, entry in enumerate(sorted(entries, key=lambda e: e.uid)):
            scan_id = number if index == 0 else f"{number}-{index}"
            # A different series already filed under this number gets the next free suffix.
            suffix = index
            while scan_id in existing and existing[scan_id]["uid"] not in ("", entry.uid):
                suffix += 1
                scan_id = f"{number}-{suffix}"
            pk = store.add_scan(
                experiment_id,
                scan_id,
                type=entry.description,
                series_description=entry.description,
                xsi_type=SCAN_TYPES.get(entry.modality, "xnat:otherDicomScanData"),
                uid=entry.uid,
                quality="usable",
            )
            existing[scan_id] = required(store.scan_by_pk(pk), "Scan")
            resource_id = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
            used: set[str] = set()
            for name, path in entry.files:
                target = name if name not in used else f"{len(used)}_{name}"
                used.add(target)
                store.store_file(resource_id, target, path, move=True, format="DICOM", content="RAW")
            count, _total = store.resource_totals(resource_id)
            store.update_scan(pk, frames=count)
