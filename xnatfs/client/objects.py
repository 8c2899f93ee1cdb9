"""datman's object view of XNAT items: ``XNATSubject``, ``XNATExperiment``, ``XNATScan``.

Each wraps the item JSON XNAT returns (``{"meta", "data_fields",
"children"}``) and keeps it as ``raw_json``. Names are the labels in the
project the object was looked up through, so a shared experiment is named
as the sharing project knows it; ``source_name``/``source_project`` keep
the owner's label and project.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xnatfs.client import naming, parsing, paths
from xnatfs.client.downloads import check_zip, extract_zip
from xnatfs.errors import XnatError

if TYPE_CHECKING:
    from xnatfs.client.connection import XnatConnection
    from xnatfs.client.datman_api import DatmanConnection

logger = logging.getLogger(__name__)


class XNATObject:
    """Shared reading of an item's JSON."""

    raw_json: dict[str, Any]

    def _get_field(self, key: str) -> Any:
        return (self.raw_json.get("data_fields") or {}).get(key, "")

    def _children(self, field: str) -> list[dict[str, Any]]:
        return parsing.children(self.raw_json, field)

    def _label_in(self, project: str | None) -> str:
        """The item's label in ``project``: its own, or the one a share gives it there."""
        label = parsing.text(self._get_field("label"))
        owner = parsing.text(self._get_field("project"))
        if project and project != owner:
            for share in self._children("sharing/share"):
                values = parsing.fields(share)
                if values.get("project") == project and values.get("label"):
                    return parsing.text(values["label"])
        return label

    def _shared_into(self, project: str | None) -> bool:
        return any(parsing.fields(share).get("project") == project for share in self._children("sharing/share"))


class XNATSubject(XNATObject):
    """A subject with its experiments (``experiments``: name → XNATExperiment).

    ``project`` is the project it was looked up through (default: its owner).
    """

    def __init__(self, subject_json: dict[str, Any], project: str | None = None):
        self.raw_json = subject_json
        self.id = parsing.text(self._get_field("ID"))
        self.source_project = parsing.text(self._get_field("project"))
        self.source_name = parsing.text(self._get_field("label"))
        self.project = project or self.source_project
        self.name = self._label_in(self.project)
        self.experiments = self._get_experiments()

    def _get_experiments(self) -> dict[str, XNATExperiment]:
        found = {}
        for item in self._children("experiments/experiment"):
            experiment = XNATExperiment(self.project, self.name, item)
            found[experiment.name] = experiment
        return found

    def is_shared(self) -> bool:
        """True when this subject belongs to another project and is only shared into ``project``."""
        return self._shared_into(self.project)

    def __repr__(self) -> str:
        return f"<XNATSubject {self.name}>"

    __str__ = __repr__


class XNATExperiment(XNATObject):
    """An imaging session with its scans (``scans``) and session resources.

    ``project`` is the project it was looked up through and ``subject`` the
    subject name used; ``id`` the accession ID; ``name`` its label in
    ``project``.
    """

    def __init__(self, project: str, subject_name: str, experiment_json: dict[str, Any]):
        self.raw_json = experiment_json
        self.project = project
        self.subject = subject_name
        self.uid = parsing.text(self._get_field("UID"))
        self.id = parsing.text(self._get_field("ID") or self._get_field("id"))
        self.date = parsing.text(self._get_field("date"))
        self.source_project = parsing.text(self._get_field("project")) or project
        self.source_name = parsing.text(self._get_field("label"))
        self.name = self._label_in(project)
        self.scans = [XNATScan(self, item) for item in self._children("scans/scan")]
        self.scan_UIDs = [scan.uid for scan in self.scans]
        self.scan_resource_IDs = [rid for scan in self.scans for rid in scan.dicom_resource_ids()]
        self.resource_files = self._children("resources/resource")
        self.resource_IDs = {
            parsing.text(parsing.fields(item).get("label")) or "No Label": parsing.text(
                parsing.fields(item).get("xnat_abstractresource_id")
            )
            for item in self.resource_files
        }
        self.misc_resource_IDs = [rid for scan in self.scans for rid in scan.other_resource_ids()]

    def is_shared(self) -> bool:
        """True when this experiment belongs to another project and is only shared into ``project``.

        The item JSON of a shared experiment is the owner's; only its
        ``sharing/share`` records name the projects it is shared into.
        """
        return self._shared_into(self.project)

    def get_autorun_ids(self, xnat: XnatConnection | DatmanConnection) -> list[str]:
        """IDs of this experiment's AutoRun.xml workflows that are still open.

        XNAT starts one on archiving and it can stay Queued forever, which
        blocks renames. Empty when there is none; ``XnatError`` when the
        search fails or its answer cannot be read.
        """
        return xnat.find_autorun_ids(self.id, self.source_project)

    def assign_scan_names(self, config: Any, ident: object) -> None:
        """Give each scan the names and tags its series description selects.

        ``config`` is a naming configuration (see :mod:`xnatfs.client.naming`
        for the format and an example); ``ident`` the base name (a string,
        or datman's Identifier, whose ``site`` picks site-specific tags).
        Scans that match no tag, or are ambiguous, keep empty names.
        """
        tag_map = naming.tag_map_from(config, site=getattr(ident, "site", None))
        for scan in self.scans:
            scan.set_datman_name(str(ident), tag_map)

    def download(self, xnat: XnatConnection | DatmanConnection, dest_folder: str, zip_name: str | None = None) -> str:
        """Download one zip with all scans and resources of this session.

        The zip is written to ``dest_folder/zip_name`` (default
        ``<name>.zip``) through a temporary file and returned as a path. An
        existing file of that name is left alone and its path returned.
        """
        zip_name = zip_name or f"{self.name}.zip"
        output_path = os.path.join(dest_folder, zip_name)
        if os.path.exists(output_path):
            logger.warning("not downloading %s: %s already exists", self.name, output_path)
            return output_path
        return xnat.download_to_path(
            paths.experiment(self.id) + "/files", output_path, params={"format": "zip", "all": "true"}, check=check_zip
        )

    def __repr__(self) -> str:
        return f"<XNATExperiment {self.name}>"

    __str__ = __repr__


