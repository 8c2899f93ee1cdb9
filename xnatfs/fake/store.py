"""What the fake XNAT knows: SQLite for metadata, a folder tree for file bytes.

Layout of a data directory::

    DATA/xnat.db                    metadata (projects, subjects, experiments,
                                    scans, resources, files, shares, workflows)
    DATA/archive/<resource id>/...  file bytes, by numeric resource ID and the
                                    file's path inside the resource
    DATA/tmp/                       uploads being received

Bytes live under the resource ID rather than under labels so that renames
never move files. Files are always replaced by writing a new file and
renaming it into place, so hard-linked sample files are never changed
through another name.

Every method takes the store's lock; the HTTP handlers run in many threads
and tests change data "behind the server's back" from yet another thread.
Methods that tests are meant to call are the ones without a leading
underscore; they take labels and accession IDs as XNAT shows them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO, TypeVar

LEVELS = ("project", "subject", "experiment", "scan")
# Subjects and experiments are labelled and shared alike: their table, the
# table of their shares, and that table's column naming them.
_LABELLED = {
    "subject": ("subjects", "subject_shares", "subject_id"),
    "experiment": ("experiments", "experiment_shares", "experiment_id"),
}
OPEN_WORKFLOW_STATES = ("Queued", "In Progress", "Running", "Awaiting Action", "Paused")
COPY_BUFFER = 1024 * 1024

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, secondary_id TEXT NOT NULL, name TEXT NOT NULL,
    description TEXT NOT NULL, pi_firstname TEXT NOT NULL, pi_lastname TEXT NOT NULL,
    insert_date TEXT NOT NULL, insert_user TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, label TEXT NOT NULL,
    insert_date TEXT NOT NULL, insert_user TEXT NOT NULL,
    grp TEXT NOT NULL DEFAULT '', src TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS subjects_by_project ON subjects(project, label);
CREATE TABLE IF NOT EXISTS subject_shares (
    share_id INTEGER PRIMARY KEY, subject_id TEXT NOT NULL, project TEXT NOT NULL,
    label TEXT NOT NULL, UNIQUE(subject_id, project));
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, subject_id TEXT NOT NULL,
    label TEXT NOT NULL, xsi_type TEXT NOT NULL, date TEXT NOT NULL, time TEXT NOT NULL,
    insert_date TEXT NOT NULL, insert_user TEXT NOT NULL, uid TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS experiments_by_project ON experiments(project, label);
CREATE INDEX IF NOT EXISTS experiments_by_subject ON experiments(subject_id);
CREATE TABLE IF NOT EXISTS experiment_shares (
    share_id INTEGER PRIMARY KEY, experiment_id TEXT NOT NULL, project TEXT NOT NULL,
    label TEXT NOT NULL, UNIQUE(experiment_id, project));
CREATE TABLE IF NOT EXISTS scans (
    pk INTEGER PRIMARY KEY, experiment_id TEXT NOT NULL, scan_id TEXT NOT NULL,
    xsi_type TEXT NOT NULL, type TEXT NOT NULL, series_description TEXT NOT NULL,
    quality TEXT NOT NULL, note TEXT NOT NULL, uid TEXT NOT NULL, frames INTEGER NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}', UNIQUE(experiment_id, scan_id));
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY, level TEXT NOT NULL, owner TEXT NOT NULL, label TEXT NOT NULL,
    format TEXT NOT NULL, content TEXT NOT NULL, tags TEXT NOT NULL,
    insert_date TEXT NOT NULL, UNIQUE(level, owner, label));
CREATE TABLE IF NOT EXISTS files (
    resource_id INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    digest TEXT NOT NULL, format TEXT NOT NULL, content TEXT NOT NULL, tags TEXT NOT NULL,
    mtime REAL NOT NULL, PRIMARY KEY(resource_id, path));
CREATE TABLE IF NOT EXISTS workflows (
    id INTEGER PRIMARY KEY, experiment_id TEXT NOT NULL, project TEXT NOT NULL,
    pipeline_name TEXT NOT NULL, status TEXT NOT NULL, launch_time TEXT NOT NULL,
    data_type TEXT NOT NULL);
"""


