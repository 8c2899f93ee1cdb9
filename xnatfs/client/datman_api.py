"""datman's ``datman.xnat.xnat``: the same names, parameters and meanings.

Scripts written for datman keep working against ``xnatfs.client.xnat``.
:class:`DatmanConnection` is a facade over an
:class:`~xnatfs.client.connection.XnatConnection`: it holds one, answers
datman's calls with it, and passes every other attribute through, so the
file system's calls work on it too. Its ``session`` is a
``requests.Session``, as datman's is, for scripts that send their own
requests. Known datman faults are not reproduced: scans are fetched through
a real XNAT route, a failed or 404 download raises instead of leaving an
empty or error-page file behind, a 409 on rename is a failure unless the
rename demonstrably happened, and AutoRun search answers are parsed as JSON
text.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import requests

from xnatfs.client import parsing, paths
from xnatfs.client.connection import XnatConnection
from xnatfs.client.downloads import check_zip
from xnatfs.client.http import XnatSession, looks_like_html
from xnatfs.client.objects import XNATExperiment, XNATScan, XNATSubject
from xnatfs.errors import XnatConflict, XnatError, XnatNotFound, XnatServerError

logger = logging.getLogger(__name__)

CATALOG_NS = {"cat": "http://nrg.wustl.edu/catalog"}
DEFAULT_RESOURCE = "MISC"
# Every answer goes back to the script, as requests would hand it over.
ANY_STATUS = range(100, 600)
# requests frames the body itself when it sends it.
_BODY_FRAMING = ("content-length", "transfer-encoding")


class DatmanSession(requests.Session):
    """datman's ``xnat.session``: a ``requests.Session`` logged in to the server.

    ``get``, ``post``, ``put``, ``delete`` and ``request`` take a full URL
    on this server (as datman builds them) or a server path such as
    ``/data/projects``; addresses on another server are refused, so the
    session cookie never leaves. Requests go through the connection's
    session: its login cookie, renewal of an expired login, timeouts and
    retries of idempotent requests. Every answer is returned whatever its
    status, as requests does. Redirects are not followed, and per-request
    ``auth``, ``cookies``, ``proxies``, ``verify``, ``cert`` and ``hooks``
    are refused: the connection decides those.
    """

    def __init__(self, xnat_session: XnatSession):
        super().__init__()
        self._xnat_session = xnat_session

    # Narrower than requests' own: methods and URLs are text, not bytes.
    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        cookies: Any = None,
        files: Any = None,
        auth: Any = None,
        timeout: Any = None,
        allow_redirects: bool = True,
        proxies: Any = None,
        hooks: Any = None,
        stream: bool | None = None,
        verify: Any = None,
        cert: Any = None,
        json: Any = None,
    ) -> requests.Response:
        refused = {"auth": auth, "cookies": cookies, "proxies": proxies, "verify": verify, "cert": cert, "hooks": hooks}
        given = sorted(name for name, value in refused.items() if value is not None)
        if given:
            raise TypeError(f"the XNAT session sets these itself: {', '.join(given)}")
        # requests encodes form fields, files and JSON exactly as it would for itself.
        encoded = requests.Request(method, self._xnat_session.url_for(url), data=data, files=files, json=json).prepare()
        merged = {key: value for key, value in encoded.headers.items() if key.lower() not in _BODY_FRAMING}
        merged.update(headers or {})
        if isinstance(timeout, tuple):
            timeout = timeout[-1]
        return self._xnat_session.request(
            method,
            url,
            params=params,
            data=encoded.body,
            headers=merged,
            stream=bool(stream),
            ok=ANY_STATUS,
            timeout=timeout,
        )


class DatmanConnection:
    """datman's ``xnat(server, username, password)``, over an :class:`XnatConnection`.

    ``url`` is accepted for ``server``; keyword options (``verify``,
    ``timeout``, ``retries``, ...) go to the connection. ``server``,
    ``auth``, ``headers`` and ``session`` are datman's attributes.
    """

    def __init__(
        self,
        server: str | None = None,
        username: str | None = None,
        password: str | None = None,
        *,
        url: str | None = None,
        **options: Any,
    ):
        server = _one_of("server", server, "url", url)
        if server is None:
            raise TypeError("xnat() needs the server address (server=...)")
        self.connection = XnatConnection(server, username, password, **options)
        self.session = DatmanSession(self.connection.session)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: the connection's own calls.
        if name == "connection":
            raise AttributeError(name)
        return getattr(self.connection, name)

    @property
    def _http(self) -> XnatSession:
        return self.connection.session

    def close(self) -> None:
        """Log out and release the connection."""
        self.session.close()
        self.connection.close()

    def __enter__(self) -> DatmanConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<xnat {self.connection.server} user={self.connection.username or '(guest)'}>"

    __str__ = __repr__

    # -- projects and subjects --------------------------------------------

    def get_projects(self, project: str = "") -> list[dict[str, Any]]:
        """All readable projects as listing rows, or one project's item JSON
        (a list of one item; empty if it does not exist)."""
        if not project:
            return parsing.rows(self._http.get_json("/data/projects"))
        try:
            document = self._http.get_json(paths.project(project))
        except XnatNotFound:
            return []
        return parsing.items(document)

    def find_project(self, subject_id: str, projects: list[str] | None = None) -> str | None:
        """The first project (of ``projects``, default all) with a subject labelled ``subject_id``."""
        if not projects:
            projects = [parsing.text(row.get("ID")) for row in self.get_projects()]
        for project in projects:
            try:
                if subject_id in self.get_subject_ids(project):
                    return project
            except XnatError as exc:
                logger.debug("skipping project %s: %s", project, exc)
        return None

    def get_subject_ids(self, project: str) -> list[str]:
        """Labels of the subjects in a project (``XnatNotFound`` if it does not exist)."""
        return [subject.label for subject in self.connection.list_subjects(project)]

    def get_subject(self, project: str, subject_id: str, create: bool = False) -> XNATSubject:
        """A subject by label or ID; created first when missing and ``create`` is set."""
        path = paths.subject(project, subject_id)
        try:
            document = self._http.get_json(path)
        except XnatNotFound:
            if not create:
                raise
            logger.info("creating subject %s in project %s", subject_id, project)
            self.make_subject(project, subject_id)
            document = self._http.get_json(path)
        return XNATSubject(parsing.first_item(document, url=path), project=project)

    def make_subject(self, project: str, subject: str) -> None:
        """Create a subject; an existing one is left as it is."""
        self.connection.create_subject(project, subject, exist_ok=True)

    def find_subject(self, project: str, exper_id: str) -> str:
        """The accession ID of the subject an experiment belongs to."""
        path = f"{paths.project(project)}/experiments/{paths.seg(exper_id)}"
        item = parsing.first_item(self._http.get_json(path), url=path)
        return parsing.text(parsing.fields(item).get("subject_ID"))

    # -- experiments and scans -----------------------------------------------

    def get_experiment_ids(self, project: str, subject: str = "") -> list[str]:
        """Labels of a subject's experiments, or of all the project's experiments
        (empty when the subject or project does not exist, as in datman)."""
        path = (paths.subject(project, subject) if subject else paths.project(project)) + "/experiments"
        try:
            document = self._http.get_json(path)
        except XnatNotFound:
            return []
        return [parsing.text(row.get("label")) for row in parsing.rows(document, url=path)]

    def get_experiment(self, project: str, subject_id: str, exper_id: str, create: bool = False) -> XNATExperiment:
        """An experiment by label or ID; created first when missing and ``create`` is set."""
        path = paths.experiment_in(project, subject_id, exper_id)
        try:
            document = self._http.get_json(path)
        except XnatNotFound:
            if not create:
                raise
            logger.info("creating experiment %s for subject %s in %s", exper_id, subject_id, project)
            self.make_experiment(project, subject_id, exper_id)
            document = self._http.get_json(path)
        return XNATExperiment(project, subject_id, parsing.first_item(document, url=path))

    def make_experiment(self, project: str, subject: str, experiment: str) -> None:
        """Create an MR session; an existing one is left as it is."""
        self.connection.create_experiment(project, subject, experiment, exist_ok=True)

    def get_scan_ids(self, project: str, subject: str, experiment: str) -> list[str]:
        """IDs of an experiment's scans (empty when the experiment does not exist, as in datman)."""
        path = paths.experiment_in(project, subject, experiment) + "/scans"
        try:
            document = self._http.get_json(path)
        except XnatNotFound:
            return []
        return [parsing.text(row.get("ID")) for row in parsing.rows(document, url=path)]

    def get_scan(self, project: str, subject_id: str, exper_id: str, scan_id: str) -> XNATScan:
        """One scan of an experiment (``XnatNotFound`` if there is none with that ID)."""
        experiment = self.get_experiment(project, subject_id, exper_id)
        for scan in experiment.scans:
            if scan.series == str(scan_id):
                return scan
        raise XnatNotFound(
            f"scan {scan_id} does not exist in experiment {exper_id}",
            url=self._http.url_for(paths.experiment_in(project, subject_id, exper_id)),
        )

    # -- session resources -------------------------------------------------------

    def get_resource_ids(
        self, study: str, session: str, experiment: str, folderName: str | None = None, create: bool = True
    ) -> list[str] | str | None:
        """Session resource IDs: all of them as a list, or the ID of the one
        labelled ``folderName`` (created when missing if ``create``; else None)."""
        found = self._resource_ids(study, session, experiment)
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
            self.connection.create_resource(paths.experiment_in(study, session, experiment), label)
        except XnatConflict:
            logger.debug("resource %s already exists in %s", label, experiment)
        return self._resource_ids(study, session, experiment).get(label)

    def _resource_ids(self, study: str, session: str, experiment: str) -> dict[str, str]:
        """Session resource IDs by label."""
        path = paths.experiment_in(study, session, experiment) + "/resources"
        found = {}
        for row in parsing.rows(self._http.get_json(path), url=path):
            label = parsing.text(row.get("label")) or "No Label"
            found[label] = parsing.text(row.get("xnat_abstractresource_id"))
        return found

    def get_resource_list(self, study: str, session: str, experiment: str, resource_id: str) -> list[dict[str, Any]]:
        """The catalog entries (``URI``, ``name``, ``ID``, ``digest``, ...) of a session resource."""
        path = paths.resource(paths.experiment_in(study, session, experiment), resource_id)
        response = self._http.request("GET", path, params={"format": "xml"})
        if looks_like_html(response.text):
            raise XnatServerError(
                "server answered with a web page where catalog XML was expected",
                url=response.url,
                status=response.status_code,
            )
        try:
            catalog = ET.fromstring(response.content)
        except ET.ParseError as exc:
            raise XnatServerError("resource catalog is not valid XML", url=response.url) from exc
        entries = catalog.find("cat:entries", CATALOG_NS)
        if entries is None:
            return []
        return [dict(entry.attrib) for entry in entries.findall("cat:entry", CATALOG_NS)]

    # -- downloads -----------------------------------------------------------

    def _fetch_to(
        self,
        server_path: str,
        filename: str | None,
        *,
        params: dict[str, Any] | None,
        retries: int,
        check: Callable[[str], None] | None,
    ) -> str:
        made_temp = filename is None
        if filename is None:
            handle, filename = tempfile.mkstemp(prefix="xnatfs_")
            os.close(handle)
        try:
            return self.connection.download_to_path(server_path, filename, params=params, retries=retries, check=check)
        except BaseException:
            if made_temp:
                os.unlink(filename)
            raise

    def get_dicom(
        self, project: str, session: str, experiment: str, scan: str, filename: str | None = None, retries: int = 3
    ) -> str:
        """Download a zip of one scan's DICOM resource to ``filename`` (or a new
        temporary file, which the caller must remove); return its path."""
        scan_path = f"{paths.experiment_in(project, session, experiment)}/scans/{paths.seg(scan)}"
        return self._fetch_to(
            paths.resource(scan_path, "DICOM") + "/files",
            filename,
            params={"format": "zip"},
            retries=retries,
            check=check_zip,
        )

    def get_resource(
        self,
        project: str,
        session: str,
        experiment: str,
        resource_group_id: str,
        resource_id: str,
        filename: str | None = None,
        retries: int = 3,
        zipped: bool = True,
    ) -> str:
        """Download one file of a session resource (as a zip unless ``zipped=False``)."""
        resource_uri = paths.resource(paths.experiment_in(project, session, experiment), resource_group_id)
        server_path = f"{resource_uri}/files/{paths.file_path(resource_id)}"
        return self._fetch_to(
            server_path,
            filename,
            params={"format": "zip"} if zipped else None,
            retries=retries,
            check=check_zip if zipped else None,
        )

    def get_resource_archive(
        self,
        project: str,
        session: str,
        experiment: str,
        resource_id: str,
        filename: str | None = None,
        retries: int = 3,
    ) -> str:
        """Download a zip of a whole session resource."""
        resource_uri = paths.resource(paths.experiment_in(project, session, experiment), resource_id)
        return self._fetch_to(
            resource_uri + "/files", filename, params={"format": "zip"}, retries=retries, check=check_zip
        )

    # -- uploads -------------------------------------------------------------

    def put_dicoms(self, project: str, subject: str, experiment: str, filename: str, retries: int = 3) -> list[str]:
        """Import a zip of DICOM files into an experiment; return the URIs XNAT reports.

        The upload is not repeated automatically (``retries`` is accepted
        for datman's signature): an import that may have reached the server
        is for the caller to send again.
        """
        try:
            with open(filename, "rb") as archive:
                return self.connection.import_dicom_zip(project, subject, experiment, archive)
        except OSError as exc:
            raise XnatError(f"cannot read {filename}: {exc.strerror}") from exc

    def put_resource(
        self,
        project: str,
        subject: str,
        experiment: str,
        filename: str,
        data: str | bytes | bytearray | BinaryIO,
        folder: str | None = None,
        retries: int = 3,
    ) -> None:
        """Store ``data`` (bytes, text or a binary file object) as ``filename``
        in the experiment's resource ``folder`` (default ``MISC``).

        The experiment and the resource are created when missing; an
        existing file of that name is replaced.
        """
        experiment_path = paths.experiment_in(project, subject, experiment)
        try:
            self._http.get_json(experiment_path)
        except XnatNotFound:
            logger.info("experiment %s of %s does not exist; creating it", experiment, subject)
            self.make_experiment(project, subject, experiment)
        label = folder or DEFAULT_RESOURCE
        try:
            self.connection.create_resource(experiment_path, label)
        except XnatConflict:
            pass
        if isinstance(data, str):
            data = data.encode("utf-8")
        body = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        self.connection.upload_file(
            paths.resource(experiment_path, label), filename, body, overwrite=True, retries=retries
        )

    # -- workflows -----------------------------------------------------------

    def dismiss_autorun(self, experiment: XNATExperiment) -> None:
        """Mark the experiment's open AutoRun.xml workflows Complete."""
        for workflow_id in experiment.get_autorun_ids(self):
            self.connection.dismiss_workflow(workflow_id)

    # -- deletes -------------------------------------------------------------

    def delete_resource(
        self,
        project: str | None = None,
        session: str | None = None,
        experiment: str | None = None,
        resource_group_id: str | None = None,
        resource_id: str | None = None,
        retries: int = 3,
        *,
        project_or_uri: str | None = None,
    ) -> None:
        """Delete one file of a session resource (datman's form), or a whole resource.

        ``delete_resource(project, session, experiment, resource_group_id,
        resource_id)`` removes the file ``resource_id`` from the experiment's
        resource ``resource_group_id``; a missing file is ``XnatNotFound``.
        ``delete_resource(resource_uri)`` removes a resource folder with its
        files. ``project_or_uri`` is accepted for ``project``.
        """
        project = _one_of("project", project, "project_or_uri", project_or_uri)
        if project is None:
            raise TypeError("delete_resource() needs a project or a resource URI")
        if session is None:
            self.connection.delete_resource(project)
            return
        if experiment is None or resource_group_id is None or resource_id is None:
            raise TypeError(
                "datman's delete_resource needs project, session, experiment, resource_group_id and resource_id"
            )
        resource_uri = paths.resource(paths.experiment_in(project, session, experiment), resource_group_id)
        self.connection.delete_file(resource_uri, resource_id, retries=retries)


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """``value`` or, failing that, the value given under its alias (not both)."""
    if value is not None and alias_value is not None:
        raise TypeError(f"give {name} or {alias}, not both")
    return value if value is not None else alias_value


# datman's name for its connection class.
xnat = DatmanConnection