class XNATScan(XNATObject):
    """One scan (series) of an experiment.

    ``series`` is the scan ID, ``description`` the series description (or
    the type), ``names``/``tags`` are filled by ``assign_scan_names`` and
    ``download_dir`` by a successful :meth:`download`.
    """

    def __init__(self, experiment: XNATExperiment, scan_json: dict[str, Any]):
        self.raw_json = scan_json
        self.project = experiment.project
        self.subject = experiment.subject
        self.experiment = experiment.name
        self.experiment_id = experiment.id
        self.uid = parsing.text(self._get_field("UID"))
        self.series = parsing.text(self._get_field("ID"))
        self.type = parsing.text(self._get_field("type"))
        self.quality = parsing.text(self._get_field("quality"))
        self.image_type = parsing.text(self._get_field("parameters/imageType"))
        self.description = parsing.text(self._get_field("series_description")) or self.type
        self.multiecho = self.is_multiecho()
        self.names: list[str] = []
        self.tags: list[str] = []
        self.echo_dict: dict[Any, str] = {}
        self.download_dir: str | None = None

    def _resources(self) -> list[dict[str, Any]]:
        return [parsing.fields(item) for item in self._children("file")]

    def dicom_resource_ids(self) -> list[str]:
        return [
            parsing.text(values.get("xnat_abstractresource_id"))
            for values in self._resources()
            if values.get("label") == "DICOM" and values.get("xnat_abstractresource_id") is not None
        ]

    def other_resource_ids(self) -> list[str]:
        """IDs of resources that are neither DICOM nor snapshots (e.g. NIfTI uploads)."""
        found = []
        for values in self._resources():
            label = values.get("label")
            if values.get("xnat_abstractresource_id") is None or not label:
                continue
            if label in ("DICOM", "SNAPSHOTS") or values.get("format") == "DICOM":
                continue
            found.append(parsing.text(values["xnat_abstractresource_id"]))
        return found

    def is_multiecho(self) -> bool:
        return any(
            "MultiEcho" in parsing.text(parsing.fields(item).get("name"))
            for item in self._children("parameters/addParam")
        )

    def raw_dicoms_exist(self) -> bool:
        return any(values.get("content") == "RAW" for values in self._resources())

    def is_derived(self) -> bool:
        """True when the image type says DERIVED (or is unknown)."""
        if not self.image_type:
            logger.debug("series %s has no image type; treating it as derived", self.series)
            return True
        return "DERIVED" in self.image_type.upper()

    def is_usable(self) -> bool:
        return self.quality != "unusable"

    def set_datman_name(self, base_name: str, tag_map: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Name this scan from the naming configuration; return the names (maybe none)."""
        matches = naming.matching_tags(self.description, self.image_type, self.multiecho, tag_map)
        self.tags = list(matches)
        self.names = [naming.scan_name(base_name, tag, self.series, self.description) for tag in matches]
        self.echo_dict = {}
        for settings, name in zip(matches.values(), self.names):
            if "EchoNumber" in settings:
                self.echo_dict[settings["EchoNumber"]] = name
        return self.names

    def download(self, xnat_conn: XnatConnection | DatmanConnection, output_dir: str) -> bool:
        """Download every DICOM file of this series into ``output_dir``.

        One zip request; each file is checked against the server's listing
        (path and size) and moved into place complete. Sets
        ``download_dir`` and returns True on success; logs and returns
        False otherwise.
        """
        resource_uri = paths.resource(paths.scan(self.experiment_id, self.series), "DICOM")
        try:
            expected = {remote.path: remote.size for remote in xnat_conn.list_files(resource_uri)}
            if not expected:
                logger.error("series %s of %s has no DICOM files", self.series, self.experiment)
                return False
            os.makedirs(output_dir, exist_ok=True)
            handle, zip_path = tempfile.mkstemp(dir=output_dir, prefix=".xnatfs-", suffix=".zip.part")
            try:
                with os.fdopen(handle, "wb") as archive:
                    xnat_conn.download_zip(resource_uri, archive)
                check_zip(zip_path)
                extract_zip(zip_path, output_dir, expected)
            finally:
                os.unlink(zip_path)
        except (XnatError, OSError) as exc:
            logger.error("could not download series %s of %s: %s", self.series, self.experiment, exc)
            return False
        self.download_dir = output_dir
        return True

    def __repr__(self) -> str:
        return f"<XNATScan {self.experiment} - {self.series}>"

    __str__ = __repr__
