"""The archive tree: projects, subjects, experiments and scans, and their shares.

Addresses follow XNAT: under ``/projects/P/...`` subjects and experiments are
found by label in P (owned or shared into P) or by accession ID; without a
project only accession IDs work. Resources and files below any of these are
handed to :mod:`files`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import search
from .files import FilesApi, Parent, experiment_parent, project_parent, scan_parent, subject_parent
from .http import Request, Response, error_page, json_response, method_not_allowed, text_response
from .items import experiment_item, item_xml, items_document, project_item, scan_item, subject_item
from .store import Store, required
from .tables import table_response

VALID_LABEL = re.compile(r"^[A-Za-z0-9_-]+$")

PROJECT_COLUMNS = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"]
SUBJECT_COLUMNS = ["ID", "project", "label", "insert_date", "insert_user", "URI"]
SUBJECT_EXPERIMENT_COLUMNS = [
    "ID",
    "label",
    "date",
    "xsiType",
    "xnat:subjectassessordata/id",
    "insert_date",
    "project",
    "URI",
]
PROJECT_EXPERIMENT_COLUMNS = ["ID", "label", "date", "xsiType", "insert_date", "project", "URI"]
GLOBAL_EXPERIMENT_COLUMNS = ["ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
SCAN_COLUMNS = ["xsiType", "xnat_imagescandata_id", "note", "series_description", "ID", "type", "URI", "quality"]
SCAN_FIELD_PARAMS = ("type", "series_description", "quality", "note", "frames")
EXPERIMENT_FIELD_PARAMS = (
    "date",
    "time",
    "note",
    "visit_id",
    "session_type",
    "modality",
    "acquisition_site",
    "operator",
    "scanner",
    "fieldStrength",
)


@dataclass(frozen=True)
class Scope:
    """What the address has fixed so far: the project it goes through and the subject."""

    project: str | None = None
    subject_id: str | None = None


def _item_answer(request: Request, item: dict) -> Response:
    fmt = (request.param("format") or "xml").lower()
    if fmt == "json":
        return json_response(items_document(item))
    if fmt in ("xml", "html"):
        return Response(200, item_xml(item).encode(), "text/xml;charset=UTF-8")
    return error_page(400, f"Unsupported format: {fmt}")


def _typed_params(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """Field values given as ``name=`` or ``xsiType/name=`` query parameters."""
    values = {}
    lowered = {n.lower(): n for n in names}
    for key, value in request.query_items:
        short = key.rsplit("/", 1)[-1].lower()
        if short in lowered:
            values[lowered[short]] = value
    return values


def _iso_date(value: str) -> str:
    """XNAT takes dates as MM/DD/YYYY or YYYY-MM-DD; it stores YYYY-MM-DD."""
    if re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", value):
        month, day, year = value.split("/")
        return f"{year}-{int(month):02d}-{int(day):02d}"
    return value


class ArchiveApi:
    def __init__(self, server):
        self.server = server
        self.store: Store = server.store
        self.files = FilesApi(server)

    def route(self, request: Request, segments: list[str]) -> Response:
        head, rest = segments[0], segments[1:]
        if head == "projects":
            return self._projects(request, rest)
        if head == "subjects":
            return self._subjects(request, Scope(), rest)
        if head == "experiments":
            return self._experiments(request, Scope(), rest)
        return error_page(404, "Unknown address.")

    # ---- projects ---------------------------------------------------------

    def _projects(self, request: Request, rest: list[str]) -> Response:
        if not rest:
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed(request, "GET, HEAD")
            rows = [
                {
                    "ID": p["id"],
                    "secondary_ID": p["secondary_id"],
                    "name": p["name"],
                    "description": p["description"],
                    "pi_firstname": p["pi_firstname"],
                    "pi_lastname": p["pi_lastname"],
                    "URI": f"/data/projects/{p['id']}",
                    "insert_date": p["insert_date"],
                    "insert_user": p["insert_user"],
                }
                for p in self.store.projects()
            ]
            return table_response(request, rows, PROJECT_COLUMNS)
        project = self.store.project(rest[0])
        if len(rest) == 1:
            return self._project_item(request, rest[0], project)
        if project is None:
            return error_page(404, f"Unable to find project {rest[0]}.")
        scope = Scope(project=project["id"])
        kind = rest[1]
        if kind == "subjects":
            return self._subjects(request, scope, rest[2:])
        if kind == "experiments":
            return self._experiments(request, scope, rest[2:])
        if kind in ("resources", "files"):
            return self.files.route(request, [project_parent(project["id"])], rest[1:])
        return error_page(404, "Unknown address.")

    def _project_item(self, request: Request, name: str, project) -> Response:
        if request.method in ("GET", "HEAD"):
            if project is None:
                return error_page(404, f"Unable to find project {name}.")
            return _item_answer(request, project_item(self.store, project))
        if request.method == "PUT":
            fields = {
                key: value
                for key, param in (
                    ("name", "name"),
                    ("description", "description"),
                    ("secondary_id", "secondary_ID"),
                    ("pi_firstname", "pi_firstname"),
                    ("pi_lastname", "pi_lastname"),
                )
                if (value := request.param(param)) is not None
            }
            if project is not None:
                self.store.update_project(project["id"], **fields)
                return text_response(project["id"])
            if not VALID_LABEL.match(name):
                return error_page(417, "Invalid character in project ID.")
            self.store.add_project(name, insert_user=request.user or "admin", **fields)
            return text_response(name, 201)
        if request.method == "DELETE":
            if project is None:
                return error_page(404, f"Unable to find project {name}.")
            self.store.delete_project(project["id"])
            return Response(200)
        return method_not_allowed(request, "GET, HEAD, PUT, DELETE")

    # ---- subjects ---------------------------------------------------------

    def _subject_rows(self, scope: Scope) -> list[dict]:
        if scope.project:
            subjects = self.store.subjects_in(scope.project)
        else:
            subjects = [dict(s, shared=False) for s in self.store.all_subjects()]
        return [
            {
                "ID": s["id"],
                "project": s["project"],
                "label": s["label"],
                "insert_date": s["insert_date"],
                "insert_user": s["insert_user"],
                "group": s["grp"],
                "src": s["src"],
                "URI": f"/data/subjects/{s['id']}",
            }
            for s in subjects
        ]

    def _find_subject(self, scope: Scope, name: str) -> str | None:
        if scope.project:
            return self.store.subject_id(scope.project, name)
        return name if self.store.subject(name) else None

    def _subjects(self, request: Request, scope: Scope, rest: list[str]) -> Response:
        if not rest:
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed(request, "GET, HEAD")
            rows = search.expand_subjects(
                self.store, self._subject_rows(scope), request, known=self.server.child_searches
            )
            return table_response(request, rows, SUBJECT_COLUMNS)
        name = rest[0]
        subject_id = self._find_subject(scope, name)
        if len(rest) == 1:
            return self._subject_item(request, scope, name, subject_id)
        if (
            subject_id is None
            and scope.project
            and request.method == "PUT"
            and rest[1] == "experiments"
            and len(rest) == 3
        ):
            # Creating an experiment of an unknown subject creates the subject too.
            if not VALID_LABEL.match(name):
                return error_page(417, "Invalid character in subject label.")
            subject_id = self.store.add_subject(scope.project, name, insert_user=request.user or "admin")
        if subject_id is None:
            return error_page(404, f"Unable to find subject {name}.")
        subject = required(self.store.subject(subject_id), "Subject")
        kind = rest[1]
        if kind == "projects" and len(rest) == 3:
            return self._share(request, "subject", subject, scope, rest[2])
        if kind == "experiments":
            return self._experiments(request, Scope(scope.project or subject["project"], subject_id), rest[2:])
        if kind in ("resources", "files"):
            return self.files.route(request, [subject_parent(subject)], rest[1:])
        return error_page(404, "Unknown address.")

    def _subject_item(self, request: Request, scope: Scope, name: str, subject_id: str | None) -> Response:
        if request.method in ("GET", "HEAD"):
            if subject_id is None:
                return error_page(404, f"Unable to find subject {name}.")
            return _item_answer(request, subject_item(self.store, self.store.subject(subject_id)))
        if request.method == "PUT":
            if scope.project is None:
                if subject_id is None:
                    return error_page(404, f"Unable to find subject {name}.")
                return self._update_subject(request, None, subject_id)
            if subject_id is None:
                if not VALID_LABEL.match(name):
                    return error_page(417, "Invalid character in subject label.")
                new_id = self.store.add_subject(scope.project, name, insert_user=request.user or "admin")
                return text_response(new_id, 201)
            return self._update_subject(request, scope.project, subject_id)
        if request.method == "DELETE":
            if subject_id is None:
                return error_page(404, f"Unable to find subject {name}.")
            return self._delete_or_unshare(
                scope, self.store.subject(subject_id), self.store.delete_subject, self.store.unshare_subject
            )
        return method_not_allowed(request, "GET, HEAD, PUT, DELETE")

    @staticmethod
    def _delete_or_unshare(scope: Scope, row, delete, unshare) -> Response:
        """DELETE of a subject or experiment: through a project it is only shared into, the share goes."""
        if scope.project and scope.project != row["project"]:
            unshare(row["id"], scope.project)
        else:
            delete(row["id"])
        return Response(200)

    def _update_subject(self, request: Request, project: str | None, subject_id: str) -> Response:
        xsi_type = request.param("xsiType")
        if xsi_type and xsi_type != "xnat:subjectData":
            return error_page(422, f"Wrong data type for a subject: {xsi_type}")
        new_label = request.param("label")
        subject = required(self.store.subject(subject_id), "Subject")
        current = subject["label"]
        if project and project != subject["project"]:
            current = next(s["label"] for s in self.store.subject_shares(subject_id) if s["project"] == project)
        if new_label and new_label != current:
            if not VALID_LABEL.match(new_label):
                return error_page(417, "Invalid character in subject label.")
            blocked = self._open_workflow_message([e["id"] for e in self.store.experiments_of_subject(subject_id)])
            if blocked:
                return error_page(409, blocked)
            self.store.rename_subject(subject_id, new_label, project)
        return text_response(subject_id)

    # ---- experiments ------------------------------------------------------

    def _experiment_rows(self, request: Request, scope: Scope) -> tuple[list[dict], list[str]]:
        if scope.project and scope.subject_id:
            found = self.store.experiments_in(scope.project, scope.subject_id)
            columns = SUBJECT_EXPERIMENT_COLUMNS
        elif scope.project:
            found = self.store.experiments_in(scope.project)
            columns = PROJECT_EXPERIMENT_COLUMNS
        else:
            wanted = request.param("project")
            found = self.store.experiments_in(wanted) if wanted else self.store.all_experiments()
            columns = GLOBAL_EXPERIMENT_COLUMNS
        rows = []
        for e in found:
            rows.append(
                {
                    "ID": e["id"],
                    "label": e["label"],
                    "date": e["date"],
                    "time": e["time"],
                    "xsiType": e["xsi_type"],
                    "xnat:subjectassessordata/id": e["id"],
                    "insert_date": e["insert_date"],
                    "insert_user": e["insert_user"],
                    "project": e["project"],
                    "subject_ID": e["subject_id"],
                    "subject_label": e["subject_label"],
                    "UID": e["uid"],
                    "URI": f"/data/experiments/{e['id']}",
                }
            )
        return rows, columns

    def _find_experiment(self, scope: Scope, name: str) -> str | None:
        if scope.project:
            experiment_id = self.store.experiment_id(scope.project, name)
        else:
            experiment_id = name if self.store.experiment(name) else None
        experiment = self.store.experiment(experiment_id) if experiment_id and scope.subject_id else None
        if experiment is not None and experiment["subject_id"] != scope.subject_id:
            return None
        return experiment_id

    def _experiments(self, request: Request, scope: Scope, rest: list[str]) -> Response:
        if not rest:
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed(request, "GET, HEAD")
            rows, columns = self._experiment_rows(request, scope)
            rows = search.expand_experiments(self.store, rows, request, known=self.server.child_searches)
            title = "Matching experiments" if scope.project and not scope.subject_id else None
            # A project parameter already chose the rows (shares included); it is no filter.
            return table_response(request, rows, columns, title=title, ignore=("project",))
        name = rest[0]
        experiment_id = self._find_experiment(scope, name)
        if len(rest) == 1:
            return self._experiment_item(request, scope, name, experiment_id)
        if experiment_id is None:
            return error_page(404, f"Unable to find experiment {name}.")
        experiment = self.store.experiment(experiment_id)
        kind = rest[1]
        if kind == "projects" and len(rest) == 3:
            return self._share(request, "experiment", experiment, scope, rest[2])
        if kind == "scans":
            return self._scans(request, experiment, rest[2:])
        if kind in ("resources", "files"):
            scans = [scan_parent(experiment, s) for s in self.store.scans(experiment_id)]
            return self.files.route(request, [experiment_parent(experiment)], rest[1:], all_levels=scans)
        if kind in ("assessors", "reconstructions") and len(rest) == 2:
            return table_response(request, [], ["ID", "xsiType", "label", "URI"])
        return error_page(404, "Unknown address.")

    def _experiment_item(self, request: Request, scope: Scope, name: str, experiment_id: str | None) -> Response:
        if request.method in ("GET", "HEAD"):
            if experiment_id is None:
                return error_page(404, f"Unable to find experiment {name}.")
            return _item_answer(request, experiment_item(self.store, self.store.experiment(experiment_id)))
        if request.method == "PUT":
            if experiment_id is not None:
                return self._update_experiment(request, scope.project, experiment_id)
            if not scope.project or not scope.subject_id:
                return error_page(404, f"Unable to find experiment {name}.")
            xsi_type = request.param("xsiType")
            if not xsi_type:
                return error_page(417, "Need PUT Contents")
            if not VALID_LABEL.match(name):
                return error_page(417, "Invalid character in experiment label.")
            values = _typed_params(request, EXPERIMENT_FIELD_PARAMS)
            date = _iso_date(values.pop("date", ""))
            time_of_day = values.pop("time", "")
            new_id = self.store.add_experiment(
                scope.project,
                scope.subject_id,
                name,
                xsi_type=xsi_type,
                date=date,
                time_of_day=time_of_day,
                insert_user=request.user or "admin",
                fields=values,
            )
            return text_response(new_id, 201)
        if request.method == "DELETE":
            if experiment_id is None:
                return error_page(404, f"Unable to find experiment {name}.")
            return self._delete_or_unshare(
                scope, self.store.experiment(experiment_id), self.store.delete_experiment, self.store.unshare_experiment
            )
        return method_not_allowed(request, "GET, HEAD, PUT, DELETE")

    def _update_experiment(self, request: Request, project: str | None, experiment_id: str) -> Response:
        experiment = required(self.store.experiment(experiment_id), "Experiment")
        xsi_type = request.param("xsiType")
        if xsi_type and xsi_type != experiment["xsi_type"]:
            return error_page(422, f"Wrong data type for this experiment: {xsi_type}")
        current = experiment["label"]
        if project and project != experiment["project"]:
            current = next(s["label"] for s in self.store.experiment_shares(experiment_id) if s["project"] == project)
        new_label = request.param("label")
        if new_label and new_label != current:
            if not VALID_LABEL.match(new_label):
                return error_page(417, "Invalid character in experiment label.")
            blocked = self._open_workflow_message([experiment_id])
            if blocked:
                return error_page(409, blocked)
            self.store.rename_experiment(experiment_id, new_label, project)
        values = _typed_params(request, EXPERIMENT_FIELD_PARAMS)
        if "date" in values:
            values["date"] = _iso_date(values["date"])
        if values:
            self.store.update_experiment(experiment_id, **values)
        return text_response(experiment_id)

    def _open_workflow_message(self, experiment_ids: list[str]) -> str | None:
        open_ones = self.store.open_workflows(experiment_ids)
        if not open_ones:
            return None
        names = ", ".join(f"{w['pipeline_name']} ({w['status']})" for w in open_ones)
        return f"Specified session is being processed ({names})."

    # ---- shares -------------------------------------------------------------

    def _share(self, request: Request, kind: str, row, scope: Scope, destination: str) -> Response:
        if scope.project and scope.project != row["project"] and request.method == "PUT":
            return error_page(403, "Only the owning project can share this item.")
        if request.method == "PUT":
            label = request.param("label")
            if label is not None and not VALID_LABEL.match(label):
                return error_page(417, "Invalid character in label.")
            if kind == "subject":
                self.store.share_subject(row["id"], destination, label)
            else:
                self.store.share_experiment(row["id"], destination, label)
            return Response(200)
        if request.method == "DELETE":
            if kind == "subject":
                self.store.unshare_subject(row["id"], destination)
            else:
                self.store.unshare_experiment(row["id"], destination)
            return Response(200)
        return method_not_allowed(request, "PUT, DELETE")

    # ---- scans ---------------------------------------------------------------

    def _select_scans(self, experiment_id: str, selector: str) -> list:
        scans = self.store.scans(experiment_id)
        if selector in ("ALL", "*"):
            return scans
        wanted = [s for s in selector.split(",") if s]
        chosen = [s for s in scans if s["scan_id"] in wanted]
        if not chosen:
            chosen = [s for s in scans if s["type"] in wanted]
        return chosen

    def _scans(self, request: Request, experiment, rest: list[str]) -> Response:
        if not rest:
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed(request, "GET, HEAD")
            return table_response(
                request, self._scan_rows(experiment, self.store.scans(experiment["id"])), SCAN_COLUMNS
            )
        selector = rest[0]
        scans = self._select_scans(experiment["id"], selector)
        if len(rest) == 1:
            return self._scan_item(request, experiment, selector, scans)
        if not scans:
            return error_page(404, f"Unable to find scan {selector}.")
        if rest[1] in ("resources", "files"):
            parents: list[Parent] = [scan_parent(experiment, s) for s in scans]
            return self.files.route(request, parents, rest[1:])
        return error_page(404, "Unknown address.")

    def _scan_rows(self, experiment, scans) -> list[dict]:
        return [
            {
                "xsiType": s["xsi_type"],
                "xnat_imagescandata_id": s["pk"],
                "note": s["note"],
                "series_description": s["series_description"],
                "ID": s["scan_id"],
                "type": s["type"],
                "URI": f"/data/experiments/{experiment['id']}/scans/{s['scan_id']}",
                "quality": s["quality"],
                "frames": s["frames"],
                "UID": s["uid"],
            }
            for s in scans
        ]

    def _scan_item(self, request: Request, experiment, selector: str, scans: list) -> Response:
        if request.method in ("GET", "HEAD"):
            if not scans:
                return error_page(404, f"Unable to find scan {selector}.")
            if len(scans) > 1:
                return table_response(request, self._scan_rows(experiment, scans), SCAN_COLUMNS)
            shares = self.store.experiment_shares(experiment["id"])
            return _item_answer(request, scan_item(self.store, scans[0], experiment["insert_date"], shares))
        if request.method == "PUT":
            if selector in ("ALL", "*") or "," in selector or not VALID_LABEL.match(selector):
                return error_page(417, "Invalid scan ID.")
            values: dict[str, Any] = _typed_params(request, SCAN_FIELD_PARAMS)
            existing = self.store.scan(experiment["id"], selector)
            if existing is not None:
                self.store.update_scan(existing["pk"], **values)
                return Response(200)
            xsi_type = request.param("xsiType") or "xnat:mrScanData"
            frames = values.pop("frames", "0")
            self.store.add_scan(
                experiment["id"], selector, xsi_type=xsi_type, frames=int(frames) if frames.isdigit() else 0, **values
            )
            return Response(200)
        if request.method == "DELETE":
            if not scans:
                return error_page(404, f"Unable to find scan {selector}.")
            for scan in scans:
                self.store.delete_scan(scan["pk"])
            return Response(200)
        return method_not_allowed(request, "GET, HEAD, PUT, DELETE")
