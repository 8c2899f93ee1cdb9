"""What the mount shows before the server's listings do: our own writes.

A file written through the mount lives in the upload spool until XNAT has
it. While it is being written, while its upload is pending or failed, and
for one listing TTL after it was uploaded, the mount shows (and serves) our
copy; a file we deleted stays hidden for a TTL (unless we upload a new one
under its name), and a sub-folder made inside a resource exists only here
until a file is written in it. All of this sits on top of the listings the
tree derives from XNAT (:meth:`Overlay.merge`). Once the listings show a
file we sent, the overlay still lends it the time of our last write
(:class:`WrittenTimes`), also in the next mounts of the server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xnatfs.cache.files import make_private_dir, write_atomic
from xnatfs.cache.spool import SpoolEntry, UploadTarget
from xnatfs.fs.nodes import FileNode, FolderDir, Listing, Node, ResourceDir, WriteContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OldName:
    """A name a file was renamed away from, whose server copy goes only once the file is closed."""

    relpath: str
    listed_md5: str  # what the server listed there at the rename ("" unknown): someone else's otherwise
    doubted: frozenset[str]  # versions of ours whose upload there may be carried out yet


@dataclass(eq=False)
class LocalFile:
    """Bytes written through the mount, and how far they are on their way to XNAT.

    ``fd`` reads and writes the staging file; it stays usable after the
    spool removed the file once the server confirmed it. ``state``:
    ``writing`` (changed since the last upload), ``pending``/``failed``
    (committed, not yet accepted), ``refused`` (the server will not take it
    as it is; waits for the user), ``uploaded``, or ``empty`` (a new file
    nobody wrote into: XNAT cannot hold empty files, so it stays local).
    """

    target: UploadTarget
    container: str
    relpath: str
    fd: int
    entry: SpoolEntry | None
    replaces_remote: bool = False  # the server holds a file under this name (ours once sent)
    experiment_id: str = ""  # for a DICOM import: the experiment whose listings it changes
    size: int = 0
    entry_open: bool = True  # the spool entry still takes writes (not committed)
    dirty: bool = False
    state: str = "writing"
    error: str = ""
    handles: int = 0
    unlinked: bool = False
    mtime: float = field(default_factory=time.time)
    sent_md5: str = ""  # of the bytes last sent, when this process sent them ("" unknown)
    # MD5s of versions whose upload failed once it may have reached the server, and ABSENT for
    # a deletion of its name that did: the server may still carry one out, after this version
    # was sent (see LateChanges.confirm_sent).
    doubted: set[str] = field(default_factory=set)
    # Names it was renamed away from while it had writes not sent: the server keeps its last
    # closed version there until these bytes are committed (see Mutations._rename_local).
    old_names: list[OldName] = field(default_factory=list)
    expires: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class LocalFileNode(Node):
    """A file of ours in a listing; its size follows the local bytes."""

    local: LocalFile

    is_dir = False
    volatile = True

    @property
    def size(self) -> int:
        return self.local.size

    @property
    def staged(self) -> LocalFile | None:
        return self.local

    @property
    def on_server(self) -> bool:
        return self.local.replaces_remote or self.local.state == "uploaded"

    @property
    def container(self) -> str | None:
        return self.local.container

    async def unlink(self, context: WriteContext) -> None:
        await context.delete_staged(self.local)

    def xattr_values(self) -> dict[str, str]:
        local = self.local
        return {"upload": local.state, "upload_error": local.error, "target": local.target.describe()}


# Files whose time is kept after their upload: a few hundred bytes each.
WRITTEN_TIMES_KEPT = 50_000
ABSENT = ""  # in LocalFile.doubted: the file not there (an MD5 is never empty)


@dataclass(slots=True)
class WrittenTime:
    size: int
    mtime: float
    digest: str  # the MD5 of what we sent


class WrittenTimes:
    """When this mount last wrote each file the server now holds from it.

    XNAT keeps no file times, so a listed file shows its session's. Shown
    that way once its upload was listed, a file just written would go back
    in time, and editors (vim: "changed since reading it") and make would
    take that for a change by someone else. A file keeps its written time
    for as long as the server lists what was sent (same size and MD5), up
    to :data:`WRITTEN_TIMES_KEPT` files, the oldest forgotten first. Only
    the MD5 tells our version from another of the same size: lent to that
    other, the time would tell the kernel that the pages it holds of ours
    are still good. So a file whose MD5 is not known (sent by another
    process) or not listed keeps no time.
    """

    def __init__(self, limit: int = WRITTEN_TIMES_KEPT, path: Path | None = None):
        self.limit = limit
        self.path = path  # where they are kept between mounts of the server, if anywhere
        self.changes = 0  # counts every time kept or dropped: whether the file on disk is behind
        self._times: OrderedDict[tuple[str, str], WrittenTime] = OrderedDict()
        self._per_container: Counter[str] = Counter()
        if path is not None:
            self._load(path)

    def record(self, local: LocalFile) -> None:
        self.forget(local.container, local.relpath)
        if local.sent_md5:
            self._keep((local.container, local.relpath), WrittenTime(local.size, local.mtime, local.sent_md5))

    def _keep(self, key: tuple[str, str], written: WrittenTime) -> None:
        self.changes += 1
        self._times[key] = written
        self._per_container[key[0]] += 1
        while len(self._times) > self.limit:
            self._drop(next(iter(self._times)))

    def rows(self, sent: Sequence[LocalFile] = ()) -> list[list[object]]:
        """What :meth:`save` writes: these times, and those of ``sent`` (files of ours the
        server holds, still shown from our copy) that would join them."""
        kept = {key: [*key, w.size, w.mtime, w.digest] for key, w in self._times.items()}
        for local in sent:
            if local.sent_md5:
                key = (local.container, local.relpath)
                kept.pop(key, None)
                kept[key] = [*key, local.size, local.mtime, local.sent_md5]
        return list(kept.values())[-self.limit :]

    def save(self, rows: list[list[object]] | None = None) -> None:
        """Keep ``rows`` (by default :meth:`rows`) for the next mount of the server (blocking)."""
        if self.path is None:
            return
        if rows is None:
            rows = self.rows()
        try:
            make_private_dir(self.path.parent)
            write_atomic(self.path, json.dumps({"version": 1, "times": rows}).encode(), durable=False)
        except OSError as exc:
            logger.warning("the times of files written through the mount were not kept in %s: %s", self.path, exc)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text())["times"]
            for container, relpath, size, mtime, digest in rows:
                if not (isinstance(size, int) and isinstance(mtime, (int, float)) and isinstance(digest, str)):
                    raise ValueError(f"not a size, a time and an MD5: {size!r}, {mtime!r}, {digest!r}")
                self._keep((str(container), str(relpath)), WrittenTime(size, float(mtime), digest))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Only times are lost: files show their sessions' times, as after a first mount.
            logger.warning("the times of files written through earlier mounts are not shown: %s: %s", path, exc)

    def forget(self, container: str, relpath: str) -> None:
        if (container, relpath) in self._times:
            self._drop((container, relpath))

    def _drop(self, key: tuple[str, str]) -> None:
        self.changes += 1
        del self._times[key]
        self._per_container[key[0]] -= 1
        if not self._per_container[key[0]]:
            del self._per_container[key[0]]

    def holds(self, container: str) -> bool:
        return container in self._per_container

    def shown(self, container: str, node: Node) -> Node:
        """``node`` (from a listing of ``container``) with the time we wrote it, if we did."""
        if not isinstance(node, FileNode):
            return node
        key = (container, node.file.path)
        written = self._times.get(key)
        if written is None:
            return node
        if node.size != written.size or (node.file.digest or "").lower() != written.digest:
            self._drop(key)  # the server holds another version now, or says nothing of it
            return node
        return dataclasses.replace(node, mtime=written.mtime)


class Overlay:
    """Our writes, local folders and deletions, keyed by container (a resource
    URI, or an experiment's SCANS) and path inside it."""

    def __init__(self, ttl: float, written: WrittenTimes | None = None):
        self.ttl = ttl
        self.files: dict[str, dict[str, LocalFile]] = {}
        self.folders: dict[str, set[tuple[str, ...]]] = {}
        self.deleted: dict[str, dict[str, float]] = {}
        # Names a file of ours was renamed away from while it had writes not sent: the server
        # keeps its copy there (with this MD5; "" unknown) until that file's close, not shown.
        self.kept_away: dict[str, dict[str, str]] = {}
        self.written = written if written is not None else WrittenTimes()
        # What was worked out for a container's folders, kept until its files, folders or
        # deletions change: every lookup, stat and open in a folder asks, and working it out
        # anew each time made a copy of thousands of files slower with each file.
        self._merged: dict[str, dict[tuple[str, ...], tuple[Node, Listing, Listing]]] = {}
        self._subfolders: dict[str, dict[tuple[str, ...], frozenset[str]]] = {}
        self._file_nodes: dict[LocalFile, LocalFileNode] = {}
        self._next_expiry = math.inf  # nothing of ours expires before this (time.monotonic)

    # ---- changes ------------------------------------------------------

    def add_file(self, local: LocalFile) -> None:
        # A deletion under this name stays: until this file reaches the server, a
        # listing from before the deletion must not show the old file should this
        # one go (unlinked while open, renamed away, left empty). The time of our last
        # write stays too: a copy staged for writing and closed unwritten goes, and the
        # listing shows the file again; once sent, this one's time replaces it.
        group = self.files.setdefault(local.container, {})
        before = group.get(local.relpath)
        group[local.relpath] = local
        if before is None:
            self._added(local)
        else:
            self._changed(local.container)
        if local.expires is not None:
            self._next_expiry = min(self._next_expiry, local.expires)

    def drop_file(self, local: LocalFile) -> None:
        group = self.files.get(local.container, {})
        if group.get(local.relpath) is local:
            del group[local.relpath]
            if not group:
                self.files.pop(local.container, None)
            self._file_nodes.pop(local, None)
            self._changed(local.container)

    def expire_after(self, local: LocalFile, seconds: float) -> None:
        """Show ``local`` for ``seconds`` more, then leave its name to the server's listings."""
        local.expires = time.monotonic() + seconds
        self._next_expiry = min(self._next_expiry, local.expires)

    def file(self, container: str, relpath: str) -> LocalFile | None:
        return self.files.get(container, {}).get(relpath)

    def add_folder(self, container: str, subpath: tuple[str, ...]) -> None:
        self.folders.setdefault(container, set()).add(subpath)
        self._changed(container)

    def drop_folder(self, container: str, subpath: tuple[str, ...]) -> None:
        folders = self.folders.get(container, set())
        folders.discard(subpath)
        if not folders:
            self.folders.pop(container, None)
        self._changed(container)

    def hide(self, container: str, relpath: str) -> None:
        """A file we deleted on the server: hidden until listings have caught up."""
        until = time.monotonic() + self.ttl
        self.written.forget(container, relpath)
        self.deleted.setdefault(container, {})[relpath] = until
        self._next_expiry = min(self._next_expiry, until)
        self._changed(container)

    def keep_away(self, container: str, relpath: str, md5: str) -> None:
        """The server's copy under this name (with ``md5``, "" whichever) goes later: not shown till then."""
        self.kept_away.setdefault(container, {})[relpath] = md5
        self._changed(container)

    def keeps_away(self, container: str, relpath: str) -> bool:
        return relpath in self.kept_away.get(container, {})

    def let_back(self, container: str, relpath: str) -> None:
        """Show what the server holds under this name again (unless it is hidden)."""
        if _pop_mark(self.kept_away, container, relpath):
            self._changed(container)

    def unhide(self, container: str, relpath: str) -> None:
        """The server holds a file under this name again: our upload."""
        # Both marks go (``|``, not ``or``).
        if _pop_mark(self.kept_away, container, relpath) | _pop_mark(self.deleted, container, relpath):
            self._changed(container)

    def _changed(self, container: str) -> None:
        self._merged.pop(container, None)
        self._subfolders.pop(container, None)

    def _added(self, local: LocalFile) -> None:
        """A new file of ours: brought into what was worked out for its container's
        folders, rather than working each out anew (a copy adds files one by one)."""
        parts = tuple(local.relpath.split("/"))
        memos = self._merged.get(local.container, {})
        for prefix, (node, listing, merged) in list(memos.items()):
            if _below(prefix, parts):
                entries = dict(merged.entries)
                self._show(entries, node, prefix, parts, local)
                memos[prefix] = (node, listing, Listing(entries, merged.aliases))
        known = self._subfolders.get(local.container, {})
        for prefix, names in list(known.items()):
            if _below(prefix, parts[:-1]) and parts[len(prefix)] not in names:
                known[prefix] = names | {parts[len(prefix)]}

    def all_files(self) -> list[LocalFile]:
        return [local for group in self.files.values() for local in group.values()]

    def expire(self) -> list[LocalFile]:
        """Forget uploaded files and deletions older than a TTL; returns files to close."""
        now = time.monotonic()
        if now < self._next_expiry:
            return []  # every look at a folder asks: the usual answer costs nothing
        gone = [
            local
            for local in self.all_files()
            if local.handles == 0 and local.state == "uploaded" and local.expires is not None and local.expires <= now
        ]
        for local in gone:
            self.drop_file(local)
            self._remember_time(local)
        for container in list(self.deleted):
            group = self.deleted[container]
            expired = [p for p, until in group.items() if until <= now]
            for relpath in expired:
                del group[relpath]
            if not group:
                del self.deleted[container]
            if expired:
                self._changed(container)
        # A file still open stays past its time, and is looked at again on the next call.
        self._next_expiry = min(
            [local.expires for local in self.all_files() if local.expires is not None]
            + [until for group in self.deleted.values() for until in group.values()],
            default=math.inf,
        )
        return gone

    def keep_times(self) -> None:
        """At unmount: the times of files sent and still shown from our copy join the
        others, and all are kept for the next mount (blocking)."""
        for local in self.all_files():
            self._remember_time(local)
        self.written.save()

    def times_token(self) -> tuple[object, ...]:
        """Changes whenever :meth:`times_to_keep` would."""
        sent = (local for local in self.all_files() if self._lends_time(local))
        return (self.written.changes, *((id(local), local.mtime, local.sent_md5) for local in sent))

    def times_to_keep(self) -> list[list[object]]:
        """While mounted: what :meth:`keep_times` would keep, as rows for :meth:`WrittenTimes.save`."""
        return self.written.rows([local for local in self.all_files() if self._lends_time(local)])

    def _remember_time(self, local: LocalFile) -> None:
        """A file of ours the server holds now: its time is lent to the server's listing of it."""
        if self._lends_time(local):
            self.written.record(local)

    @staticmethod
    def _lends_time(local: LocalFile) -> bool:
        return local.state == "uploaded" and local.target.kind == "file"

    # ---- reading ------------------------------------------------------

    def merge(self, node: Node, listing: Listing) -> Listing:
        """``listing`` (from XNAT) with our files, folders and deletions applied."""
        place = node.overlay_place
        if place is None:
            return listing
        container, prefix = place
        files = self.files.get(container)
        folders = self.folders.get(container)
        deleted = self.deleted.get(container)
        kept = self.kept_away.get(container)
        written = self.written.holds(container)
        if not (files or folders or deleted or kept or written):
            return listing
        memo = self._merged.get(container, {}).get(prefix)
        if memo is not None and memo[0] is node and memo[1] is listing:
            return memo[2]
        entries = dict(listing.entries)
        if written:
            for name, child in entries.items():
                entries[name] = self.written.shown(container, child)
        if deleted or kept:
            for name, child in list(entries.items()):
                if child.remote_path in (deleted or ()) or _kept_away(kept, child):
                    del entries[name]
        depth = len(prefix)
        for subpath in folders or ():
            if len(subpath) == depth + 1 and subpath[:depth] == prefix and subpath[-1] not in entries:
                entries[subpath[-1]] = self._folder(node, subpath)
        for relpath, local in (files or {}).items():
            parts = tuple(relpath.split("/"))
            if _below(prefix, parts):
                self._show(entries, node, prefix, parts, local)
        merged = Listing(entries, listing.aliases)
        self._merged.setdefault(container, {})[prefix] = (node, listing, merged)
        return merged

    def local_subfolders(self, node: Node) -> frozenset[str]:
        """Names of the folders right inside ``node`` that exist here (made by
        mkdir, or holding a file of ours), whether or not XNAT lists them too."""
        if not (self.files or self.folders):
            return frozenset()
        place = node.file_place
        if place is None:
            return frozenset()
        container, prefix = place
        known = self._subfolders.setdefault(container, {})
        names = known.get(prefix)
        if names is None:
            depth = len(prefix)
            paths = list(self.folders.get(container, ()))
            paths += [tuple(relpath.split("/"))[:-1] for relpath in self.files.get(container, {})]
            names = known[prefix] = frozenset(path[depth] for path in paths if _below(prefix, path))
        return names

    def _show(
        self, entries: dict[str, Node], node: Node, prefix: tuple[str, ...], parts: tuple[str, ...], local: LocalFile
    ) -> None:
        """Show ``local`` (at ``parts``, below the folder ``prefix``) among the folder's ``entries``:
        itself, or the sub-folder it is in."""
        depth = len(prefix)
        if len(parts) == depth + 1:
            entries[parts[-1]] = self._file_node(node, local)
        elif parts[depth] not in entries:
            entries[parts[depth]] = self._folder(node, parts[: depth + 1])

    def _file_node(self, folder: Node, local: LocalFile) -> LocalFileNode:
        """The node showing ``local`` in ``folder``: the same one each time it is asked for."""
        shown = self._file_nodes.get(local)
        if shown is None or shown.read_only != folder.read_only:
            shown = self._file_nodes[local] = LocalFileNode(mtime=local.mtime, read_only=folder.read_only, local=local)
        return shown

    @staticmethod
    def _folder(node: Node, subpath: tuple[str, ...]) -> FolderDir:
        assert isinstance(node, (ResourceDir, FolderDir))  # folders of ours are made only in resources
        return FolderDir(
            mtime=node.mtime,
            read_only=node.read_only,
            nlink=2,
            resource=node.resource,
            experiment_id=node.experiment_id,
            subpath=subpath,
        )


@dataclass(eq=False)
class LocalHandle:
    """One open of a local file. ``append`` writes go to the end whatever the offset."""

    local: LocalFile
    inode: int
    writable: bool
    append: bool = False


def _pop_mark(marks: dict[str, dict[str, Any]], container: str, relpath: str) -> bool:
    """Drop the mark on ``relpath`` in ``container``; whether there was one."""
    group = marks.get(container, {})
    if group.pop(relpath, None) is None:
        return False
    if not group:
        del marks[container]
    return True


def _kept_away(kept: dict[str, str] | None, child: Node) -> bool:
    """Whether ``child`` is the server's copy under a name kept away (see Overlay.kept_away)."""
    if not kept or child.remote_path not in kept:
        return False
    md5 = kept[child.remote_path]
    return not md5 or (isinstance(child, FileNode) and child.file.digest.lower() == md5)


def _below(prefix: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether the path ``parts`` lies inside the folder ``prefix``."""
    return len(parts) > len(prefix) and parts[: len(prefix)] == prefix
