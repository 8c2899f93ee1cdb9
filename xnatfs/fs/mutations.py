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

:class:`Mutations` is a mixin of :class:`xnatfs.fs.operations.XnatOperations`
and uses its attributes (tree, overlay, writer, inodes, settings, ...).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time

import pyfuse3
import trio

from xnatfs.cache.spool import UploadTarget
from xnatfs.client.models import RemoteFile
from xnatfs.errors import XnatError, XnatNotFound, XnatUnsupported
from xnatfs.fs.control import REFRESH_NAME
from xnatfs.fs.deadlines import bounded
from xnatfs.fs.errno import fuse_handler
from xnatfs.fs.inodes import InodeEntry
from xnatfs.fs.keys import (
    ExperimentContentsKey,
    ExperimentFilesKey,
    ExperimentsKey,
    ListingKey,
    ProjectsKey,
    ResourcesKey,
    SubjectsKey,
)
from xnatfs.fs.local import LocalFile, LocalFileNode, LocalHandle, import_container
from xnatfs.fs.names import NAME_MAX, RESERVED, unstorable_reason
from xnatfs.fs.nodes import (
    ExperimentDir,
    FileNode,
    FolderDir,
    Node,
    ProjectDir,
    ResourceDir,
    ResourcesDir,
    ScanDir,
    ScansDir,
    SubjectDir,
)

logger = logging.getLogger(__name__)

VALID_LABEL = re.compile(r"^[A-Za-z0-9_-]+$")
READ_CHUNK = 1 << 20


def _fail(code: int, message: str, *args) -> pyfuse3.FUSEError:
    logger.warning(message, *args)
    return pyfuse3.FUSEError(code)


