"""datman's ``datman.xnat.xnat`` calls, with the same names and meanings.

Scripts written for datman keep working against ``xnatfs.client.xnat``.
Known datman faults are not reproduced: scans are fetched through a real
XNAT route, a failed or 404 download raises instead of leaving an empty
or error-page file behind, a 409 on rename is a failure unless the rename
demonstrably happened, and AutoRun search answers are parsed as JSON text.

This is a mixin: it relies on ``self.session`` and the file-system calls
of :class:`~xnatfs.client.connection.XnatConnection`.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable

from xnatfs.errors import XnatConflict, XnatError, XnatNotFound, XnatServerError
from xnatfs.client import parsing, paths
from xnatfs.client.downloads import check_zip, download_to_path
from xnatfs.client.http import looks_like_html
from xnatfs.client.objects import XNATExperiment, XNATScan, XNATSubject

logger = logging.getLogger(__name__)

CATALOG_NS = {"cat": "http://nrg.wustl.edu/catalog"}
DEFAULT_RESOURCE = "MISC"


class DatmanApi:
    """datman's connection methods (see ``datman-xnat-api``)."""

    # -- projects and subjects --------------------------------------------

    def get_projects(self, project: str = "") -> list[dict]:
        """All readable projects as listing rows, or one project's item JSON
        (a list of one item; empty if it does not exist)."""
        if not project:
            return parsing.rows(self.session.get_json("/data/projects"))
        try:
            document = self.session.get_json(paths.project(project))
        except XnatNotFound:
            return []
        return parsing.items(document)

    def find_project(self, subject_id: str, projects: list[str] | None = None) -> str | None:
        """The first project (of ``projects``, default all) with a subject labelled ``subject_id``."""
        if not projects:
            projects = [row.get("ID") for row in self.get_projects()]
        for project in projects:
            try:
                if subject_id in self.get_subject_ids(project):
                    return project
            except XnatError as exc:
                logger.debug("skipping project %s: %s", project, exc)
        return None

    def get_subject_ids(self, project: str) -> list[str]:
        """Labels of the subjects in a project (``XnatNotFound`` if it does not exist)."""
        return [subject.label for subject in self.list_subjects(project)]

    def get_subject(self, project: str, subject_id: str, create: bool = False) -> XNATSubject:
        """A subject by label or ID; created first when missing and ``create`` is set."""
        path = paths.subject(project, subject_id)
        try:
            document = self.session.get_json(path)
        except XnatNotFound:
            if not create:
                raise
            logger.info("creating subject %s in project %s", subject_id, project)
            self.make_subject(project, subject_id)
            document = self.session.get_json(path)
        return XNATSubject(parsing.first_item(document, url=path), project=project)

    def make_subject(self, project: str, subject: str) -> None:
        """Create a subject; an existing one is left as it is."""
        self.create_subject(project, subject, exist_ok=True)

    def find_subject(self, project: str, exper_id: str) -> str:
        """The accession ID of the subject an experiment belongs to."""
        path = f"{paths.project(project)}/experiments/{paths.seg(exper_id)}"
        item = parsing.first_item(self.session.get_json(path), url=path)
        return parsing.text(parsing.fields(item).get("subject_ID"))

    # -- experiments and scans -----------------------------------------------

    def get_experiment_ids(self, project: str, subject: str = "") -> list[str]:
        """Labels of a subject's experiments, or of all the project's experiments
        (empty when the subject or project does not exist, as in datman)."""
        path = (paths.subject(project, subject) if subject else paths.project(project)) + "/experiments"
        try:
            document = self.session.get_json(path)
        except XnatNotFound:
            return []
        return [parsing.text(row.get("label")) for row in parsing.rows(document, url=path)]

    def get_experiment(self, project: str, subject_id: str, exper_id: str, create: bool = False) -> XNATExperiment:
        """An experiment by label or ID; created first when missing and ``create`` is set."""
        path = paths.experiment_in(project, subject_id, exper_id)
        try:
            document = self.session.get_json(path)
        except XnatNotFound:
            if not create:
                raise
            logger.info("creating experiment %s for subject %s in %s", exper_id, subject_id, project)
            self.make_experiment(project, subject_id, exper_id)
            document = self.session.get_json(path)
        return XNATExperiment(project, subject_id, parsing.first_item(document, url=path))

    def make_experiment(self, project: str, subject: str, experiment: str) -> None:
        """Create an MR session; an existing one is left as it is."""
        self.create_experiment(project, subject, experiment, exist_ok=True)

    def get_scan_ids(self, project: str, subject: str, experiment: str) -> list[str]:
        """IDs of an experiment's scans (empty when the experiment does not exist, as in datman)."""
        path = paths.experiment_in(project, subject, experiment) + "/scans"
        try:
            document = self.session.get_json(path)
        except XnatNotFound:
            return []
        return [parsing.text(row.get("ID")) for row in parsing.rows(document, url=path)]

    def get_scan(self, project: str, subject_id: str, exper_id: str, scan_id: str) -> XNATScan:
        """One scan of an experiment (``XnatNotFound`` if there is none with that ID)."""
        experiment = self.get_experiment(project, subject_id, exper_id)
        for scan in experiment.scans:
            if scan.series == str(scan_id):
                return scan
        raise XnatNotFound(f"scan {scan_id} does not exist in experiment {exper_id}",
                           url=self.session.url_for(paths.experiment_in(project, subject_id, exper_id)))

    # -- session resources -------------------------------------------------------

    def get_resource_ids(self, study: str, session: str, experiment: str, folderName: str | None = None,
                         create: bool = True):
        """Session resource IDs: all of them as a list, or the ID of the one
        labelled ``folderName`` (created when missing if ``create``; else None)."""
        path = paths.experiment_in(study, session, experiment) + "/resources"
        found = {}
        for row in parsing.rows(self.session.get_json(path), url=path):
            label = parsing.text(row.get("label")) or "No Label"
            found[label] = parsing.text(row.get("xnat_abstractresource_id"))
        if not folderName:
            return list(found.values())
        if folderName in found:
            return found[folderName]
        if not create:
            return None
        return self.create_resource_folder(study, session, experiment, folderName)

    def create_resource_folder(self, study: str, session: str, experiment: str, label: str) -> str | None:
        """Create a session resource (if missing) and return its ID."""
        try:
            self.create_resource(paths.experiment_in(study, session, experiment), label)
        except XnatConflict:
            logger.debug("resource %s already exists in %s", label, experiment)
        return self.get_resource_ids(study, session, experiment, label, create=False)

    def get_resource_list(self, study: str, session: str, experiment: str, resource_id: str) -> list[dict]:
        """The catalog entries (``URI``, ``name``, ``ID``, ``digest``, ...) of a session resource."""
        path = paths.resource(paths.experiment_in(study, session, experiment), resource_id)
        response = self.session.request("GET", path, params={"format": "xml"})
        if looks_like_html(response.text):
            raise XnatServerError("server answered with a web page where catalog XML was expected",
                                  url=response.url, status=response.status_code)
        try:
            catalog = ET.fromstring(response.content)
        except ET.ParseError as exc:
            raise XnatServerError("resource catalog is not valid XML", url=response.url) from exc
        entries = catalog.find("cat:entries", CATALOG_NS)
        if entries is None:
            return []
        return [dict(entry.attrib) for entry in entries.findall("cat:entry", CATALOG_NS)]

    # -- downloads -----------------------------------------------------------

    def _fetch_to(self, server_path: str, filename: str | None, *, params: dict | None, retries: int,
                  check: Callable[[str], None] | None) -> str:
        made_temp = filename is None
        if made_temp:
            handle, filename = tempfile.mkstemp(prefix="xnatfs_")
            os.close(handle)
        try:
            return download_to_path(self.session, server_path, filename, params=params, retries=retries,
                                    check=check)
        except BaseException:
            if made_temp:
                os.unlink(filename)
            raise

    def get_dicom(self, project: str, session: str, experiment: str, scan: str, filename: str | None = None,
                  retries: int = 3) -> str:
        """Download a zip of one scan's DICOM resource to ``filename`` (or a new
        temporary file, which the caller must remove); return its path."""
        scan_path = f"{paths.experiment_in(project, session, experiment)}/scans/{paths.seg(scan)}"
        return self._fetch_to(paths.resource(scan_path, "DICOM") + "/files", filename,
                              params={"format": "zip"}, retries=retries, check=check_zip)

    def get_resource(self, project: str, session: str, experiment: str, resource_group_id: str,
                     resource_id: str, filename: str | None = None, retries: int = 3, zipped: bool = True) -> str:
        """Download one file of a session resource (as a zip unless ``zipped=False``)."""
        resource_uri = paths.resource(paths.experiment_in(project, session, experiment), resource_group_id)
        server_path = f"{resource_uri}/files/{paths.file_path(resource_id)}"
        return self._fetch_to(server_path, filename, params={"format": "zip"} if zipped else None,
                              retries=retries, check=check_zip if zipped else None)

    def get_resource_archive(self, project: str, session: str, experiment: str, resource_id: str,
                             filename: str | None = None, retries: int = 3) -> str:
        """Download a zip of a whole session resource."""
        resource_uri = paths.resource(paths.experiment_in(project, session, experiment), resource_id)
        return self._fetch_to(resource_uri + "/files", filename, params={"format": "zip"}, retries=retries,
                              check=check_zip)

    # -- uploads -------------------------------------------------------------

    def put_dicoms(self, project: str, subject: str, experiment: str, filename: str, retries: int = 3) -> list[str]:
        """Import a zip of DICOM files into an experiment; return the URIs XNAT reports.

        The upload is not repeated automatically (``retries`` is accepted
        for datman's signature): an import that may have reached the server
        is for the caller to send again.
        """
        try:
            with open(filename, "rb") as archive:
                return self.import_dicom_zip(project, subject, experiment, archive)
        except OSError as exc:
            raise XnatError(f"cannot read {filename}: {exc.strerror}") from exc

    def put_resource(self, project: str, subject: str, experiment: str, filename: str, data,
                     folder: str | None = None, retries: int = 3) -> None:
        """Store ``data`` (bytes, text or a binary file object) as ``filename``
        in the experiment's resource ``folder`` (default ``MISC``).

        The experiment and the resource are created when missing; an
        existing file of that name is replaced.
        """
        experiment_path = paths.experiment_in(project, subject, experiment)
        try:
            self.session.get_json(experiment_path)
        except XnatNotFound:
            logger.info("experiment %s of %s does not exist; creating it", experiment, subject)
            self.make_experiment(project, subject, experiment)
        label = folder or DEFAULT_RESOURCE
        try:
            self.create_resource(experiment_path, label)
        except XnatConflict:
            pass
        if isinstance(data, str):
            data = data.encode("utf-8")
        body = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        self.upload_file(paths.resource(experiment_path, label), filename, body, overwrite=True,
                         retries=retries)

    # -- workflows -----------------------------------------------------------

    def dismiss_autorun(self, experiment) -> None:
        """Mark the experiment's open AutoRun.xml workflows Complete."""
        for workflow_id in experiment.get_autorun_ids(self):
            self.dismiss_workflow(workflow_id)