class StoreError(Exception):
    """A store operation that cannot be done; ``status`` is the HTTP answer it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def required(found: T | None, what: str) -> T:
    """A row or ID the caller has just written or looked up; a 404 if it is gone after all."""
    if found is None:
        raise StoreError(f"{what} not found.", 404)
    return found


def _inserted_id(cursor: sqlite3.Cursor) -> int:
    """The row ID SQLite gave the row an INSERT just added."""
    if cursor.lastrowid is None:
        raise StoreError("the row was not inserted", 500)
    return cursor.lastrowid


def now_stamp() -> str:
    """XNAT's insert_date form: ``2018-05-14 15:17:57.815``."""
    moment = datetime.now()
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


_UNSTORABLE_IN_PATH = re.compile(r"[\x00-\x1f\\]")


def clean_relpath(relpath: str) -> str:
    """Return ``relpath`` as a safe path inside a resource, or raise StoreError.

    Paths are ``/``-separated; ``.`` and ``..`` segments are refused so that
    nothing can point outside its resource, and so are the characters XNAT
    cannot keep in a file path (docs/LAYOUT.md, "Names XNAT can store"):
    backslashes and control characters (C0).
    """
    parts = [p for p in relpath.split("/") if p != ""]
    if not parts or any(p in (".", "..") or _UNSTORABLE_IN_PATH.search(p) for p in parts):
        raise StoreError(f"Invalid file path: {relpath!r}", 400)
    return "/".join(parts)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(COPY_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """Metadata and file bytes of one fake XNAT, kept under ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.archive_dir = self.data_dir / "archive"
        self.tmp_dir = self.data_dir / "tmp"
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._batch_depth = 0
        self._db = sqlite3.connect(self.data_dir / "xnat.db", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self.lock:
            self._db.close()

    # ---- plumbing -------------------------------------------------------

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self.lock:
            return self._db.execute(sql, args).fetchone()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group many changes into one transaction (used when filling samples)."""
        with self.lock:
            outer = self._batch_depth == 0
            if outer:
                self._db.execute("BEGIN")
            self._batch_depth += 1
            try:
                yield
            except BaseException:
                self._batch_depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._batch_depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def _next(self, counter: str) -> int:
        with self.batch():
            row = self._one("SELECT value FROM counters WHERE name=?", (counter,))
            value = (row["value"] if row else 0) + 1
            self._db.execute("INSERT OR REPLACE INTO counters(name, value) VALUES (?, ?)", (counter, value))
            return value

    def is_empty(self) -> bool:
        return self._one("SELECT 1 FROM projects LIMIT 1") is None

    # ---- projects -------------------------------------------------------

    def projects(self) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM projects ORDER BY id")

    def project(self, project: str) -> sqlite3.Row | None:
        return self._one(
            "SELECT * FROM projects WHERE id=? OR secondary_id=? ORDER BY id=? DESC LIMIT 1",
            (project, project, project),
        )

    def add_project(
        self,
        project: str,
        *,
        name: str = "",
        description: str = "",
        secondary_id: str = "",
        pi_firstname: str = "",
        pi_lastname: str = "",
        insert_user: str = "admin",
    ) -> str:
        """Create a project (ID ``project``); existing projects are left as they are."""
        with self.batch():
            if self.project(project) is None:
                self._db.execute(
                    "INSERT INTO projects VALUES (?,?,?,?,?,?,?,?)",
                    (
                        project,
                        secondary_id or project,
                        name or project,
                        description,
                        pi_firstname,
                        pi_lastname,
                        now_stamp(),
                        insert_user,
                    ),
                )
        return project

    def update_project(self, project: str, **fields: str) -> None:
        allowed = {"name", "description", "secondary_id", "pi_firstname", "pi_lastname"}
        with self.batch():
            for key, value in fields.items():
                if key in allowed:
                    self._db.execute(f"UPDATE projects SET {key}=? WHERE id=?", (value, project))

    def delete_project(self, project: str) -> None:
        """Delete a project with everything it owns, and every share into it."""
        with self.batch():
            for subject in self._q("SELECT id FROM subjects WHERE project=?", (project,)):
                self.delete_subject(subject["id"])
            for experiment in self._q("SELECT id FROM experiments WHERE project=?", (project,)):
                self.delete_experiment(experiment["id"])
            self._db.execute("DELETE FROM subject_shares WHERE project=?", (project,))
            self._db.execute("DELETE FROM experiment_shares WHERE project=?", (project,))
            self._delete_resources("project", project)
            self._db.execute("DELETE FROM projects WHERE id=?", (project,))

    # ---- labels and shares (subjects and experiments alike) ------------------

    def _id_in(self, kind: str, project: str, label_or_id: str) -> str | None:
        # Labels in the project (owned, then shared) win over accession IDs, as
        # in XNAT; an accession ID is accepted only if the item is in the project.
        table, shares, key = _LABELLED[kind]
        row = self._one(f"SELECT id FROM {table} WHERE project=? AND label=?", (project, label_or_id)) or self._one(
            f"SELECT {key} AS id FROM {shares} WHERE project=? AND label=?", (project, label_or_id)
        )
        if row is None:
            row = self._one(f"SELECT id FROM {table} WHERE id=? AND project=?", (label_or_id, project)) or self._one(
                f"SELECT {key} AS id FROM {shares} WHERE {key}=? AND project=?", (label_or_id, project)
            )
        return row["id"] if row else None

    def _label_taken(self, kind: str, project: str, label: str) -> bool:
        table, shares, _key = _LABELLED[kind]
        return (
            self._one(f"SELECT 1 FROM {table} WHERE project=? AND label=?", (project, label))
            or self._one(f"SELECT 1 FROM {shares} WHERE project=? AND label=?", (project, label))
        ) is not None

    def _item(self, kind: str, item_id: str) -> sqlite3.Row:
        row = self._one(f"SELECT * FROM {_LABELLED[kind][0]} WHERE id=?", (item_id,))
        if row is None:
            raise StoreError(f"{kind.capitalize()} not found.", 404)
        return row

    def _relabel(self, kind: str, item_id: str, new_label: str, project: str | None) -> None:
        table, shares, key = _LABELLED[kind]
        with self.batch():
            item = self._item(kind, item_id)
            where = project or item["project"]
            if self._label_taken(kind, where, new_label):
                raise StoreError("Specified label is already in use.", 409)
            if where == item["project"]:
                self._db.execute(f"UPDATE {table} SET label=? WHERE id=?", (new_label, item_id))
            else:
                self._db.execute(
                    f"UPDATE {shares} SET label=? WHERE {key}=? AND project=?", (new_label, item_id, where)
                )

    def _share(self, kind: str, item_id: str, project: str, label: str | None) -> None:
        _table, shares, key = _LABELLED[kind]
        with self.batch():
            item = self._item(kind, item_id)
            if self.project(project) is None:
                raise StoreError(f"Project {project} not found.", 404)
            label = label or item["label"]
            if project == item["project"] or self._one(
                f"SELECT 1 FROM {shares} WHERE {key}=? AND project=?", (item_id, project)
            ):
                raise StoreError("Already assigned to project " + project, 409)
            if self._label_taken(kind, project, label):
                raise StoreError("Specified label is already in use.", 409)
            self._db.execute(f"INSERT INTO {shares}({key}, project, label) VALUES (?,?,?)", (item_id, project, label))

    def _unshare(self, kind: str, item_id: str, project: str) -> None:
        _table, shares, key = _LABELLED[kind]
        with self.batch():
            self._db.execute(f"DELETE FROM {shares} WHERE {key}=? AND project=?", (item_id, project))

    # ---- subjects -------------------------------------------------------

    def subject(self, subject_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM subjects WHERE id=?", (subject_id,))

    def subject_id(self, project: str, label_or_id: str) -> str | None:
        """The accession ID of the subject called ``label_or_id`` (label or ID) in ``project``."""
        return self._id_in("subject", project, label_or_id)

    def subjects_in(self, project: str) -> list[dict]:
        """Subjects listed under ``project``: owned ones and shared-in ones (with their share label)."""
        rows = [
            dict(r, shared=False) for r in self._q("SELECT * FROM subjects WHERE project=? ORDER BY label", (project,))
        ]
        rows += [
            dict(r, shared=True)
            for r in self._q(
                "SELECT s.id, s.project, sh.label AS label, s.insert_date, s.insert_user, s.grp, s.src "
                "FROM subject_shares sh JOIN subjects s ON s.id = sh.subject_id "
                "WHERE sh.project=? ORDER BY sh.label",
                (project,),
            )
        ]
        return rows

    def all_subjects(self) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM subjects ORDER BY id")

    def subject_shares(self, subject_id: str) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM subject_shares WHERE subject_id=? ORDER BY share_id", (subject_id,))

    def add_subject(
        self,
        project: str,
        label: str,
        *,
        insert_date: str | None = None,
        insert_user: str = "admin",
        group: str = "",
        src: str = "",
    ) -> str:
        """Create subject ``label`` in ``project`` (or return the existing one's accession ID)."""
        with self.batch():
            existing = self.subject_id(project, label)
            if existing:
                return existing
            if self.project(project) is None:
                raise StoreError(f"Project {project} not found.", 404)
            subject_id = f"XNAT_S{self._next('subject'):05d}"
            self._db.execute(
                "INSERT INTO subjects VALUES (?,?,?,?,?,?,?)",
                (subject_id, project, label, insert_date or now_stamp(), insert_user, group, src),
            )
            return subject_id

    def rename_subject(self, subject_id: str, new_label: str, project: str | None = None) -> None:
        """Give the subject a new label (in its own project, or in ``project`` if shared there)."""
        self._relabel("subject", subject_id, new_label, project)

    def share_subject(self, subject_id: str, project: str, label: str | None = None) -> None:
        self._share("subject", subject_id, project, label)

    def unshare_subject(self, subject_id: str, project: str) -> None:
        self._unshare("subject", subject_id, project)

    def delete_subject(self, subject_id: str) -> None:
        """Delete a subject, its experiments, resources and shares."""
        with self.batch():
            for experiment in self._q("SELECT id FROM experiments WHERE subject_id=?", (subject_id,)):
                self.delete_experiment(experiment["id"])
            self._delete_resources("subject", subject_id)
            self._db.execute("DELETE FROM subject_shares WHERE subject_id=?", (subject_id,))
            self._db.execute("DELETE FROM subjects WHERE id=?", (subject_id,))

    # ---- experiments ----------------------------------------------------

    def experiment(self, experiment_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM experiments WHERE id=?", (experiment_id,))

    def experiment_id(self, project: str, label_or_id: str) -> str | None:
        """The accession ID of the experiment called ``label_or_id`` (label or ID) in ``project``."""
        return self._id_in("experiment", project, label_or_id)

    def experiments_in(self, project: str, subject_id: str | None = None) -> list[dict]:
        """Experiments listed under ``project`` (owned and shared-in), optionally of one subject.

        Each row carries ``label`` as seen in ``project``, ``subject_label``
        as seen in ``project`` where the subject is visible there, and ``shared``.
        """
        args: tuple = (project,)
        subject_clause = ""
        if subject_id is not None:
            subject_clause = " AND e.subject_id=?"
            args = (project, subject_id)
        owned = self._q(
            "SELECT e.*, s.label AS subject_label FROM experiments e "
            "JOIN subjects s ON s.id = e.subject_id WHERE e.project=?" + subject_clause + " ORDER BY e.label",
            args,
        )
        shared = self._q(
            "SELECT e.*, sh.label AS share_label, "
            "COALESCE(ss.label, s.label) AS subject_label FROM experiment_shares sh "
            "JOIN experiments e ON e.id = sh.experiment_id "
            "JOIN subjects s ON s.id = e.subject_id "
            "LEFT JOIN subject_shares ss ON ss.subject_id = e.subject_id AND ss.project = sh.project "
            "WHERE sh.project=?" + subject_clause + " ORDER BY sh.label",
            args,
        )
        rows = [dict(r, shared=False) for r in owned]
        for row in shared:
            item = dict(row, shared=True)
            item["label"] = item.pop("share_label")
            rows.append(item)
        return rows

    def all_experiments(self) -> list[dict]:
        return [
            dict(r, shared=False)
            for r in self._q(
                "SELECT e.*, s.label AS subject_label FROM experiments e "
                "JOIN subjects s ON s.id = e.subject_id ORDER BY e.id"
            )
        ]

    def experiments_of_subject(self, subject_id: str) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM experiments WHERE subject_id=? ORDER BY label", (subject_id,))

    def experiment_shares(self, experiment_id: str) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM experiment_shares WHERE experiment_id=? ORDER BY share_id", (experiment_id,))

    def add_experiment(
        self,
        project: str,
        subject: str,
        label: str,
        *,
        xsi_type: str = "xnat:mrSessionData",
        date: str = "",
        time_of_day: str = "",
        uid: str = "",
        insert_date: str | None = None,
        insert_user: str = "admin",
        fields: dict | None = None,
    ) -> str:
        """Create experiment ``label`` of subject ``subject`` (label or ID) in ``project``.

        The subject is created if missing. An existing experiment of that
        label is returned unchanged. Returns the accession ID.
        """
        with self.batch():
            existing = self.experiment_id(project, label)
            if existing:
                return existing
            subject_id = self.subject_id(project, subject) or self.add_subject(project, subject)
            experiment_id = f"XNAT_E{self._next('experiment'):05d}"
            self._db.execute(
                "INSERT INTO experiments VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    experiment_id,
                    project,
                    subject_id,
                    label,
                    xsi_type,
                    date,
                    time_of_day,
                    insert_date or now_stamp(),
                    insert_user,
                    uid,
                    json.dumps(fields or {}),
                ),
            )
            return experiment_id

    def update_experiment(self, experiment_id: str, **values: str) -> None:
        """Set columns (``date``, ``time``, ``uid``) or extra data fields of an experiment."""
        with self.batch():
            row = self.experiment(experiment_id)
            if row is None:
                raise StoreError("Experiment not found.", 404)
            extra = json.loads(row["fields"])
            for key, value in values.items():
                if key in ("date", "time", "uid"):
                    self._db.execute(f"UPDATE experiments SET {key}=? WHERE id=?", (value, experiment_id))
                else:
                    extra[key] = value
            self._db.execute("UPDATE experiments SET fields=? WHERE id=?", (json.dumps(extra), experiment_id))

    def rename_experiment(self, experiment_id: str, new_label: str, project: str | None = None) -> None:
        """Give the experiment a new label (in its own project, or in ``project`` if shared there)."""
        self._relabel("experiment", experiment_id, new_label, project)

    def share_experiment(self, experiment_id: str, project: str, label: str | None = None) -> None:
        self._share("experiment", experiment_id, project, label)

    def unshare_experiment(self, experiment_id: str, project: str) -> None:
        self._unshare("experiment", experiment_id, project)

    def delete_experiment(self, experiment_id: str) -> None:
        with self.batch():
            for scan in self.scans(experiment_id):
                self._delete_resources("scan", str(scan["pk"]))
            self._db.execute("DELETE FROM scans WHERE experiment_id=?", (experiment_id,))
            self._delete_resources("experiment", experiment_id)
            self._db.execute("DELETE FROM experiment_shares WHERE experiment_id=?", (experiment_id,))
            self._db.execute("DELETE FROM workflows WHERE experiment_id=?", (experiment_id,))
            self._db.execute("DELETE FROM experiments WHERE id=?", (experiment_id,))

    # ---- scans ----------------------------------------------------------

    def scans(self, experiment_id: str) -> list[sqlite3.Row]:
        rows = self._q("SELECT * FROM scans WHERE experiment_id=?", (experiment_id,))
        return sorted(rows, key=lambda r: scan_sort_key(r["scan_id"]))

    def scan(self, experiment_id: str, scan_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM scans WHERE experiment_id=? AND scan_id=?", (experiment_id, scan_id))

    def scan_by_pk(self, pk: int) -> sqlite3.Row | None:
        return self._one("SELECT * FROM scans WHERE pk=?", (pk,))

    def add_scan(
        self,
        experiment_id: str,
        scan_id: str,
        *,
        type: str = "",
        series_description: str = "",
        quality: str = "usable",
        xsi_type: str = "xnat:mrScanData",
        note: str = "",
        uid: str = "",
        frames: int = 0,
        fields: dict | None = None,
    ) -> int:
        """Create scan ``scan_id`` in an experiment (or update the fields given); returns its key."""
        with self.batch():
            if self.experiment(experiment_id) is None:
                raise StoreError("Experiment not found.", 404)
            existing = self.scan(experiment_id, scan_id)
            if existing is not None:
                self.update_scan(
                    existing["pk"],
                    type=type or existing["type"],
                    series_description=series_description or existing["series_description"],
                    frames=frames or existing["frames"],
                    uid=uid or existing["uid"],
                )
                return existing["pk"]
            cursor = self._db.execute(
                "INSERT INTO scans(experiment_id, scan_id, xsi_type, type, series_description, "
                "quality, note, uid, frames, fields) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    experiment_id,
                    scan_id,
                    xsi_type,
                    type,
                    series_description,
                    quality,
                    note,
                    uid,
                    frames,
                    json.dumps(fields or {}),
                ),
            )
            return _inserted_id(cursor)

    def update_scan(self, pk: int, **values) -> None:
        allowed = {"type", "series_description", "quality", "note", "uid", "frames", "xsi_type"}
        with self.batch():
            for key, value in values.items():
                if key in allowed:
                    self._db.execute(f"UPDATE scans SET {key}=? WHERE pk=?", (value, pk))

    def delete_scan(self, pk: int) -> None:
        with self.batch():
            self._delete_resources("scan", str(pk))
            self._db.execute("DELETE FROM scans WHERE pk=?", (pk,))

    # ---- resources ------------------------------------------------------

    def resources(self, level: str, owner: str) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM resources WHERE level=? AND owner=? ORDER BY id", (level, str(owner)))

    def resource(self, resource_id: int) -> sqlite3.Row | None:
        return self._one("SELECT * FROM resources WHERE id=?", (resource_id,))

    def find_resource(self, level: str, owner: str, label_or_id: str) -> sqlite3.Row | None:
        """A resource of one parent by label, else by numeric ID."""
        row = self._one(
            "SELECT * FROM resources WHERE level=? AND owner=? AND label=?", (level, str(owner), label_or_id)
        )
        if row is None and label_or_id.isdigit():
            row = self._one(
                "SELECT * FROM resources WHERE level=? AND owner=? AND id=?", (level, str(owner), int(label_or_id))
            )
        return row

    def add_resource(
        self, level: str, owner: str, label: str, *, format: str = "", content: str = "", tags: str = ""
    ) -> int:
        """Create a resource folder under a parent; raises StoreError(409) if it exists."""
        if level not in LEVELS:
            raise ValueError(f"unknown resource level {level!r}")
        with self.batch():
            if self.find_resource(level, owner, label) is not None:
                raise StoreError("Specified resource already exists.", 409)
            cursor = self._db.execute(
                "INSERT INTO resources(level, owner, label, format, content, tags, insert_date) VALUES (?,?,?,?,?,?,?)",
                (level, str(owner), label, format, content, tags, now_stamp()),
            )
            return _inserted_id(cursor)

    def ensure_resource(self, level: str, owner: str, label: str, **attrs: str) -> int:
        with self.batch():
            row = self.find_resource(level, owner, label)
            return row["id"] if row else self.add_resource(level, owner, label, **attrs)

    def delete_resource(self, resource_id: int) -> None:
        with self.batch():
            self._db.execute("DELETE FROM files WHERE resource_id=?", (resource_id,))
            self._db.execute("DELETE FROM resources WHERE id=?", (resource_id,))
        shutil.rmtree(self.archive_dir / str(resource_id), ignore_errors=True)

    def _delete_resources(self, level: str, owner: str) -> None:
        for row in self.resources(level, owner):
            self.delete_resource(row["id"])

    def resource_totals(self, resource_id: int) -> tuple[int, int]:
        row = self._q(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS total FROM files WHERE resource_id=?", (resource_id,)
        )[0]
        return row["n"], row["total"]

    # ---- files ----------------------------------------------------------

    def files(self, resource_id: int) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM files WHERE resource_id=? ORDER BY path", (resource_id,))

    def file(self, resource_id: int, relpath: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM files WHERE resource_id=? AND path=?", (resource_id, relpath))

    def open_file(self, resource_id: int, relpath: str) -> tuple[sqlite3.Row, BinaryIO] | None:
        """A file's record and its bytes opened for reading, taken together so
        that both are of one version (a replaced file is a new inode, so the
        open one never changes)."""
        with self.lock:
            row = self.file(resource_id, relpath)
            if row is None:
                return None
            try:
                return row, open(self.file_path(resource_id, relpath), "rb")
            except FileNotFoundError:
                return None

    def file_path(self, resource_id: int, relpath: str) -> Path:
        """Where the bytes of a file live on disk."""
        return self.archive_dir / str(resource_id) / clean_relpath(relpath)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Callable[[], Path]]:
        """Hands out new paths in the temp folder; whatever is still there at
        the end (a failed or refused upload) is removed."""
        made: list[Path] = []

        def new_path() -> Path:
            made.append(self.tmp_dir / f"{uuid.uuid4().hex}.part")
            return made[-1]

        try:
            yield new_path
        finally:
            for path in made:
                path.unlink(missing_ok=True)

    def store_file(
        self,
        resource_id: int,
        relpath: str,
        source: bytes | str | os.PathLike | IO[bytes],
        *,
        format: str | None = None,
        content: str | None = None,
        tags: str = "",
        move: bool = False,
        digest: str | None = None,
        mtime: float | None = None,
    ) -> sqlite3.Row:
        """Put (or replace) one file in a resource and record its size and MD5.

        ``source`` is the bytes themselves, a readable binary file object, or
        the path of a file to copy (``move=True`` renames it into place instead;
        pass its ``digest`` when already known).
        """
        relpath = clean_relpath(relpath)
        if self.resource(resource_id) is None:
            raise StoreError("Resource not found.", 404)
        dest = self.file_path(resource_id, relpath)
        with self.staging() as new_path:
            if isinstance(source, (str, os.PathLike)) and move:
                staged = Path(source)
                digest = digest or file_md5(staged)
            else:
                staged = new_path()
                digest = _write_with_md5(source, staged)
            size = staged.stat().st_size
            with self.lock:
                self._make_parent_dirs(dest, resource_id)
                os.replace(staged, dest)
                if mtime is not None:
                    os.utime(dest, (mtime, mtime))
                self._record_file(
                    resource_id,
                    relpath,
                    size,
                    digest,
                    format,
                    content,
                    tags,
                    mtime if mtime is not None else time.time(),
                )
                return required(self.file(resource_id, relpath), "File")

    def link_file(
        self,
        resource_id: int,
        relpath: str,
        existing: Path,
        *,
        size: int,
        digest: str,
        format: str = "",
        content: str = "",
        mtime: float | None = None,
    ) -> None:
        """Record a file whose bytes are a hard link to ``existing`` (same size and digest)."""
        relpath = clean_relpath(relpath)
        dest = self.file_path(resource_id, relpath)
        with self.lock:
            self._make_parent_dirs(dest, resource_id)
            if dest.exists():
                dest.unlink()
            os.link(existing, dest)
            self._record_file(
                resource_id,
                relpath,
                size,
                digest,
                format,
                content,
                "",
                mtime if mtime is not None else existing.stat().st_mtime,
            )

    def _make_parent_dirs(self, dest: Path, resource_id: int) -> None:
        root = self.archive_dir / str(resource_id)
        if any(p.is_file() for p in _parents_between(dest, root)):
            raise StoreError("A file is in the way of that path.", 409)
        if dest.is_dir():
            raise StoreError("A folder is in the way of that path.", 409)
        dest.parent.mkdir(parents=True, exist_ok=True)

    def _record_file(self, resource_id, relpath, size, digest, format, content, tags, mtime) -> None:
        with self.batch():
            old = self.file(resource_id, relpath)
            if format is None:
                format = old["format"] if old else guess_format(relpath)
            if content is None:
                content = old["content"] if old else ""
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?)",
                (resource_id, relpath, size, digest, format, content, tags, mtime),
            )

    def remove_file(self, resource_id: int, relpath: str) -> bool:
        """Delete one file (or every file under a folder path); False if nothing matched."""
        relpath = clean_relpath(relpath)
        with self.batch():
            rows = self._q(
                "SELECT path FROM files WHERE resource_id=? AND (path=? OR path LIKE ? ESCAPE '\\')",
                (resource_id, relpath, _like_prefix(relpath)),
            )
            for row in rows:
                self._db.execute("DELETE FROM files WHERE resource_id=? AND path=?", (resource_id, row["path"]))
                with contextlib.suppress(FileNotFoundError):
                    self.file_path(resource_id, row["path"]).unlink()
            return bool(rows)

    # ---- convenience for tests: files by experiment/scan/project/subject ----

    def put_file(
        self,
        experiment_id: str,
        resource_label: str,
        relpath: str,
        data: bytes | str | os.PathLike | BinaryIO,
        scan_id: str | None = None,
        **attrs,
    ) -> sqlite3.Row:
        """Add or replace a file in a session resource, or a scan resource with ``scan_id``.

        The resource is created when missing. Returns the file's record.
        """
        level, owner = self._experiment_level(experiment_id, scan_id)
        kind = {"format": "DICOM", "content": "RAW"} if resource_label == "DICOM" else {}
        resource_id = self.ensure_resource(level, owner, resource_label, **kind)
        return self.store_file(resource_id, relpath, data, **attrs)

    def delete_file(self, experiment_id: str, resource_label: str, relpath: str, scan_id: str | None = None) -> bool:
        level, owner = self._experiment_level(experiment_id, scan_id)
        row = self.find_resource(level, owner, resource_label)
        return row is not None and self.remove_file(row["id"], relpath)

    def put_project_file(
        self, project: str, resource_label: str, relpath: str, data: bytes | str | os.PathLike | BinaryIO, **attrs
    ) -> sqlite3.Row:
        resource_id = self.ensure_resource("project", project, resource_label)
        return self.store_file(resource_id, relpath, data, **attrs)

    def put_subject_file(
        self, subject_id: str, resource_label: str, relpath: str, data: bytes | str | os.PathLike | BinaryIO, **attrs
    ) -> sqlite3.Row:
        resource_id = self.ensure_resource("subject", subject_id, resource_label)
        return self.store_file(resource_id, relpath, data, **attrs)

    def _experiment_level(self, experiment_id: str, scan_id: str | None) -> tuple[str, str]:
        if self.experiment(experiment_id) is None:
            raise StoreError(f"Experiment {experiment_id} not found.", 404)
        if scan_id is None:
            return "experiment", experiment_id
        scan = self.scan(experiment_id, str(scan_id))
        if scan is None:
            raise StoreError(f"Scan {scan_id} not found.", 404)
        return "scan", str(scan["pk"])

    # ---- workflows ------------------------------------------------------

    def add_workflow(
        self, experiment_id: str, pipeline_name: str = "xnat_tools/AutoRun.xml", status: str = "Queued"
    ) -> int:
        experiment = self.experiment(experiment_id)
        if experiment is None:
            raise StoreError("Experiment not found.", 404)
        with self.batch():
            cursor = self._db.execute(
                "INSERT INTO workflows(experiment_id, project, pipeline_name, status, launch_time, "
                "data_type) VALUES (?,?,?,?,?,?)",
                (experiment_id, experiment["project"], pipeline_name, status, now_stamp(), experiment["xsi_type"]),
            )
            return _inserted_id(cursor)

    def workflow(self, workflow_id: int) -> sqlite3.Row | None:
        return self._one("SELECT * FROM workflows WHERE id=?", (workflow_id,))

    def workflows(self) -> list[sqlite3.Row]:
        return self._q("SELECT * FROM workflows ORDER BY id")

    def set_workflow_status(self, workflow_id: int, status: str) -> None:
        with self.batch():
            self._db.execute("UPDATE workflows SET status=? WHERE id=?", (status, workflow_id))

    def open_workflows(self, experiment_ids: list[str]) -> list[sqlite3.Row]:
        if not experiment_ids:
            return []
        marks = ",".join("?" * len(experiment_ids))
        states = ",".join("?" * len(OPEN_WORKFLOW_STATES))
        return self._q(
            f"SELECT * FROM workflows WHERE experiment_id IN ({marks}) AND status IN ({states})",
            (*experiment_ids, *OPEN_WORKFLOW_STATES),
        )


