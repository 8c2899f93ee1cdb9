"""Resources and files at every level: listings, downloads, archives, uploads, deletes.

A request reaches here with the parent(s) it names already resolved: a
project, a subject, an experiment, or one or more scans (``scans/1,2``,
``scans/ALL``). The rest of the path is ``resources[/R[/files[/path]]]``
or ``files``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mimetypes
import posixpath
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from .archives import Entry, is_archive_name, unpack, write_tar, write_zip
from .http import (
    BadRequest,
    Request,
    Response,
    StreamBody,
    error_page,
    file_response,
    json_response,
    method_not_allowed,
)
from .items import resource_item
from .store import Store, StoreError, clean_relpath
from .tables import table_response

RESOURCE_COLUMNS = [
    "xnat_abstractresource_id",
    "label",
    "element_name",
    "category",
    "cat_id",
    "cat_desc",
    "format",
    "content",
    "tags",
    "file_count",
    "file_size",
]
FILE_COLUMNS = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content", "cat_ID", "digest"]
ARCHIVE_FORMATS = {"zip", "tar", "tar.gz", "tgz"}
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Parent:
    """Something that holds resources.

    ``uri`` is its canonical address (accession IDs, so renames do not move
    it); ``zip_dir`` is its folder in default-structure archives and
    ``zip_improved`` in ``structure=improved`` ones.
    """

    level: str
    owner: str
    uri: str
    zip_dir: str
    zip_improved: str


def project_parent(project: str) -> Parent:
    return Parent("project", project, f"/data/projects/{project}", project, project)


def subject_parent(subject) -> Parent:
    return Parent("subject", subject["id"], f"/data/subjects/{subject['id']}", subject["label"], subject["label"])


def experiment_parent(experiment) -> Parent:
    return Parent("experiment", experiment["id"], f"/data/experiments/{experiment['id']}", experiment["label"], "")


def scan_parent(experiment, scan) -> Parent:
    folder = f"{scan['scan_id']}-{scan['type'].replace('/', '_')}" if scan["type"] else scan["scan_id"]
    improved = f"{scan['scan_id']}_{UNSAFE_NAME.sub('_', scan['type'])}" if scan["type"] else scan["scan_id"]
    return Parent(
        "scan",
        str(scan["pk"]),
        f"/data/experiments/{experiment['id']}/scans/{quote(scan['scan_id'])}",
        f"{experiment['label']}/scans/{folder}",
        f"scans/{improved}",
    )


class FilesApi:
    def __init__(self, server):
        self.server = server
        self.store: Store = server.store

    def route(
        self, request: Request, parents: list[Parent], rest: list[str], *, all_levels: list[Parent] | None = None
    ) -> Response:
        """Answer ``rest`` (``files`` or ``resources/...``) below ``parents``.

        ``all_levels`` are the extra parents whose files ``files?all=true``
        adds (the scans of an experiment).
        """
        if rest[0] == "files":
            if len(rest) > 1:
                return error_page(404, "Unable to find file.")
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed(request, "GET, HEAD")
            holders = list(parents)
            if all_levels and request.flag("all"):
                holders += all_levels
            pairs = [(p, r) for p in holders for r in self.store.resources(p.level, p.owner)]
            return self._files_answer(request, pairs)
        if len(rest) == 1:
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed(request, "GET, HEAD")
            return self._list_resources(request, parents)
        selector = rest[1]
        if len(rest) == 2:
            return self._resource(request, parents, selector)
        if rest[2] != "files":
            return error_page(404, "Unknown resource address.")
        if len(rest) == 3:
            if request.method in ("GET", "HEAD"):
                return self._files_answer(request, self._select(parents, selector))
            if request.method in ("PUT", "POST"):
                return self._upload(request, parents, selector, None)
            return method_not_allowed(request, "GET, HEAD, PUT, POST")
        relpath = "/".join(rest[3:])
        if request.method in ("GET", "HEAD"):
            return self._download(request, parents, selector, relpath)
        if request.method in ("PUT", "POST"):
            return self._upload(request, parents, selector, relpath)
        if request.method == "DELETE":
            chosen = self._select(parents, selector)
            if not chosen:
                return error_page(404, "Unable to find resource.")
            # Like XNAT, a path that matches nothing is no error.
            for _parent, resource in chosen:
                self.store.remove_file(resource["id"], relpath)
            return Response(200)
        return method_not_allowed(request, "GET, HEAD, PUT, POST, DELETE")

    # ---- resources --------------------------------------------------------

    def _select(self, parents: list[Parent], selector: str) -> list[tuple[Parent, sqlite3.Row]]:
        chosen = []
        for parent in parents:
            for name in selector.split(","):
                row = self.store.find_resource(parent.level, parent.owner, name)
                if row is not None:
                    chosen.append((parent, row))
        return chosen

    def _list_resources(self, request: Request, parents: list[Parent]) -> Response:
        rows = []
        for parent in parents:
            for resource in self.store.resources(parent.level, parent.owner):
                count, total = self.store.resource_totals(resource["id"])
                rows.append(
                    {
                        "xnat_abstractresource_id": resource["id"],
                        "label": resource["label"],
                        "element_name": "xnat:resourceCatalog",
                        "category": "resources",
                        "cat_id": resource["id"],
                        "cat_desc": "",
                        "format": resource["format"],
                        "content": resource["content"],
                        "tags": resource["tags"],
                        "file_count": count,
                        "file_size": total,
                    }
                )
        return table_response(request, rows, RESOURCE_COLUMNS, title="Resources", fixed_columns=True)

    def _resource(self, request: Request, parents: list[Parent], selector: str) -> Response:
        chosen = self._select(parents, selector)
        if request.method in ("GET", "HEAD"):
            if not chosen:
                return error_page(404, "Unable to find resource.")
            if (request.param("format") or "").lower() == "json":
                return json_response({"items": [resource_item(self.store, r) for _p, r in chosen]})
            return self._catalog(chosen[0][1])
        if request.method in ("PUT", "POST"):
            if len(parents) != 1:
                return error_page(400, "Resources are created in one parent at a time.")
            if chosen:
                return error_page(409, "Specified resource already exists.")
            if not _valid_resource_label(selector):
                return error_page(417, "Invalid resource label.")
            parent = parents[0]
            self.store.add_resource(
                parent.level,
                parent.owner,
                selector,
                format=request.param("format") or "",
                content=request.param("content") or "",
                tags=request.param("tags") or "",
            )
            return Response(200)
        if request.method == "DELETE":
            if not chosen:
                return error_page(404, "Unable to find resource.")
            for _parent, resource in chosen:
                self.store.delete_resource(resource["id"])
            return Response(200)
        return method_not_allowed(request, "GET, HEAD, PUT, POST, DELETE")

    def _catalog(self, resource) -> Response:
        dicom = resource["format"].upper() == "DICOM"
        root = "cat:DCMCatalog" if dicom else "cat:Catalog"
        entry_type = "cat:dcmEntry" if dicom else "cat:entry"
        entries = []
        for row in self.store.files(resource["id"]):
            entries.append(
                f'<cat:entry xsi:type="{entry_type}" URI={quoteattr(row["path"])} '
                f"name={quoteattr(posixpath.basename(row['path']))} ID={quoteattr(row['path'])} "
                f"digest={quoteattr(row['digest'])} format={quoteattr(row['format'])} "
                f"content={quoteattr(row['content'])}/>"
            )
        document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<{root} xmlns:cat="http://nrg.wustl.edu/catalog" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f"ID={quoteattr(str(resource['id']))} description={quoteattr(resource['label'])}>"
            f"<cat:entries>{''.join(entries)}</cat:entries></{root}>\n"
        )
        return Response(200, document.encode(), "text/xml;charset=UTF-8")

    # ---- listings and archives ---------------------------------------------

    def _files_answer(self, request: Request, pairs: list[tuple[Parent, sqlite3.Row]]) -> Response:
        found = [(parent, resource, row) for parent, resource in pairs for row in self.store.files(resource["id"])]
        fmt = (request.param("format") or "json").lower()
        if fmt in ARCHIVE_FORMATS:
            return self._archive(request, found, fmt)
        rows = [
            {
                "Name": posixpath.basename(row["path"]),
                "Size": row["size"],
                "URI": _file_uri(parent, resource, row["path"]),
                "collection": resource["label"],
                "file_tags": row["tags"],
                "file_format": row["format"],
                "file_content": row["content"],
                "cat_ID": resource["id"],
                "digest": row["digest"],
            }
            for parent, resource, row in found
        ]
        return table_response(request, rows, FILE_COLUMNS, title="Files", file_listing=True, fixed_columns=True)

    def _archive(self, request: Request, found: list[tuple[Parent, sqlite3.Row, sqlite3.Row]], fmt: str) -> Response:
        """A zip or tar of ``found``, (parent, resource, file row) triples."""
        structure = (request.param("structure") or "default").lower()
        entries = [
            Entry(
                _entry_name(parent, resource["label"], row["path"], structure),
                self.store.file_path(resource["id"], row["path"]),
                row["size"],
                row["mtime"],
            )
            for parent, resource, row in found
        ]
        if not entries:
            return error_page(404, "No matching files found.")
        if fmt == "zip":
            produce, content_type, suffix = (lambda out: write_zip(entries, out)), "application/zip", "zip"
        else:
            gzip = fmt in ("tar.gz", "tgz")
            produce = functools.partial(write_tar, entries, gzip=gzip)
            content_type, suffix = ("application/x-gzip", "tar.gz") if gzip else ("application/x-tar", "tar")
        response = Response(200, StreamBody(produce), content_type)
        return response.header("Content-Disposition", f'attachment; filename="download.{suffix}"')

    # ---- single files ---------------------------------------------------------

    def _download(self, request: Request, parents: list[Parent], selector: str, relpath: str) -> Response:
        """One file: its bytes, or (``format=zip``, ``tar``...) an archive holding just it, as XNAT does."""
        try:
            relpath = clean_relpath(relpath)
        except StoreError:
            return error_page(404, "Unable to find file.")
        fmt = (request.param("format") or "").lower()
        for parent, resource in self._select(parents, selector):
            found = self.store.open_file(resource["id"], relpath)
            if found is None:
                continue
            row, handle = found
            if fmt in ARCHIVE_FORMATS:
                handle.close()
                return self._archive(request, [(parent, resource, row)], fmt)
            return file_response(
                handle,
                content_type=_content_type(relpath),
                range_header=request.headers.get("Range"),
                honour_range=self.server.honour_range,
                mtime=row["mtime"],
            )
        return error_page(404, "Unable to find file.")

    def _upload(self, request: Request, parents: list[Parent], selector: str, relpath: str | None) -> Response:
        multipart = request.content_type.lower().startswith("multipart/")
        if multipart and request.flag("inbody"):
            return error_page(406, "In-body uploads cannot be multipart.")
        if len(parents) != 1 or "," in selector:
            return error_page(400, "Files are uploaded into one resource at a time.")
        parent = parents[0]
        resource = self.store.find_resource(parent.level, parent.owner, selector)
        if resource is None and not _valid_resource_label(selector):
            return error_page(417, "Invalid resource label.")
        with self.store.staging() as new_path:
            uploads = self._receive(request, relpath, multipart, new_path)
            if not uploads:
                return error_page(400, "No content was uploaded.")
            if resource is None:
                resource_id = self.store.add_resource(parent.level, parent.owner, selector)
            else:
                resource_id = resource["id"]
            duplicates = []
            for name, staged, digest in uploads:
                duplicates += self._place(request, resource_id, name, staged, digest)
        if duplicates:
            return Response(200, json.dumps({"duplicates": duplicates}).encode(), "application/json")
        return Response(200)

    def _receive(
        self, request: Request, relpath: str | None, multipart: bool, new_path: Callable[[], Path]
    ) -> list[tuple[str, Path, str]]:
        """Stage the uploaded file(s): [(relative path, staged file, md5)]."""
        if multipart:
            return self._receive_multipart(request, relpath, new_path)
        if relpath is None:
            raise BadRequest("An in-body upload needs a file path in the address.")
        staged = new_path()
        size, digest = request.body_to_file(staged)
        return [(relpath, staged, digest)] if size else []

    def _receive_multipart(
        self, request: Request, relpath: str | None, new_path: Callable[[], Path]
    ) -> list[tuple[str, Path, str]]:
        raw = request.read_body()
        head = f"Content-Type: {request.content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + raw)
        if not message.is_multipart():
            raise BadRequest("Malformed multipart body.")
        staged_files: list[tuple[str, Path, str]] = []
        for part in message.iter_parts():
            filename = part.get_filename()
            if not filename:
                continue
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            if not data:
                continue
            name = relpath if relpath and len(staged_files) == 0 else posixpath.basename(filename)
            staged = new_path()
            staged.write_bytes(data)
            staged_files.append((name, staged, hashlib.md5(data).hexdigest()))
        return staged_files

    def _place(self, request: Request, resource_id: int, relpath: str, staged: Path, digest: str) -> list[str]:
        """Put a staged upload in place (or unpack it); returns the paths refused as duplicates."""
        relpath = clean_relpath(relpath)
        overwrite = request.flag("overwrite")
        attrs: dict[str, Any] = {
            "format": request.param("format"),
            "content": request.param("content"),
            "tags": request.param("tags") or "",
        }
        if request.flag("extract") and is_archive_name(relpath):
            folder = posixpath.dirname(relpath)
            duplicates = []
            try:
                for member, handle in unpack(staged, relpath):
                    target = clean_relpath(posixpath.join(folder, member) if folder else member)
                    if self.store.file(resource_id, target) is not None and not overwrite:
                        duplicates.append(target)
                        continue
                    self.store.store_file(resource_id, target, handle, **attrs)
            except ValueError as exc:
                raise BadRequest(str(exc)) from exc
            return duplicates
        if self.store.file(resource_id, relpath) is not None and not overwrite:
            return [relpath]
        self.store.store_file(resource_id, relpath, staged, move=True, digest=digest, **attrs)
        return []


def _file_uri(parent: Parent, resource, relpath: str) -> str:
    """A listing's ``URI``: as XNAT does, the catalog's relative path appended as it is stored.

    XNAT does not percent-encode it, so a client that uses the ``URI`` as an
    address must quote it first.
    """
    return f"{parent.uri}/resources/{resource['id']}/files/{relpath}"


def _entry_name(parent: Parent, resource_label: str, relpath: str, structure: str) -> str:
    if structure == "improved":
        base = f"{parent.zip_improved}/" if parent.zip_improved else ""
        if parent.level == "scan":
            return f"{base}{resource_label}/{relpath}"
        return f"{base}resources/{resource_label}/{relpath}"
    if structure == "simplified":
        return f"{parent.zip_dir}/{resource_label}/{relpath}"
    return f"{parent.zip_dir}/resources/{resource_label}/files/{relpath}"


def _valid_resource_label(label: str) -> bool:
    return bool(label) and "/" not in label and "\x00" not in label and label not in (".", "..")


def _content_type(relpath: str) -> str:
    lower = relpath.lower()
    if lower.endswith((".dcm", ".ima")):
        return "application/octet-stream"
    guessed, _ = mimetypes.guess_type(relpath)
    return guessed or "application/octet-stream"
