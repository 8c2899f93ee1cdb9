"""The handlers that change XNAT: each maps to one XNAT call (docs/SEMANTICS.md §2).

| action | where | XNAT call |
|---|---|---|
| mkdir | in a project / a subject | create subject / experiment |
| mkdir | in RESOURCES/ or a scan | create resource |
| mkdir | in a resource | a local folder (exists on XNAT once a file is in it) |
| write + close/fsync | in a resource | upload (overwrite) |
| write ``*.zip`` + close | in an experiment's SCANS/ | DICOM import into that experiment |
| mv | subject / experiment in its parent | rename |
| mv | file within its resource | upload under the new name, then delete |
| rm / rmdir | file / empty resource | delete |
| rmdir | project / subject / experiment | delete, only with ``--allow-delete`` (else EPERM) |

Anything else that would change the tree is refused: EROFS on read-only
mounts and shared experiments, EXDEV for moves across parents (so ``mv``
copies and deletes), EPERM for what XNAT cannot do (symbolic and hard
links, fifos and device files among them), EINVAL for names XNAT cannot
store. A folder inside a resource cannot be renamed (EXDEV): XNAT has no
move, so ``mv`` copies its files and removes the originals, which is what
the mount would have to do file by file anyway. chmod, chown and utimens
succeed and change nothing.

:class:`Mutations` answers the write handlers of
:class:`xnatfs.fs.operations.XnatOperations`, which hands them over. What
each kind of folder or file lets a user do is the kind's own write policy
(:mod:`xnatfs.fs.nodes`, :class:`~xnatfs.fs.nodes.WriteContext`); here are
the checks every change goes through, the staging, uploading and deleting
of files, and the inode table kept in step with renames and deletions.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, BinaryIO, TypeVar

import pyfuse3
import trio

from xnatfs.cache.content import CacheKey, ContentCache
from xnatfs.cache.spool import UploadSpool, UploadTarget
from xnatfs.cache.uploader import UploadRetries
from xnatfs.client.changes import SentChanges, watching_changes
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import RemoteFile
from xnatfs.errors import XnatConflict, XnatError, XnatNotFound, XnatUnsupported, is_permanent_refusal
from xnatfs.fs.control import REFRESH_NAME
from xnatfs.fs.deadlines import bounded
from xnatfs.fs.errno import errno_for, refused
from xnatfs.fs.handles import OUR_BYTES, OpenHandles
from xnatfs.fs.inodes import InodeEntry, InodeTable
from xnatfs.fs.keys import ExperimentContentsKey, ExperimentFilesKey, ListingKey, files_key
from xnatfs.fs.latechanges import LateChanges
from xnatfs.fs.local import ABSENT, LocalFile, LocalFileNode, LocalHandle, OldName, Overlay
from xnatfs.fs.names import NAME_MAX, unstorable_reason
from xnatfs.fs.nodes import DirNode, FileNode, Listing, Node
from xnatfs.fs.reading import HotFiles, ReadHandle
from xnatfs.fs.series import SeriesFetcher
from xnatfs.fs.settings import MountSettings
from xnatfs.fs.tree import Tree
from xnatfs.fs.writing import Writer

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The kernel's entries (folder inode, name) a request's change is about: after a change
# left in doubt they are dropped with the listings (see Mutations.change).
_in_play: ContextVar[tuple[tuple[int, str], ...]] = ContextVar("xnatfs_names_in_play", default=())


@contextmanager
def _names_in_play(*entries: tuple[int, str]) -> Iterator[None]:
    token = _in_play.set(entries)
    try:
        yield
    finally:
        _in_play.reset(token)


READ_CHUNK = 1 << 20
TIMES_KEPT_AFTER = 5.0  # seconds between a change of the written times and its copy on disk


class ReadSide:
    """What the write handlers use of the read side: finding entries and describing them.

    ``entry`` finds an inode's entry (ESTALE if gone); ``fresh`` is its
    node with every ancestor reloaded; ``child`` looks a name up in a
    folder; ``listing`` lists a folder with our own changes on top;
    ``attributes`` answers ``stat``; ``read_handle`` opens a server file
    for reading.
    """

    def __init__(
        self,
        *,
        entry: Callable[[int], InodeEntry],
        fresh: Callable[[int, InodeEntry], Awaitable[Node]],
        child: Callable[[Node, str], Awaitable[Node | None]],
        listing: Callable[[Node], Awaitable[Listing]],
        attributes: Callable[[int, Node], pyfuse3.EntryAttributes],
        read_handle: Callable[[int | None, RemoteFile], Awaitable[ReadHandle]],
    ):
        self.entry = entry
        self.fresh = fresh
        self.child = child
        self.listing = listing
        self.attributes = attributes
        self.read_handle = read_handle


class Mutations:
    """The write-side handlers, and the :class:`~xnatfs.fs.nodes.WriteContext` of the node kinds' policies."""

    def __init__(
        self,
        *,
        read: ReadSide,
        settings: MountSettings,
        server: str,
        tree: Tree,
        overlay: Overlay,
        inodes: InodeTable,
        handles: OpenHandles,
        writer: Writer,
        spool: UploadSpool,
        retries: UploadRetries,
        series: SeriesFetcher,
        cache: ContentCache,
        hot: HotFiles,
        cache_key: Callable[[RemoteFile], CacheKey],
        drop_kernel_entry: Callable[[int, str], None],
        in_background: Callable[[Callable[[], Awaitable[None]]], None],
    ):
        self.read = read
        self.settings = settings
        self.server = server
        self.tree = tree
        self.client: ArchiveClient = tree.connection
        self.limiter = tree.limiter
        self.overlay = overlay
        self.inodes = inodes
        self.handles = handles
        self.writer = writer
        self.spool = spool
        self.retries = retries
        self.series = series
        self.cache = cache
        self.hot = hot
        self.cache_key = cache_key
        self.drop_kernel_entry = drop_kernel_entry
        self.in_background = in_background
        self.late = LateChanges(
            client=self.client,
            writer=writer,
            retries=retries,
            timeout=settings.timeout,
            limiter=self.limiter,
            forget_files=lambda uri: tree.forget_listing(tree.files_listing_key(uri)),
            in_background=in_background,
        )

    # ---- the node kinds' write context --------------------------------

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking client call in a worker thread."""
        # Abandoned if the request is given up (see xnatfs.fs.deadlines); the call
        # then finishes, or times out, on its own.
        return await bounded(
            trio.to_thread.run_sync(lambda: function(*args, **kwargs), limiter=self.limiter, abandon_on_cancel=True)
        )

    async def change(
        self,
        stale: Sequence[ListingKey],
        function: Callable[..., T],
        *args: Any,
        forget_when_done: bool = True,
        **kwargs: Any,
    ) -> T:
        """A blocking client call that changes the server; the raw listings ``stale``
        are forgotten after it (unless ``forget_when_done`` is false and it worked),
        and after a failure that leaves them in doubt.

        A change that failed once one of its changing requests may have reached
        the server (no answer in time, a dropped connection, a 5xx) may have been
        carried out all the same, and one the server refused with 404 or 409 met
        a listing out of date: either way the next look asks the server rather
        than show the folder as it was for the rest of the TTL. A call that
        failed before any changing request went out (no connection, the mount
        failing fast, an unanswered GET asked first) changed nothing and leaves
        them, so a folder listed before the server went away is still browsed.
        """
        sent = SentChanges()
        finished = False

        def watched() -> T:
            nonlocal finished
            with watching_changes(sent):
                try:
                    return function(*args, **kwargs)
                finally:
                    finished = True

        try:
            result = await self.call(watched)
        except BaseException as exc:
            # Not finished: the request was given up while the call goes on, and may change the server yet.
            if sent.count or not finished or isinstance(exc, (XnatNotFound, XnatConflict)):
                self.forget(*stale)
                # The kernel's entries for the names too: it keeps them for the TTL.
                for parent_inode, name in _in_play.get():
                    self.drop_kernel_entry(parent_inode, name)
            raise
        if forget_when_done:
            self.forget(*stale)
        return result

    def forget(self, *keys: ListingKey) -> None:
        for key in keys:
            self.tree.forget_listing(key)

    async def listing(self, node: Node) -> Listing:
        return await self.read.listing(node)

    def resource_gone(self, resource_uri: str) -> None:
        self.series.forget(resource_uri)

    async def delete_remote(self, remote: RemoteFile) -> None:
        await self._delete_on_server(remote.resource_uri, remote.path, missing_ok=False)
        self.overlay.hide(remote.resource_uri, remote.path)
        uri = self.cache_key(remote).uri
        for held in self.hot.drop_uri(uri):
            held.close()
        await self.call(self.cache.discard_uri, uri)

    async def delete_staged(self, local: LocalFile) -> None:
        on_server = local.state == "uploaded" or local.replaces_remote
        is_file = local.target.kind == "file"
        if on_server and is_file:
            await self._delete_on_server(
                local.target.resource_uri, local.target.relpath, missing_ok=local.state != "uploaded"
            )
        sent = await self.call(self.writer.discard, local)
        self.overlay.drop_file(local)
        if sent and is_file:
            # Its upload was under way, or done by a retry this mount had not heard of yet.
            await self._delete_on_server(local.target.resource_uri, local.target.relpath, missing_ok=True)
        if on_server or sent:
            self.overlay.hide(local.container, local.relpath)
        await self._delete_old_names(local)

    # ---- checks -------------------------------------------------------

    def _check_writable(self, node: Node, what: str) -> None:
        if self.settings.read_only:
            raise refused(errno.EROFS, "%s refused: the mount is read-only", what)
        if node.read_only:
            raise refused(errno.EROFS, "%s refused: %s", what, node.why_read_only)

    @staticmethod
    def _new_name(raw: bytes, what: str) -> str:
        """The text of a name a user gives a new entry; refused when XNAT could not hold it.

        The server keeps names as UTF-8 text of at most 255 bytes, and not
        every character (:func:`xnatfs.fs.names.unstorable_reason`): anything
        else would be accepted here and then be refused at the upload, or
        come back under another name.
        """
        text = os.fsdecode(raw)
        if text == REFRESH_NAME:
            raise refused(errno.EPERM, "%s refused: %s only asks for a refresh of its folder", what, text)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise refused(errno.EINVAL, "%s refused: the name is not UTF-8 text: %r", what, text) from None
        if len(raw) > NAME_MAX:
            raise refused(
                errno.ENAMETOOLONG,
                "%s refused: the name is %d bytes long, more than %d: %s",
                what,
                len(raw),
                NAME_MAX,
                text,
            )
        reason = unstorable_reason(text)
        if reason:
            raise refused(errno.EINVAL, "%s refused: XNAT cannot store the name %r: %s", what, text, reason)
        return text

    async def _existing_child(self, parent_inode: int, name: bytes) -> tuple[InodeEntry, DirNode, str, Node]:
        """The parent's entry and fresh node, the child's name and node; ENOENT if it is not there."""
        parent = self.read.entry(parent_inode)
        pnode = await self.read.fresh(parent_inode, parent)
        text = os.fsdecode(name)
        node = await self.read.child(pnode, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        assert isinstance(pnode, DirNode)  # child() answered ENOTDIR otherwise
        return parent, pnode, text, node

    # ---- creating and writing files -----------------------------------

    async def create(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.read.entry(parent_inode)
        pnode = await self.read.fresh(parent_inode, parent)
        self._check_writable(pnode, f"creating {os.fsdecode(name)}")
        text = self._new_name(name, "creating a file")
        new_file = pnode.create_target(text, self.server)
        local = await self.call(self.writer.stage, new_file.target, new_file.container, new_file.relpath)
        local.experiment_id = new_file.experiment_id
        local.dirty = True
        self.overlay.add_file(local)
        node = LocalFileNode(mtime=local.mtime, read_only=False, local=local)
        inode = self.inodes.remember(parent.path + (text,), node)
        handle = self._open_handle(local, inode, flags)
        return pyfuse3.FileInfo(fh=handle), self.read.attributes(inode, node)

    def _open_handle(self, local: LocalFile, inode: int, flags: int) -> int:
        local.handles += 1
        return self.handles.open_file(
            LocalHandle(local, inode, writable=flags & os.O_ACCMODE != os.O_RDONLY, append=bool(flags & os.O_APPEND)),
            inode,
        )

    async def open_local(self, inode: int, node: Node, flags: int) -> pyfuse3.FileInfo:
        """Open a file for writing (or one of ours for anything): through a local copy."""
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._check_writable(node, "writing")
        local = node.staged
        if local is not None:
            if flags & os.O_TRUNC:
                await self.call(self.writer.truncate, local, 0)
        else:
            assert isinstance(node, FileNode)  # files of ours are staged; the BIDS view's are read-only
            local = await self._stage_remote(node, truncate=bool(flags & os.O_TRUNC))
        # The kernel's pages of this inode hold what was written through it (or the
        # server's bytes we copied): keeping them spares reads that, under a heavy
        # read load elsewhere on the mount, can wait seconds for the kernel to send.
        # Once the server's file is shown again, its first open drops them: the server
        # may hold another version of the same size and time by then.
        self.handles.served(inode, OUR_BYTES)
        return pyfuse3.FileInfo(fh=self._open_handle(local, inode, flags), keep_cache=True)

    async def _stage_remote(
        self, node: FileNode, *, truncate: bool, relpath: str | None = None, container: str | None = None
    ) -> LocalFile:
        """A local copy of a server file (or an empty one, when it is truncated anyway)."""
        remote = node.file
        container = container or remote.resource_uri
        relpath = relpath if relpath is not None else remote.path
        target = UploadTarget(kind="file", resource_uri=container, relpath=relpath, server=self.server)
        if truncate:
            local = await self.call(self.writer.stage, target, container, relpath, replaces_remote=True)
            local.dirty = True
        else:
            reader = await self.read.read_handle(None, remote)
            try:

                def fill(sink: BinaryIO) -> None:
                    offset = 0
                    while offset < remote.size:
                        chunk = reader.read_blocking(offset, READ_CHUNK)
                        if not chunk:
                            break
                        sink.write(chunk)
                        offset += len(chunk)

                local = await self.call(
                    self.writer.stage,
                    target,
                    container,
                    relpath,
                    fill=fill,
                    copy_of=remote.digest,
                    replaces_remote=True,
                )
            finally:
                await reader.close(self.limiter)
            local.mtime = node.mtime  # a copy is no change; its first write is
        self.overlay.add_file(local)
        return local

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self.handles.file(fh)
        if not isinstance(handle, LocalHandle) or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        offset = handle.local.size if handle.append else off
        written = self.writer.write_at_once(handle.local, offset, buf)
        if written is None:
            written = await self.call(self.writer.write, handle.local, offset, buf)
        return written

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.handles.file(fh)
        if isinstance(handle, LocalHandle) and handle.writable:
            await self._upload(handle.local, final=False)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self.handles.file(fh)
        if isinstance(handle, LocalHandle) and handle.writable:
            await self._upload(handle.local, final=False)

    async def _upload(self, local: LocalFile, *, final: bool = True) -> None:
        """Send a local file now; the caller sees the server's refusal as an errno.
        ``final`` unless the file stays open (see :meth:`Writer.upload`)."""
        try:
            sent = await self.call(self.writer.upload, local, final=final)
        except XnatUnsupported as exc:
            # Nothing was staged (XNAT cannot hold the result): show the server's file again.
            self.overlay.drop_file(local)
            self.tree.forget_listing(self.tree.files_listing_key(local.target.resource_uri))
            if local.error == str(exc):
                # Each close of a copied descriptor hears it; the log says it once.
                raise pyfuse3.FUSEError(errno_for(exc)) from None
            local.error = str(exc)
            raise
        except XnatError as exc:
            if local.state == "refused":
                logger.error(
                    "upload of %s refused; kept in the spool until a user retries or discards it: %s",
                    local.target.describe(),
                    exc,
                )
            else:
                logger.error("upload of %s failed; kept in the spool for another try: %s", local.target.describe(), exc)
                self.retries.wake()
            await self._after_commit(local)
            raise
        if sent:
            self._after_upload(local)
        await self._after_commit(local)

    async def _after_commit(self, local: LocalFile) -> None:
        """The spool holds the file's bytes as closed, sent or not: what waited for that."""
        if local.old_names and not local.entry_open and not local.unlinked:
            await self._delete_old_names(local)

    def _after_upload(self, local: LocalFile) -> None:
        if local.target.kind == "dicom-import":
            # The zip became scans: list those from now on.
            self.forget(ExperimentContentsKey(local.experiment_id), ExperimentFilesKey(local.experiment_id))
        else:
            self.overlay.unhide(local.container, local.relpath)
            self.series.forget(local.target.resource_uri)
            if not local.sent_md5:
                self.in_background(functools.partial(self._hash_sent, local, local.mtime))
            self.late.file_sent(local)
        if local.handles == 0:
            self._linger(local)

    async def _hash_sent(self, local: LocalFile, mtime: float) -> None:
        # In the background: a close does not wait for it, and nothing of it may end the mount.
        try:
            await trio.to_thread.run_sync(Writer.hash_sent, local, mtime, limiter=self.limiter, abandon_on_cancel=True)
        except Exception as exc:
            logger.debug("no MD5 of %s as sent: %s", local.target.describe(), exc)

    def _linger(self, local: LocalFile) -> None:
        """How long a sent file stays shown from our copy.

        A file until listings have caught up (a TTL); an imported zip, which
        XNAT turns into scans rather than keeping, only briefly, so that
        tools setting its mode or times after closing it still find it.
        """
        keep = self.settings.negative_ttl if local.target.kind == "dicom-import" else self.settings.ttl
        self.overlay.expire_after(local, keep)

    async def release_local(self, handle: LocalHandle) -> None:
        local = handle.local
        local.handles -= 1
        if handle.writable and local.dirty and not local.unlinked:
            # Written without a flush (e.g. through a mapping): send it now; nobody can be told of a failure.
            try:
                await self._upload(local)
            except Exception as exc:
                logger.error("upload of %s on release failed: %s", local.target.describe(), exc)
        if local.handles == 0:
            if local.unlinked:
                local.close()
            elif await self.call(self.writer.drop_unwritten, local):
                if local.handles == 0:
                    # Opened for writing, nothing written: the server's file is shown again.
                    self.overlay.drop_file(local)
                    local.close()
            elif local.state == "uploaded" and handle.writable:
                # Only a write starts the time again: a file read over and over would
                # otherwise hide the server's changes to it for as long as it is read.
                self._linger(local)

    # ---- attributes ---------------------------------------------------

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        entry = self.read.entry(inode)
        node = await self.read.fresh(inode, entry)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if node.size != attr.st_size or node.staged is not None:
                node = await self._truncate(inode, entry, node, attr.st_size, fh)
        # Modes, owners and times have no XNAT counterpart: accepted, changed nowhere,
        # so that cp -a and rsync -a can finish.
        return self.read.attributes(inode, node)

    async def _truncate(
        self, inode: int, entry: InodeEntry, node: Node, size: int, fh: pyfuse3.FileHandleT | None
    ) -> Node:
        self._check_writable(node, "truncating")
        handle = self.handles.file(fh) if fh is not None else None
        if size == 0 and node.on_server and not isinstance(handle, LocalHandle):
            raise refused(errno.ENOTSUP, "emptying %s refused: XNAT cannot hold an empty file", entry.path[-1])
        local = node.staged
        if local is None:
            assert isinstance(node, FileNode)  # files of ours are staged; the BIDS view's are read-only
            local = await self._stage_remote(node, truncate=size == 0)
        try:
            await self.call(self.writer.truncate, local, size)
        except OSError:
            if node.staged is None and await self.call(self.writer.drop_unwritten, local):
                self.overlay.drop_file(local)
                local.close()
            raise
        if not isinstance(handle, LocalHandle) and local.handles == 0:
            # truncate(2) on a path: no close will follow to send it.
            await self._upload(local)
        new_node = LocalFileNode(mtime=local.mtime, read_only=False, local=local)
        entry.node = new_node
        return new_node

    # ---- folders ------------------------------------------------------

    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.read.entry(parent_inode)
        pnode = await self.read.fresh(parent_inode, parent)
        self._check_writable(pnode, f"mkdir {os.fsdecode(name)}")
        text = self._new_name(name, "mkdir")
        if await self.read.child(pnode, text) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        with _names_in_play((parent_inode, text)):
            await pnode.mkdir(self, text)
        node = await self.read.child(pnode, text)
        if node is None:
            raise refused(errno.EIO, "mkdir %s: created, but the server does not list it", text)
        inode = self.inodes.remember(parent.path + (text,), node)
        return self.read.attributes(inode, node)

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, pnode, text, node = await self._existing_child(parent_inode, name)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._check_writable(node, f"rmdir {text}")
        with _names_in_play((parent_inode, text)):
            await node.rmdir(self, pnode, text)
        # Descriptors open on files that were in it keep its inode alive in the kernel,
        # marked dead: a folder made again under the name needs a number of its own.
        self.inodes.detach(parent.path + (text,))

    # ---- removing files -----------------------------------------------

    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, _, text, node = await self._existing_child(parent_inode, name)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._check_writable(node, f"deleting {text}")
        with _names_in_play((parent_inode, text)):
            await node.unlink(self)
        self.inodes.detach(parent.path + (text,))

    async def _delete_on_server(self, resource_uri: str, relpath: str, *, missing_ok: bool) -> None:
        try:
            # Once deleted, the overlay hides the file: removing many files does
            # not list their folder again after each.
            await self.change(
                (files_key(resource_uri),), self.client.delete_file, resource_uri, relpath, forget_when_done=False
            )
        except XnatNotFound:
            if not missing_ok:
                raise
        except XnatError as exc:
            if not is_permanent_refusal(exc):
                self.late.deletion_failed(resource_uri, relpath)
            raise
        self.series.forget(resource_uri)

    # ---- renaming -----------------------------------------------------

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: bytes,
        parent_inode_new: pyfuse3.InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise refused(errno.EINVAL, "rename: exchanging entries is not possible on XNAT")
        old_parent, old_pnode, old, node = await self._existing_child(parent_inode_old, name_old)
        new_parent = self.read.entry(parent_inode_new)
        new_pnode = await self.read.fresh(parent_inode_new, new_parent)
        new = self._new_name(name_new, "mv")
        self._check_writable(node, f"mv {old}")
        self._check_writable(new_pnode, f"mv {old} to {new}")
        existing = await self.read.child(new_pnode, new)
        if existing is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        old_path, new_path = old_parent.path + (old,), new_parent.path + (new,)
        with _names_in_play((parent_inode_old, old), (parent_inode_new, new)):
            if node.is_dir:
                same_parent = parent_inode_old == parent_inode_new
                await node.rename(self, old_pnode, new, same_parent=same_parent, replaces=existing)
            else:
                new_node = await self._move_file(node, new_pnode, new, existing)
                if existing is not None:
                    self.inodes.detach(new_path)
                self.inodes.move(old_path, new_path)
                moved = self.inodes.number_of(new_path)
                if moved is not None:
                    self.inodes.update(moved, new_node)
                return
        self.inodes.move(old_path, new_path)

    async def _move_file(self, node: Node, new_pnode: Node, new: str, existing: Node | None) -> Node:
        """Upload under the new name, then delete the old one: XNAT cannot rename files."""
        place = new_pnode.file_place
        if place is None or node.container != place[0]:
            raise pyfuse3.FUSEError(errno.EXDEV)
        if existing is not None and existing.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        target, container, relpath = new_pnode.create_target(new, self.server)[:3]
        new_on_server = existing is not None and existing.on_server
        source, overwritten = node.staged, existing.staged if existing is not None else None
        if overwritten is source:
            overwritten = None
        if source is not None:
            await self._drop_overwritten(overwritten)
            moved = await self._rename_local(source, target, relpath, replaces_remote=new_on_server)
            return LocalFileNode(mtime=moved.mtime, read_only=False, local=moved)
        assert isinstance(node, FileNode)  # files of ours are staged; the BIDS view's are read-only
        moved = await self._stage_remote(node, truncate=False, relpath=relpath, container=container)
        # Only now: had the server's bytes not come, the file they replace would have been lost.
        await self._drop_overwritten(overwritten)
        moved.dirty = True
        self.overlay.add_file(moved)
        await self._upload(moved)
        await node.unlink(self)
        return LocalFileNode(mtime=moved.mtime, read_only=False, local=moved)

    async def _drop_overwritten(self, overwritten: LocalFile | None) -> None:
        """A file of ours replaced by a rename: its bytes are not sent. Descriptors still
        open on it keep it, unlinked."""
        if overwritten is not None:
            await self.call(self.writer.discard, overwritten)
            self.overlay.drop_file(overwritten)
            await self._delete_old_names(overwritten)

    async def _rename_local(
        self, local: LocalFile, target: UploadTarget, relpath: str, *, replaces_remote: bool
    ) -> LocalFile:
        """A file of ours takes the new name: the same file, so descriptors open on
        it write under the new name, and its pending upload goes there too.

        A file whose bytes are whole (closed, or open but not written since its last
        upload) is sent under the new name at once, and the old name deleted, once the
        spool holds the bytes. One open with writes not sent yet is sent at its close:
        until then the server keeps its last closed version under the old name, so that
        a crash meanwhile leaves that version where it was (:meth:`_delete_old_names`).
        """
        old_relpath, old_target = local.relpath, local.target
        unsent = local.dirty and local.handles > 0
        self.overlay.drop_file(local)
        try:
            old_on_server = await self.call(
                self.writer.retarget, local, target, relpath, replaces_remote=replaces_remote
            )
        finally:
            self.overlay.add_file(local)
        # Versions whose upload to the old name the server may carry out yet concern that name.
        doubted = frozenset(local.doubted - {ABSENT})
        local.doubted -= doubted
        if unsent:
            if old_on_server:
                await self._keep_old_name(local, old_target, doubted)
            return local
        try:
            await self._upload(local, final=local.handles == 0)
        except XnatError as exc:
            # The rename itself is done: the bytes wait in the spool under the new name.
            logger.warning("%s renamed; its upload is pending: %s", target.describe(), exc)
        if old_on_server:
            # Hidden once deleted, as delete_remote does: when the deletion fails the server
            # still holds the old name, shown beside the new one, as mv leaves them when it
            # copied but could not remove (and what lands there late changes nothing).
            await self._delete_on_server(local.container, old_relpath, missing_ok=True)
            self.overlay.hide(local.container, old_relpath)
        if doubted:
            self.late.watch_old_name(old_target, doubted)
        return local

    async def _keep_old_name(self, local: LocalFile, old_target: UploadTarget, doubted: frozenset[str]) -> None:
        """The old name of a file renamed with writes not sent: its server copy is not shown,
        and deleted at the file's close."""
        try:
            listed = await self.call(self.late.listed_digest, old_target) or ""
        except XnatError as exc:
            logger.debug("could not look at %s on the server: %s", old_target.describe(), exc)
            listed = ""
        local.old_names.append(OldName(old_target.relpath, listed, doubted))
        self.overlay.keep_away(local.container, old_target.relpath, listed)

    async def _delete_old_names(self, local: LocalFile) -> None:
        """The file's bytes are committed (sent, or waiting in the spool, under its new name),
        or it was removed: the names it was renamed away from with writes not sent go from
        the server, unless it is back under one, or the server holds another file there
        since (someone else's, or one the mount sent)."""
        old_names, local.old_names = local.old_names, []
        for old in old_names:
            if old.relpath == local.relpath and not local.unlinked:
                continue  # renamed back: its upload replaces the copy there
            old_target = dataclasses.replace(local.target, relpath=old.relpath)
            # Not known at the rename: an upload of ours under the name since let it back.
            ours_since = not self.overlay.keeps_away(local.container, old.relpath)
            self.overlay.let_back(local.container, old.relpath)
            try:
                listed = await self.call(self.late.listed_digest, old_target)
                if listed is None:
                    continue
                another = listed != old.listed_md5 if old.listed_md5 else ours_since
                if another:
                    logger.info("%s: left as it is, another file was put there since", old_target.describe())
                    continue
                await self._delete_on_server(old_target.resource_uri, old.relpath, missing_ok=True)
            except XnatError as exc:
                logger.warning(
                    "%s: the name a file was renamed away from could not be deleted, so both names stay: %s",
                    old_target.describe(),
                    exc,
                )
                continue
            self.overlay.hide(local.container, old.relpath)
            if old.doubted:
                self.late.watch_old_name(old_target, old.doubted)

    # ---- what XNAT has no counterpart for -----------------------------

    # Without a handler the kernel answers ENOSYS ("Function not implemented"),
    # which reads as a broken file system; EPERM is what file systems without
    # links or special files (FAT, for one) answer, and what tools expect.

    async def symlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise refused(errno.EPERM, "symlink %s refused: XNAT has no symbolic links", os.fsdecode(name))

    async def link(
        self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise refused(errno.EPERM, "link %s refused: XNAT has no hard links", os.fsdecode(new_name))

    async def mknod(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise refused(errno.EPERM, "mknod %s refused: XNAT holds only files and folders", os.fsdecode(name))

    # ---- uploads in the background ------------------------------------

    async def _adopt_pending(self) -> None:
        pending = await self.call(self.spool.pending, self.server)
        refused = await self.call(self.spool.refused, self.server)
        for entry in pending + refused:
            if entry.target.kind != "file" or self.overlay.file(entry.target.resource_uri, entry.target.relpath):
                continue
            try:
                local = await self.call(self.writer.adopt, entry)
            except OSError as exc:
                logger.warning("cannot show pending upload %s: %s", entry.id, exc)
                continue
            self.overlay.add_file(local)
        if pending:
            logger.warning("%d upload(s) left pending by an earlier mount; retrying", len(pending))
        if refused:
            logger.warning(
                "%d upload(s) refused by the server wait for `xnatfs uploads retry ID` or "
                "`uploads discard ID`; see `xnatfs uploads list`",
                len(refused),
            )

    async def run_uploads(self) -> None:
        """Show uploads left pending or refused by earlier mounts, and keep retrying the pending ones."""
        try:
            await self._adopt_pending()
        except Exception:
            logger.exception("reading the upload spool failed")
        await self.retries.run()

    async def keep_times(self) -> None:
        """Keep the times of files written through the mount on disk a few seconds after they
        change, not only at unmount: a mount that is killed loses those seconds' worth at most."""
        kept = self.overlay.times_token()
        while True:
            await trio.sleep(TIMES_KEPT_AFTER)
            token = self.overlay.times_token()
            if token != kept:
                await trio.to_thread.run_sync(self.overlay.written.save, self.overlay.times_to_keep())
                kept = token

    def save_times(self) -> None:
        """At unmount (blocking): the MD5s the background had no time to work out for files
        sent just before, then every time kept for the next mount. Without its MD5, a file
        sent last would show its session's time in the next mount: older than its sources."""
        for local in self.overlay.all_files():
            if local.state == "uploaded" and not local.sent_md5:
                try:
                    Writer.hash_sent(local, local.mtime)
                except OSError as exc:
                    logger.debug("no MD5 of %s as sent: %s", local.target.describe(), exc)
        self.overlay.keep_times()

    async def uploads_changed(self, discarded: set[str]) -> None:
        """``xnatfs uploads retry`` or ``discard`` changed the spool: files whose upload was
        ``discarded`` there are no longer shown; those it sent are shown as sent."""
        for local in self.overlay.all_files():
            if local.entry is not None and local.entry.id in discarded:
                await self.call(self.writer.forget_discarded, local)
                self.overlay.drop_file(local)
        await self.uploads_retried()

    async def uploads_retried(self) -> None:
        """After a round of retries: files of ours the spool has sent are shown as sent."""
        for local in self.overlay.all_files():
            if await self.call(self.writer.refresh, local):
                self._after_upload(local)
        # MD5s of uploads no file here claimed (another mount's, sharing the spool): not kept.
        self.writer.uploader.sent_digests()