def scan_sort_key(scan_id: str) -> tuple:
    """Numeric scan IDs in numeric order, then the rest alphabetically."""
    head = scan_id.split("-", 1)[0]
    return (0, int(head), scan_id) if head.isdigit() else (1, 0, scan_id)


def guess_format(relpath: str) -> str:
    lower = relpath.lower()
    for ending, name in (
        (".dcm", "DICOM"),
        (".ima", "DICOM"),
        (".nii.gz", "NIFTI"),
        (".nii", "NIFTI"),
        (".png", "PNG"),
        (".gif", "GIF"),
        (".jpg", "JPEG"),
        (".pdf", "PDF"),
        (".csv", "CSV"),
        (".txt", "TXT"),
        (".json", "JSON"),
        (".zip", "ZIP"),
    ):
        if lower.endswith(ending):
            return name
    return ""


def _like_prefix(relpath: str) -> str:
    escaped = relpath.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def _parents_between(path: Path, root: Path) -> list[Path]:
    parents = []
    for parent in path.parents:
        if parent == root:
            break
        parents.append(parent)
    return parents


def _write_with_md5(source: bytes | str | os.PathLike | IO[bytes], target: Path) -> str:
    digest = hashlib.md5()
    with open(target, "wb") as out:
        if isinstance(source, (bytes, bytearray, memoryview)):
            digest.update(source)
            out.write(source)
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                while chunk := handle.read(COPY_BUFFER):
                    digest.update(chunk)
                    out.write(chunk)
        else:
            while chunk := source.read(COPY_BUFFER):
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()