class Mutations:
    """Write-side handlers; starting the background upload retries and hearing of their rounds."""

    # ---- checks -------------------------------------------------------

    def _check_writable(self, node: Node, what: str) -> None:
        if self.settings.read_only:
            raise _fail(errno.EROFS, "%s refused: the mount is read-only", what)
        if node.read_only:
            raise _fail(errno.EROFS, "%s refused: %s", what, node.why_read_only)

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
            raise _fail(errno.EPERM, "%s refused: %s only asks for a refresh of its folder", what, text)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(errno.EINVAL, "%s refused: the name is not UTF-8 text: %s", what, text) from None
        if len(raw) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG, "%s refused: the name is %d bytes long, more than %d: %s",
                        what, len(raw), NAME_MAX, text)
        reason = unstorable_reason(text)
        if reason:
            raise _fail(errno.EINVAL, "%s refused: XNAT cannot store the name %r: %s", what, text, reason)
        return text

    @staticmethod
    def _check_label(label: str, what: str) -> None:
        if not VALID_LABEL.match(label):
            raise _fail(errno.EINVAL, "%s refused: XNAT labels hold only letters, digits, _ and -: %r",
                        what, label)
        if label in RESERVED:
            # XNAT would take it, but the mount would show it as <label>@<ID>, beside its own folder.
            raise _fail(errno.EINVAL, "%s refused: %s is the name of the mount's own folders", what, label)

    async def _call(self, function, *args, **kwargs):
        """A blocking client call in a worker thread."""
        # Abandoned if the request is given up (see xnatfs.fs.deadlines); the call
        # then finishes, or times out, on its own.
        return await bounded(trio.to_thread.run_sync(lambda: function(*args, **kwargs), limiter=self.limiter,
                                                     abandon_on_cancel=True))

    async def _existing_child(self, parent_inode: int, name: bytes) -> tuple[InodeEntry, Node, str, Node]:
        """The parent's entry and fresh node, the child's name and node; ENOENT if it is not there."""
        parent = self._entry(parent_inode)
        pnode = await self._fresh(parent_inode, parent)
        text = os.fsdecode(name)
        node = await self._lookup(pnode, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return parent, pnode, text, node

    def _forget_listings(self, *keys: ListingKey) -> None:
        for key in keys:
            self.tree.forget_listing(key)

    def _file_target(self, parent: ResourceDir | FolderDir, name: str) -> tuple[UploadTarget, str, str]:
        subpath = parent.subpath if isinstance(parent, FolderDir) else ()
        relpath = "/".join(subpath + (name,))
        target = UploadTarget(kind="file", resource_uri=parent.resource.uri, relpath=relpath, server=self.server)
        return target, parent.resource.uri, relpath

    # ---- creating and writing files -----------------------------------

    @fuse_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._entry(parent_inode)
        pnode = await self._fresh(parent_inode, parent)
        self._check_writable(pnode, f"creating {os.fsdecode(name)}")
        text = self._new_name(name, "creating a file")
        experiment_id = ""
        if isinstance(pnode, (ResourceDir, FolderDir)):
            target, container, relpath = self._file_target(pnode, text)
        elif isinstance(pnode, ScansDir) and text.lower().endswith(".zip"):
            session = pnode.experiment
            target = UploadTarget(kind="dicom-import", project=session.project_id, subject=session.subject_label,
                                  experiment=session.experiment.label, server=self.server)
            container, relpath, experiment_id = import_container(session.uri), text, session.experiment.id
        else:
            raise _fail(errno.EPERM, "creating %s refused: files live in resources (and *.zip in SCANS/)", text)
        local = await self._call(self.writer.stage, target, container, relpath)
        local.experiment_id = experiment_id
        local.dirty = True
        self.overlay.add_file(local)
        node = LocalFileNode(mtime=local.mtime, read_only=False, local=local)
        inode = self.inodes.remember(parent.path + (text,), node)
        handle = self._open_handle(local, inode, flags)
        return pyfuse3.FileInfo(fh=handle), self.attributes(inode, node)

    def _open_handle(self, local: LocalFile, inode: int, flags: int) -> int:
        local.handles += 1
        return self.handles.open_file(LocalHandle(local, inode, writable=flags & os.O_ACCMODE != os.O_RDONLY,
                                                  append=bool(flags & os.O_APPEND)), inode)

    async def _open_local(self, inode: int, node: Node, flags: int) -> pyfuse3.FileInfo:
        """Open a file for writing (or one of ours for anything): through a local copy."""
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._check_writable(node, "writing")
        if isinstance(node, LocalFileNode):
            local = node.local
            if flags & os.O_TRUNC:
                await self._call(self.writer.truncate, local, 0)
        else:
            local = await self._stage_remote(node.file, truncate=bool(flags & os.O_TRUNC))
        # The kernel's pages of this inode hold what was written through it (or the
        # server's bytes we copied): keeping them spares reads that, under a heavy
        # read load elsewhere on the mount, can wait seconds for the kernel to send.
        return pyfuse3.FileInfo(fh=self._open_handle(local, inode, flags), keep_cache=True)

    async def _stage_remote(self, remote: RemoteFile, *, truncate: bool, relpath: str | None = None,
                            container: str | None = None) -> LocalFile:
        """A local copy of a server file (or an empty one, when it is truncated anyway)."""
        container = container or remote.resource_uri
        relpath = relpath if relpath is not None else remote.path
        target = UploadTarget(kind="file", resource_uri=container, relpath=relpath, server=self.server)
        if truncate:
            local = await self._call(self.writer.stage, target, container, relpath, replaces_remote=True)
            local.dirty = True
        else:
            reader = await self._read_handle(None, remote)
            try:
                def fill(sink) -> None:
                    offset = 0
                    while offset < remote.size:
                        chunk = reader.read_blocking(offset, READ_CHUNK)
                        if not chunk:
                            break
                        sink.write(chunk)
                        offset += len(chunk)

                local = await self._call(self.writer.stage, target, container, relpath, fill=fill,
                                         replaces_remote=True)
            finally:
                await reader.close(self.limiter)
        self.overlay.add_file(local)
        return local

    @fuse_handler
    async def write(self, fh, off, buf):
        handle = self.handles.file(fh)
        if not isinstance(handle, LocalHandle) or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        offset = handle.local.size if handle.append else off
        return await self._call(self.writer.write, handle.local, offset, buf)

    @fuse_handler
    async def flush(self, fh):
        handle = self.handles.file(fh)
        if isinstance(handle, LocalHandle) and handle.writable:
            await self._upload(handle.local, final=False)

    @fuse_handler
    async def fsync(self, fh, datasync):
        handle = self.handles.file(fh)
        if isinstance(handle, LocalHandle) and handle.writable:
            await self._upload(handle.local, final=False)

    async def _upload(self, local: LocalFile, *, final: bool = True) -> None:
        """Send a local file now; the caller sees the server's refusal as an errno.
        ``final`` unless the file stays open (see :meth:`Writer.upload`)."""
        try:
            sent = await self._call(self.writer.upload, local, final=final)
        except XnatUnsupported:
            # Nothing was staged (XNAT cannot hold the result): show the server's file again.
            self.overlay.drop_file(local)
            self.tree.forget_listing(self.tree.files_listing_key(local.target.resource_uri))
            raise
        except XnatError as exc:
            if local.state == "refused":
                logger.error("upload of %s refused; kept in the spool until a user retries or discards it: %s",
                             local.target.describe(), exc)
                raise
            logger.error("upload of %s failed; kept in the spool for another try: %s",
                         local.target.describe(), exc)
            self.retries.wake()
            raise
        if sent:
            self._after_upload(local)

    def _after_upload(self, local: LocalFile) -> None:
        if local.target.kind == "dicom-import":
            # The zip became scans: list those from now on.
            self._forget_listings(ExperimentContentsKey(local.experiment_id), ExperimentFilesKey(local.experiment_id))
        else:
            self.series.forget(local.target.resource_uri)
        if local.handles == 0:
            self._linger(local)

    def _linger(self, local: LocalFile) -> None:
        """How long a sent file stays shown from our copy.

        A file until listings have caught up (a TTL); an imported zip, which
        XNAT turns into scans rather than keeping, only briefly, so that
        tools setting its mode or times after closing it still find it.
        """
        keep = self.settings.negative_ttl if local.target.kind == "dicom-import" else self.settings.ttl
        local.expires = time.monotonic() + keep

    async def _release_local(self, handle: LocalHandle) -> None:
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
            elif await self._call(self.writer.drop_unwritten, local):
                if local.handles == 0:
                    # Opened for writing, nothing written: the server's file is shown again.
                    self.overlay.drop_file(local)
                    local.close()
            elif local.state == "uploaded":
                self._linger(local)

    # ---- attributes ---------------------------------------------------

    @fuse_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        entry = self._entry(inode)
        node = await self._fresh(inode, entry)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if node.size != attr.st_size or isinstance(node, LocalFileNode):
                node = await self._truncate(inode, entry, node, attr.st_size, fh)
        # Modes, owners and times have no XNAT counterpart: accepted, changed nowhere,
        # so that cp -a and rsync -a can finish.
        return self.attributes(inode, node)

    async def _truncate(self, inode: int, entry, node: Node, size: int, fh) -> Node:
        self._check_writable(node, "truncating")
        handle = self.handles.file(fh) if fh is not None else None
        on_server = not isinstance(node, LocalFileNode) or node.local.replaces_remote \
            or node.local.state == "uploaded"
        if size == 0 and on_server and not isinstance(handle, LocalHandle):
            raise _fail(errno.ENOTSUP, "emptying %s refused: XNAT cannot hold an empty file", entry.path[-1])
        if isinstance(node, LocalFileNode):
            local = node.local
        else:
            local = await self._stage_remote(node.file, truncate=size == 0)
        try:
            await self._call(self.writer.truncate, local, size)
        except OSError:
            if not isinstance(node, LocalFileNode) and await self._call(self.writer.drop_unwritten, local):
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

    @fuse_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._entry(parent_inode)
        pnode = await self._fresh(parent_inode, parent)
        self._check_writable(pnode, f"mkdir {os.fsdecode(name)}")
        text = self._new_name(name, "mkdir")
        if await self._lookup(pnode, text) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if isinstance(pnode, ProjectDir):
            self._check_label(text, "creating a subject")
            await self._call(self.connection.create_subject, pnode.project.id, text)
            self._forget_listings(SubjectsKey(pnode.project.id), ExperimentsKey(pnode.project.id))
        elif isinstance(pnode, SubjectDir):
            self._check_label(text, "creating an experiment")
            await self._call(self.connection.create_experiment, pnode.project_id, pnode.subject.label, text,
                             xsi_type=self.settings.experiment_type)
            self._forget_listings(ExperimentsKey(pnode.project_id))
        elif isinstance(pnode, ResourcesDir):
            await self._call(self.connection.create_resource, pnode.owner_uri, text)
            self._forget_resource_owner(pnode)
        elif isinstance(pnode, ScanDir):
            await self._call(self.connection.create_resource, pnode.uri, text)
            self._forget_listings(ExperimentContentsKey(pnode.experiment.experiment.id))
        elif isinstance(pnode, (ResourceDir, FolderDir)):
            subpath = pnode.subpath if isinstance(pnode, FolderDir) else ()
            self.overlay.add_folder(pnode.resource.uri, subpath + (text,))
        else:
            raise _fail(errno.EPERM, "mkdir %s refused: XNAT has nothing to create there", text)
        node = await self._lookup(pnode, text)
        if node is None:
            raise _fail(errno.EIO, "mkdir %s: created, but the server does not list it", text)
        inode = self.inodes.remember(parent.path + (text,), node)
        return self.attributes(inode, node)

    def _forget_resource_owner(self, node: ResourcesDir) -> None:
        if node.experiment is not None:
            self._forget_listings(ExperimentContentsKey(node.experiment.experiment.id))
        else:
            self._forget_listings(ResourcesKey(node.owner_uri))

    @fuse_handler
    async def rmdir(self, parent_inode, name, ctx):
        _, pnode, text, node = await self._existing_child(parent_inode, name)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._check_writable(node, f"rmdir {text}")
        if isinstance(node, (ResourceDir, FolderDir)):
            if (await self._listing(node)).entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            if isinstance(node, FolderDir):
                self.overlay.drop_folder(node.resource.uri, node.subpath)
                # A folder the server listed lives on in the cached listing (its files are only
                # hidden); reloading the listing lets it go now instead of after the TTL.
                self._forget_listings(self.tree.files_listing_key(node.resource.uri))
                return
            await self._call(self.connection.delete_resource, node.resource.uri)
            self.series.forget(node.resource.uri)
            if isinstance(pnode, ResourcesDir):
                self._forget_resource_owner(pnode)
            elif isinstance(pnode, ScanDir):
                self._forget_listings(ExperimentContentsKey(pnode.experiment.experiment.id))
        elif isinstance(node, (ProjectDir, SubjectDir, ExperimentDir)):
            if not self.settings.allow_delete:
                raise _fail(errno.EPERM, "rmdir %s refused: deleting projects, subjects and experiments "
                            "needs a mount with --allow-delete", text)
            if isinstance(node, ProjectDir):
                await self._call(self.connection.delete_project, node.project.id)
                self._forget_listings(ProjectsKey())
            elif isinstance(node, SubjectDir):
                await self._call(self.connection.delete_subject, node.project_id, node.subject.label)
                self._forget_listings(SubjectsKey(node.project_id), ExperimentsKey(node.project_id))
            else:
                await self._call(self.connection.delete_experiment, node.project_id, node.experiment.id)
                self._forget_listings(ExperimentsKey(node.project_id))
        else:
            raise _fail(errno.EPERM, "rmdir %s refused: XNAT cannot delete that", text)

    # ---- removing files -----------------------------------------------

    @fuse_handler
    async def unlink(self, parent_inode, name, ctx):
        parent, _, text, node = await self._existing_child(parent_inode, name)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._check_writable(node, f"deleting {text}")
        await self._delete_file(node)
        self.inodes.detach(parent.path + (text,))

    async def _delete_file(self, node: Node) -> None:
        if isinstance(node, LocalFileNode):
            local = node.local
            on_server = local.state == "uploaded" or local.replaces_remote
            if on_server and local.target.kind == "file":
                await self._delete_on_server(local.target.resource_uri, local.target.relpath,
                                             missing_ok=local.state != "uploaded")
            await self._call(self.writer.discard, local)
            self.overlay.drop_file(local)
            if on_server:
                self.overlay.hide(local.container, local.relpath)
            return
        if not isinstance(node, FileNode):
            raise pyfuse3.FUSEError(errno.EPERM)
        remote = node.file
        await self._delete_on_server(remote.resource_uri, remote.path, missing_ok=False)
        self.overlay.hide(remote.resource_uri, remote.path)
        uri = self.cache_key(remote).uri
        for held in self.hot.drop_uri(uri):
            held.close()
        await self._call(self.cache.discard_uri, uri)

    async def _delete_on_server(self, resource_uri: str, relpath: str, *, missing_ok: bool) -> None:
        try:
            await self._call(self.connection.delete_file, resource_uri, relpath)
        except XnatNotFound:
            if not missing_ok:
                raise
        self.series.forget(resource_uri)

    # ---- renaming -----------------------------------------------------

    @fuse_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fail(errno.EINVAL, "rename: exchanging entries is not possible on XNAT")
        old_parent, _, old, node = await self._existing_child(parent_inode_old, name_old)
        new_parent = self._entry(parent_inode_new)
        new_pnode = await self._fresh(parent_inode_new, new_parent)
        new = self._new_name(name_new, "mv")
        self._check_writable(node, f"mv {old}")
        self._check_writable(new_pnode, f"mv {old} to {new}")
        existing = await self._lookup(new_pnode, new)
        if existing is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        old_path, new_path = old_parent.path + (old,), new_parent.path + (new,)
        if isinstance(node, (SubjectDir, ExperimentDir)):
            if parent_inode_old != parent_inode_new:
                raise pyfuse3.FUSEError(errno.EXDEV)
            if existing is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            await self._rename_label(node, new)
        elif isinstance(node, (FileNode, LocalFileNode)):
            new_node = await self._move_file(node, new_pnode, new, existing)
            if existing is not None:
                self.inodes.detach(new_path)
            self.inodes.move(old_path, new_path)
            moved = self.inodes.number_of(new_path)
            if moved is not None:
                self.inodes.update(moved, new_node)
            return
        else:
            raise pyfuse3.FUSEError(errno.EXDEV)
        self.inodes.move(old_path, new_path)

    async def _rename_label(self, node: SubjectDir | ExperimentDir, new: str) -> None:
        if isinstance(node, SubjectDir):
            self._check_label(new, "renaming a subject")
            await self._call(self.connection.rename_subject, node.project_id, node.subject.label, new)
            self._forget_listings(SubjectsKey(node.project_id), ExperimentsKey(node.project_id))
        else:
            self._check_label(new, "renaming an experiment")
            await self._call(self.connection.rename_experiment, node.project_id, node.subject_label,
                             node.experiment.label, new)
            self._forget_listings(ExperimentsKey(node.project_id))

    async def _move_file(self, node: Node, new_pnode: Node, new: str, existing: Node | None) -> Node:
        """Upload under the new name, then delete the old one: XNAT cannot rename files."""
        if not isinstance(new_pnode, (ResourceDir, FolderDir)):
            raise pyfuse3.FUSEError(errno.EXDEV)
        source_container = node.local.container if isinstance(node, LocalFileNode) else node.file.resource_uri
        if source_container != new_pnode.resource.uri:
            raise pyfuse3.FUSEError(errno.EXDEV)
        if existing is not None and existing.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        target, container, relpath = self._file_target(new_pnode, new)
        new_on_server = isinstance(existing, FileNode) or (
            isinstance(existing, LocalFileNode) and (existing.local.replaces_remote
                                                     or existing.local.state == "uploaded"))
        if isinstance(existing, LocalFileNode) and not (isinstance(node, LocalFileNode)
                                                        and existing.local is node.local):
            # Descriptors still open on the overwritten file keep it, unlinked: never sent.
            await self._call(self.writer.discard, existing.local)
            self.overlay.drop_file(existing.local)
        if isinstance(node, LocalFileNode):
            moved = await self._rename_local(node.local, target, relpath, replaces_remote=new_on_server)
            return LocalFileNode(mtime=moved.mtime, read_only=False, local=moved)
        moved = await self._stage_remote(node.file, truncate=False, relpath=relpath, container=container)
        moved.dirty = True
        self.overlay.add_file(moved)
        await self._upload(moved)
        await self._delete_file(node)
        return LocalFileNode(mtime=moved.mtime, read_only=False, local=moved)

    async def _rename_local(self, local: LocalFile, target: UploadTarget, relpath: str, *,
                            replaces_remote: bool) -> LocalFile:
        """A file of ours takes the new name: the same file, so descriptors open on
        it write under the new name, and its pending upload goes there too.

        A closed file is sent at once; an open one at its last close. The old
        name is deleted on the server only once the spool holds the bytes.
        """
        old_relpath = local.relpath
        self.overlay.drop_file(local)
        try:
            old_on_server = await self._call(self.writer.retarget, local, target, relpath,
                                             replaces_remote=replaces_remote)
        finally:
            self.overlay.add_file(local)
        if local.handles == 0:
            try:
                await self._upload(local)
            except XnatError as exc:
                # The rename itself is done: the bytes wait in the spool under the new name.
                logger.warning("%s renamed; its upload is pending: %s", target.describe(), exc)
        if old_on_server:
            self.overlay.hide(local.container, old_relpath)
            await self._delete_on_server(local.container, old_relpath, missing_ok=True)
        return local

    # ---- what XNAT has no counterpart for -----------------------------

    # Without a handler the kernel answers ENOSYS ("Function not implemented"),
    # which reads as a broken file system; EPERM is what file systems without
    # links or special files (FAT, for one) answer, and what tools expect.

    @fuse_handler
    async def symlink(self, parent_inode, name, target, ctx):
        raise _fail(errno.EPERM, "symlink %s refused: XNAT has no symbolic links", os.fsdecode(name))

    @fuse_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise _fail(errno.EPERM, "link %s refused: XNAT has no hard links", os.fsdecode(new_name))

    @fuse_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise _fail(errno.EPERM, "mknod %s refused: XNAT holds only files and folders", os.fsdecode(name))

    # ---- uploads in the background ------------------------------------

    def start_background(self, nursery: trio.Nursery) -> None:
        """Show uploads left pending or refused by earlier mounts, and keep retrying the pending ones."""
        self.nursery = nursery
        if self.bids is not None:
            self.bids.nursery = nursery
        nursery.start_soon(self.deadlines.watch)
        nursery.start_soon(self._background_uploads)

    async def _adopt_pending(self) -> None:
        pending = await self._call(self.spool.pending, self.server)
        refused = await self._call(self.spool.refused, self.server)
        for entry in pending + refused:
            if entry.target.kind != "file" or self.overlay.file(entry.target.resource_uri, entry.target.relpath):
                continue
            try:
                local = await self._call(self.writer.adopt, entry)
            except OSError as exc:
                logger.warning("cannot show pending upload %s: %s", entry.id, exc)
                continue
            self.overlay.add_file(local)
        if pending:
            logger.warning("%d upload(s) left pending by an earlier mount; retrying", len(pending))
        if refused:
            logger.warning("%d upload(s) refused by the server wait for `xnatfs uploads retry ID` or "
                           "`uploads discard ID`; see `xnatfs uploads list`", len(refused))

    async def _background_uploads(self) -> None:
        try:
            await self._adopt_pending()
        except Exception:
            logger.exception("reading the upload spool failed")
        await self.retries.run()

    async def _uploads_retried(self) -> None:
        """After a round of retries: files of ours the spool has sent are shown as sent."""
        for local in self.overlay.all_files():
            if await self._call(self.writer.refresh, local):
                self._after_upload(local)
