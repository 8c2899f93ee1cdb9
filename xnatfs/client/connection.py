"""``XnatConnection``: everything xnatfs asks of an XNAT server.

The calls the file system uses are defined here; datman's calls (same
names and meanings as ``datman.xnat.xnat``) are offered by
:class:`~xnatfs.client.datman_api.DatmanConnection`, a facade that uses one
of these. All calls block and are safe to make from many threads at once;
all failures are ``XnatError`` children.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

import requests

from xnatfs.client import parsing, paths, workflows
from xnatfs.client.credentials import AliasToken, Credentials, resolve_credentials
from xnatfs.client.downloads import download_to_path
from xnatfs.client.http import XnatSession, parse_json
from xnatfs.client.models import Experiment, ExperimentContents, Project, RemoteFile, Resource, Subject
from xnatfs.client.parts import PartPlan, PartTarget, download_in_parts
from xnatfs.errors import XnatConflict, XnatError, XnatNotFound, XnatServerError, XnatUnsupported

logger = logging.getLogger(__name__)

EXPERIMENT_COLUMNS = "ID,label,xsiType,date,insert_date,project,subject_ID,subject_label,URI"
IMPORT_OVERWRITE_MODES = ("none", "append", "delete")
_SEARCH_REFUSED = (400, 500, 501)
_RESOURCE_URI = re.compile(r"/resources/[^/]+/?$")
_EXPERIMENT_URI = re.compile(r"/experiments/[^/]+/?$")


class XnatConnection:
    """A logged-in connection to one XNAT server.

    ``url`` is the server root. Credentials not given here are looked up as
    :mod:`xnatfs.client.credentials` describes. ``verify`` is True, False or
    a CA bundle path; ``timeout`` the read timeout in seconds; ``retries``
    how often a failed idempotent request is repeated (with exponential
    backoff starting at ``backoff`` seconds). ``import_overwrite`` is the
    DICOM import service's ``overwrite`` mode (none, append or delete);
    ``event_reason``, when set, is sent with every change (for sites that
    require a justification).

    Use as a context manager, or call :meth:`close` to log out.
    """

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        verify: bool | str = True,
        timeout: float = 60,
        retries: int = 5,
        backoff: float = 0.5,
        import_overwrite: str = "append",
        event_reason: str | None = None,
        pool_size: int = 32,
    ):
        if import_overwrite not in IMPORT_OVERWRITE_MODES:
            raise ValueError(f"import_overwrite must be one of {', '.join(IMPORT_OVERWRITE_MODES)}")
        credentials = resolve_credentials(url, username, password)
        self.session = XnatSession(
            url, credentials, verify=verify, timeout=timeout, retries=retries, backoff=backoff, pool_size=pool_size
        )
        self.server = self.session.base_url
        self.import_overwrite = import_overwrite
        self.event_reason = event_reason
        try:
            self.session.login()
        except BaseException:
            self.session.close()
            raise

    # -- identity ----------------------------------------------------------

    @property
    def auth(self) -> Credentials | None:
        """datman's ``(username, password)``; prints without the password."""
        return self.session.credentials

    @property
    def username(self) -> str | None:
        return self.session.username

    @property
    def headers(self) -> dict[str, str | bytes]:
        return self.session.headers

    @property
    def retries(self) -> int:
        """How often a failed idempotent request is repeated."""
        return self.session.retries

    @retries.setter
    def retries(self, count: int) -> None:
        self.session.retries = count

    @property
    def max_answer_bytes(self) -> int:
        """The largest answer held in memory (listings, searches, item JSON); larger ones are refused."""
        return self.session.max_answer_bytes

    @max_answer_bytes.setter
    def max_answer_bytes(self, size: int) -> None:
        self.session.max_answer_bytes = size

    @property
    def supports_range(self) -> bool | None:
        """Whether the server honours HTTP Range; None until a ranged download has shown it."""
        return self.session.supports_range

    def __repr__(self) -> str:
        return f"<XnatConnection {self.server} user={self.username or '(guest)'}>"

    __str__ = __repr__

    def close(self) -> None:
        """Log out and release the connection pool."""
        self.session.close()

    def __enter__(self) -> XnatConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_params(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        merged = dict(params or {})
        if self.event_reason:
            merged.setdefault("event_reason", self.event_reason)
        return merged

    def _change(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        ok: Iterable[int] = (200,),
        done_if_repeated: Iterable[int] = (),
    ) -> requests.Response:
        """Send a change; return the answer.

        A status in ``done_if_repeated`` (404 to a delete, 409 to a create)
        answering a repeat means the lost first attempt did the change, as
        does a create's 200 for an object that existed (see :meth:`_created`).
        Since a repeat's answer tells whether the first attempt was carried
        out, these changes are repeated after a 500 too.
        """
        ok, done_if_repeated = tuple(ok), tuple(done_if_repeated)
        response = self.session.request(
            method, path, params=self._write_params(params), ok=ok + done_if_repeated, repeat_after_500=True
        )
        if response.status_code not in ok and not response.repeated:  # type: ignore[attr-defined]
            raise self.session.error_for(method, response.url, response.status_code, response.text)
        return response

    # -- listings ----------------------------------------------------------

    def list_projects(self) -> list[Project]:
        """Projects the user can read."""
        document = self.session.get_json("/data/projects")
        return [parsing.project_from_row(row) for row in parsing.rows(document, url="/data/projects")]

    def list_subjects(self, project: str) -> list[Subject]:
        """Subjects of a project, including those shared into it (``shared=True``)."""
        path = paths.project(project) + "/subjects"
        document = self.session.get_json(path)
        return [parsing.subject_from_row(row, project) for row in parsing.rows(document, url=path)]

    def list_experiments(self, project: str, subject: str | None = None) -> list[Experiment]:
        """Experiments of a project in one request; ``subject`` (label or ID) narrows it."""
        path = paths.project(project) + "/experiments"
        document = self.session.get_json(path, {"columns": EXPERIMENT_COLUMNS})
        found = [parsing.experiment_from_row(row, project) for row in parsing.rows(document, url=path)]
        if subject is not None:
            found = [e for e in found if subject in (e.subject_id, e.subject_label)]
        return found

    def find_subject(self, project: str, label: str) -> Subject | None:
        """The subject labelled ``label`` in ``project`` (shared into it or its own), or None.

        Its row of the project's subject listing, asked for by label: the
        same record :meth:`list_subjects` gives for it, without listing the rest.
        """
        path = paths.project(project) + "/subjects"
        document = self.session.get_json(path, {"label": label})
        found = (parsing.subject_from_row(row, project) for row in parsing.rows(document, url=path))
        # The server's filter may match more loosely (case, wildcards): only the label itself counts.
        return next((subject for subject in found if subject.label == label), None)

    def list_subject_experiments(self, project: str, subject: str) -> list[Experiment]:
        """Experiments of one subject (label or ID) of a project, from the subject's own listing.

        XnatNotFound when the project has no such subject.
        """
        path = paths.subject(project, subject) + "/experiments"
        document = self.session.get_json(path, {"columns": EXPERIMENT_COLUMNS})
        return [parsing.experiment_from_row(row, project) for row in parsing.rows(document, url=path)]

    def get_experiment_contents(self, experiment_id: str) -> ExperimentContents:
        """Scans (with their resources) and session resources, from the item JSON."""
        path = paths.experiment(experiment_id)
        item = parsing.first_item(self.session.get_json(path), url=path)
        return parsing.experiment_contents(item, experiment_id)

    def list_project_contents(self, project: str) -> dict[str, ExperimentContents] | None:
        """Scans, scan resources and session resources of every experiment of a project.

        Two project-wide searches instead of one item request per
        experiment. Experiments the answers do not both cover are left out
        (ask :meth:`get_experiment_contents` for those), and resources come
        with labels only. None when the server does not answer such searches.
        """
        scan_rows = self._search(
            "/data/experiments",
            project,
            (parsing.SCAN_ID, parsing.SCAN_TYPE, parsing.SCAN_DESCRIPTION, parsing.SCAN_QUALITY, parsing.SCAN_RESOURCE),
        )
        if scan_rows is None:
            return None
        resource_rows = self._search("/data/experiments", project, (parsing.SESSION_RESOURCE,))
        if resource_rows is None:
            return None
        return parsing.experiment_contents_from_search(scan_rows, resource_rows)

    def list_subject_resources(self, project: str) -> dict[str, tuple[str, ...]] | None:
        """Resource labels of every subject of a project, by subject ID, in one request.

        None when the server does not answer such a search.
        """
        found = self._search(paths.project(project) + "/subjects", None, (parsing.SUBJECT_RESOURCE,))
        return None if found is None else parsing.subject_resources_from_search(found)

    def _search(self, path: str, project: str | None, columns: tuple[str, ...]) -> list[dict[str, Any]] | None:
        """Rows of a search reaching into child tables; None if the server cannot do it."""
        params = {"columns": ",".join(("ID",) + columns)}
        if project is not None:
            params["project"] = project
        try:
            document = self.session.get_json(path, params)
            found = parsing.rows(document, url=path)
        except XnatError as exc:
            # XNAT answers a search it cannot build with 400 or 500; anything
            # else (refused, unreachable) is no answer about the search itself.
            if exc.status not in _SEARCH_REFUSED:
                raise
            logger.info("the server cannot search %s by %s: %s", path, ", ".join(columns), exc)
            return None
        total = parsing.to_int(document["ResultSet"].get("totalRecords"))
        if total is not None and total > len(found):
            # A page of the answer would show sessions with scans missing.
            logger.info("the server sent %d of %d rows of a search of %s", len(found), total, path)
            return None
        if not parsing.answers_columns(found, *columns):
            logger.info("the server ignored the columns %s of %s", ", ".join(columns), path)
            return None
        return found

    def list_resources(self, parent_uri: str) -> list[Resource]:
        """Resources (folders) of a project, subject, experiment or scan."""
        parent = paths.canonical(parent_uri.rstrip("/"))
        path = parent + "/resources"
        document = self.session.get_json(path)
        return [parsing.resource_from_values(row, parent) for row in parsing.rows(document, url=path)]

    def list_files(self, uri: str, all_levels: bool = False) -> list[RemoteFile]:
        """Files of a resource, scan or experiment, with exact sizes and digests.

        For an experiment, ``all_levels=True`` lists every file of the session
        and of all its scans in one request.
        """
        uri = paths.canonical(uri.rstrip("/"))
        path = paths.with_files(uri)
        params = {"all": "true"} if all_levels else None
        document = self.session.get_json(path, params)
        resource_uri = uri if _RESOURCE_URI.search(uri) else None
        found = (parsing.file_from_row(row, resource_uri) for row in parsing.rows(document, url=path))
        return [remote for remote in found if remote is not None]

    # -- reading -----------------------------------------------------------

    def download(self, uri: str, fileobj: BinaryIO, *, offset: int = 0, length: int | None = None) -> int:
        """Write part or all of a file to ``fileobj``; return the byte count.

        Uses HTTP Range when the server honours it (see
        :attr:`supports_range`), else skips to ``offset`` itself. A body cut
        short is resumed; if that keeps failing ``XnatServerError`` is
        raised and whatever was written must be discarded.
        """
        return self.session.download(uri, fileobj, offset=offset, length=length)

    def download_in_parts(self, uri: str, target: PartTarget, plan: PartPlan) -> None:
        """Write a whole file of ``plan.size`` bytes into ``target`` as
        several ranged streams at once where the server honours Range (one
        stream where it does not); see :mod:`xnatfs.client.parts`."""
        download_in_parts(self.session, uri, target, plan)

    def download_to_path(
        self,
        server_path: str,
        destination: str,
        *,
        params: Mapping[str, Any] | None = None,
        retries: int | None = None,
        check: Callable[[str], None] | None = None,
    ) -> str:
        """Stream ``server_path`` into the file ``destination``, which appears
        only when complete (and accepted by ``check``); return its path."""
        return download_to_path(self.session, server_path, destination, params=params, retries=retries, check=check)

    def download_zip(self, uri: str, fileobj: BinaryIO) -> int:
        """Write a zip of a resource, a scan or a whole session to ``fileobj``.

        A seekable ``fileobj`` is rewound and the download repeated when it
        is cut short; XNAT's zips have no Content-Length, so only a broken
        connection shows truncation.
        """
        uri = paths.canonical(uri.rstrip("/"))
        params = {"format": "zip"}
        if _EXPERIMENT_URI.search(uri):
            params["all"] = "true"
        return self.session.download_whole(paths.with_files(uri), fileobj, params=params)

    # -- writing -----------------------------------------------------------

    def upload_file(
        self,
        resource_uri: str,
        relpath: str,
        fileobj: BinaryIO | bytes,
        *,
        overwrite: bool = True,
        retries: int | None = None,
    ) -> None:
        """Store a file at ``relpath`` (sub-folders allowed) in a resource.

        The body is streamed from ``fileobj``. With ``overwrite=False`` an
        existing file is an ``XnatConflict``. XNAT refuses empty uploads, so
        an empty body is ``XnatUnsupported``.
        """
        if isinstance(fileobj, str):
            fileobj = fileobj.encode("utf-8")
        if _remaining_bytes(fileobj) == 0:
            raise XnatUnsupported("XNAT does not accept empty files", url=self.session.url_for(resource_uri))
        path = f"{paths.canonical(resource_uri.rstrip('/'))}/files/{paths.file_path(relpath)}"
        params = {"inbody": "true"}
        if overwrite:
            params["overwrite"] = "true"
        response = self.session.request(
            "PUT",
            path,
            params=self._write_params(params),
            data=fileobj,
            headers={"Content-Type": "application/octet-stream"},
            # Repeating a non-overwriting upload that did land would look like a conflict;
            # an overwriting one stores the same bytes again, after a 500 too.
            idempotent=overwrite,
            repeat_after_500=overwrite,
            retries=retries,
        )
        duplicates = _duplicates(response.text)
        if duplicates:
            raise XnatConflict(
                f"file exists and was not replaced: {', '.join(duplicates)}",
                url=response.url,
                status=response.status_code,
            )

    def delete_file(self, resource_uri: str, relpath: str, *, retries: int | None = None) -> None:
        """Delete one file. A missing file is ``XnatNotFound`` (checked first:
        XNAT answers 200 for a delete that matched nothing)."""
        path = f"{paths.canonical(resource_uri.rstrip('/'))}/files/{paths.file_path(relpath)}"
        self.session.request("HEAD", path, retries=retries).close()
        # Deleting it again after a 500 is harmless: it is gone either way.
        self.session.request("DELETE", path, params=self._write_params(), retries=retries, repeat_after_500=True)

    def create_subject(self, project: str, label: str, *, exist_ok: bool = False) -> str:
        """Create a subject; return its accession ID.

        An existing subject is an ``XnatConflict`` unless ``exist_ok``.
        """
        response = self._change("PUT", paths.subject(project, label), ok=(200, 201))
        return self._created(response, exist_ok, f"subject {label} already exists in {project}")

    def create_experiment(
        self, project: str, subject: str, label: str, xsi_type: str = "xnat:mrSessionData", *, exist_ok: bool = False
    ) -> str:
        """Create an experiment (the subject too, if missing); return its accession ID.

        An existing experiment is an ``XnatConflict`` unless ``exist_ok``.
        """
        response = self._change(
            "PUT", paths.experiment_in(project, subject, label), {"xsiType": xsi_type}, ok=(200, 201)
        )
        return self._created(response, exist_ok, f"experiment {label} already exists in {project}")

    @staticmethod
    def _created(response: requests.Response, exist_ok: bool, conflict_message: str) -> str:
        # XNAT answers 201 for a new object and 200 when it already existed;
        # after a repeat, "existed" may well mean our first attempt made it.
        if response.status_code == 200 and not (exist_ok or response.repeated):  # type: ignore[attr-defined]
            raise XnatConflict(conflict_message, url=response.url, status=200)
        return response.text.strip()

    def create_resource(self, parent_uri: str, label: str) -> None:
        """Create a resource folder; an existing one is ``XnatConflict``."""
        self._change("PUT", paths.resource(paths.canonical(parent_uri), label), done_if_repeated=(409,))

    def delete_resource(self, resource_uri: str) -> None:
        """Delete a resource folder with its files."""
        self._change(
            "DELETE", paths.canonical(resource_uri.rstrip("/")), {"removeFiles": "true"}, done_if_repeated=(404,)
        )

    def delete_project(self, project: str) -> None:
        """Delete a project with everything in it."""
        self._change("DELETE", paths.project(project), {"removeFiles": "true"}, done_if_repeated=(404,))

    def delete_subject(self, project: str, subject: str) -> None:
        """Delete a subject with its files (through a sharing project: remove the share)."""
        self._change("DELETE", paths.subject(project, subject), {"removeFiles": "true"}, done_if_repeated=(404,))

    def delete_experiment(self, project: str, experiment_id: str) -> None:
        """Delete an experiment with its files (through a sharing project: remove the share)."""
        self._change(
            "DELETE",
            f"{paths.project(project)}/experiments/{paths.seg(experiment_id)}",
            {"removeFiles": "true"},
            done_if_repeated=(404,),
        )

    def import_dicom_zip(self, project: str, subject: str, experiment: str, fileobj: BinaryIO) -> list[str]:
        """Send a zip of DICOM files to the import service; return the URIs it reports.

        The files are archived into the given experiment (created if
        needed) with the connection's ``import_overwrite`` mode. Entries
        that are not DICOM (a ``README.txt``, a ``DICOMDIR``, as CD exports
        and scanners put in) are skipped: XNAT refuses the whole zip for
        them otherwise, and still refuses one holding no DICOM at all. The upload
        is never repeated automatically once its body may have reached the
        server: the caller decides whether to send it again.
        """
        # A stale session would only show after the whole body was sent.
        self.session.request("GET", "/data/JSESSION").close()
        params = self._write_params(
            {
                "import-handler": "DICOM-zip",
                "Ignore-Unparsable": "true",
                "project": project,
                "subject": subject,
                "session": experiment,
                "overwrite": self.import_overwrite,
                "inbody": "true",
                "dest": f"/archive/projects/{project}/subjects/{subject}/experiments/{experiment}",
            }
        )
        response = self.session.request(
            "POST",
            "/data/services/import",
            params=params,
            data=fileobj,
            headers={"Content-Type": "application/zip"},
            idempotent=False,
            timeout=max(self.session.timeout, 3600),
        )
        return [line.strip() for line in response.text.splitlines() if line.strip()]

    # -- renames -----------------------------------------------------------

    def rename_subject(self, project: str, old_name: str, new_name: str, rename_exp: bool = False) -> None:
        """Give a subject a new label in ``project``.

        A 409 caused by an open AutoRun workflow is handled by dismissing
        the workflow and trying once more. With ``rename_exp`` (datman's
        option) the subject's experiment labelled ``old_name`` is renamed
        to ``new_name`` as well.
        """
        if old_name != new_name:
            path = paths.subject(project, old_name)
            item = parsing.first_item(self.session.get_json(path), url=path)
            values = parsing.fields(item)
            subject_id = parsing.text(values.get("ID"))
            blockers = [subject_id] + [
                parsing.text(parsing.fields(entry).get("ID"))
                for entry in parsing.children(item, "experiments/experiment")
            ]
            self._rename(
                path,
                {"label": new_name},
                renamed=lambda: self._label_is(paths.subject(project, new_name), subject_id),
                blockers=blockers,
                owner=parsing.text(values.get("project")) or project,
            )
        if rename_exp:
            self.rename_experiment(project, new_name, old_name, new_name)

    def rename_experiment(self, project: str, subject: str, old_name: str, new_name: str) -> None:
        """Give an experiment a new label in ``project``.

        A 409 caused by an open AutoRun workflow is handled by dismissing
        the workflow and trying once more; a label already in use is an
        ``XnatConflict``.
        """
        if old_name == new_name:
            return
        path = paths.experiment_in(project, subject, old_name)
        item = parsing.first_item(self.session.get_json(path), url=path)
        values = parsing.fields(item)
        experiment_id = parsing.text(values.get("ID") or values.get("id"))
        xsi_type = parsing.text((item.get("meta") or {}).get("xsi:type")) or "xnat:mrSessionData"
        self._rename(
            path,
            {"xsiType": xsi_type, "label": new_name},
            renamed=lambda: self._label_is(paths.experiment_in(project, subject, new_name), experiment_id),
            blockers=[experiment_id],
            owner=parsing.text(values.get("project")) or project,
        )

    def _rename(
        self, path: str, params: dict[str, Any], *, renamed: Callable[[], bool], blockers: Iterable[str], owner: str
    ) -> None:
        """One rename PUT, and a second one after dismissing blocking AutoRun
        workflows, or after a 5xx or a lost answer left the rename not done.

        Renames are not repeated blindly (a repeat would find the old label
        gone); when a 409, a 5xx or a lost answer leaves it open whether the
        rename happened, ``renamed()`` asks the server, and one that did not
        happen after a 5xx or a lost answer is sent once more.
        """
        for second in (False, True):
            try:
                self.session.request("PUT", path, params=self._write_params(params), idempotent=False)
                return
            except XnatConflict as conflict:
                # Some XNAT versions answer 409 although the rename went through.
                if renamed():
                    return
                if second or "in use" in conflict.message.lower():
                    raise
                if not self._dismiss_blocking_autoruns(blockers, owner):
                    raise
            except XnatServerError:
                # The answer (or a proxy's 5xx) may have come after the rename was done.
                if renamed():
                    return
                if second:
                    raise
                # Not done, so sending it once more cannot rename twice.

    def _label_is(self, path: str, accession_id: str) -> bool:
        try:
            item = parsing.first_item(self.session.get_json(path), url=path)
        except XnatNotFound:
            return False
        return parsing.text(parsing.fields(item).get("ID")) == accession_id

    def _dismiss_blocking_autoruns(self, item_ids: Iterable[str], project: str) -> bool:
        dismissed = False
        for item_id in filter(None, item_ids):
            for workflow_id in self.find_autorun_ids(item_id, project):
                self.dismiss_workflow(workflow_id)
                dismissed = True
        return dismissed

    # -- workflows ---------------------------------------------------------

    def find_autorun_ids(self, item_id: str, project: str) -> list[str]:
        """IDs of the still-open AutoRun workflows of an item (by accession ID) in its project."""
        response = self.session.request(
            "POST",
            "/data/search",
            params={"format": "json"},
            data=workflows.autorun_search(item_id, project),
            headers={"Content-Type": "text/xml"},
            idempotent=True,
        )
        found = parsing.rows(parse_json(response), url=response.url)
        ids = [workflows.workflow_id(row) for row in found if workflows.is_open(row)]
        return list(dict.fromkeys(filter(None, ids)))

    def dismiss_workflow(self, workflow_id: str) -> None:
        """Mark a workflow Complete so it no longer blocks renames."""
        logger.info("marking XNAT workflow %s as Complete", workflow_id)
        self.session.request(
            "PUT",
            f"/data/workflows/{paths.seg(workflow_id)}",
            params=self._write_params({"wrk:workflowData/status": "Complete"}),
        )

    # -- tokens ------------------------------------------------------------

    def issue_token(self) -> AliasToken:
        """Ask the server for an alias token (see ``credentials.store_alias_token``)."""
        document = self.session.get_json("/data/services/tokens/issue")
        try:
            alias, secret = str(document["alias"]), str(document["secret"])
        except (TypeError, KeyError) as exc:
            raise XnatServerError(
                "the token service answered without alias and secret",
                url=self.session.url_for("/data/services/tokens/issue"),
            ) from exc
        expires = parsing.to_int(document.get("estimatedExpirationTime"))
        return AliasToken(alias, secret, expires / 1000 if expires else None)


def _remaining_bytes(body: Any) -> int | None:
    """Bytes left to send from ``body``; None when it cannot be known."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    try:
        if body.seekable():
            here: int = body.tell()
            end: int = body.seek(0, io.SEEK_END)
            body.seek(here)
            return end - here
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _duplicates(text: str) -> list[str]:
    text = text.strip()
    if not text.startswith("{"):
        return []
    try:
        document = json.loads(text)
    except ValueError:
        return []
    found = document.get("duplicates") if isinstance(document, dict) else None
    return [str(name) for name in found] if isinstance(found, list) else []
