"""Staging writes in the upload spool and sending them to XNAT.

Every method here blocks (disk and HTTP) and is called from trio worker
threads; a :class:`LocalFile`'s own lock keeps concurrent writes, reads and
uploads of one file apart. The rules:

- bytes go into an open spool entry; an entry that was committed (closed,
  perhaps sent) is never written again: the next write starts
  a new entry with a copy of the bytes, and the superseded entry is dropped;
- ``upload`` commits the entry, then makes one attempt; a failure leaves
  the entry in the spool, sealed (made durable, see ``xnatfs.cache.spool``)
  before the caller hears of it, where the background retry and the next
  mount find it, and is raised to the caller (close/fsync answer EIO). A
  success needs no fsync at all: the server has the bytes;
- a new file nobody wrote into is not sent: XNAT has no empty files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import BinaryIO

from xnatfs.cache.spool import SpoolEntry, UploadSpool, UploadTarget
from xnatfs.cache.uploader import Uploader
from xnatfs.errors import XnatUnsupported
from xnatfs.fs.local import LocalFile

logger = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


class Writer:
    """Local files over one spool and one connection."""

    def __init__(self, spool: UploadSpool, uploader: Uploader):
        self.spool = spool
        self.uploader = uploader

    # ---- staging ------------------------------------------------------

    def stage(self, target: UploadTarget, container: str, relpath: str, *,
              fill: Callable[[BinaryIO], None] | None = None, replaces_remote: bool = False) -> LocalFile:
        """A new local file for ``target``, empty or filled by ``fill(fileobj)``."""
        entry = self.spool.create(target)
        fd = os.open(entry.data_path, os.O_RDWR | os.O_CLOEXEC)
        local = LocalFile(target=entry.target, container=container, relpath=relpath,
                          fd=fd, entry=entry, replaces_remote=replaces_remote)
        if fill is not None:
            try:
                with os.fdopen(os.dup(fd), "wb") as sink:
                    fill(sink)
            except BaseException:
                self.discard(local)
                raise
            local.size = os.fstat(fd).st_size
        return local

    def adopt(self, entry: SpoolEntry) -> LocalFile:
        """A file upload left pending (or refused) by an earlier mount, shown until it is sent or dropped."""
        fd = os.open(entry.data_path, os.O_RDONLY | os.O_CLOEXEC)
        return LocalFile(target=entry.target, container=entry.target.resource_uri, relpath=entry.target.relpath,
                         fd=fd, entry=entry, replaces_remote=True, size=os.fstat(fd).st_size,
                         entry_open=False, state=entry.state if entry.state in ("failed", "refused") else "pending",
                         error=entry.last_error, mtime=entry.created)

    def _writable(self, local: LocalFile) -> None:
        """Make sure the next write lands in an open spool entry (caller holds the lock).

        A file unlinked while open is written in place: nothing of it goes to XNAT.
        """
        if local.entry_open or local.unlinked:
            return
        previous = local.entry
        entry = self.spool.create(local.target)
        fd = os.open(entry.data_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            _copy_descriptor(local.fd, fd, local.size)
        except BaseException:
            os.close(fd)
            self.spool.remove(entry)
            raise
        os.close(local.fd)
        local.fd, local.entry, local.entry_open = fd, entry, True
        local.state = "writing"
        if previous is not None and self.spool.get(previous.id) is not None:
            # Not accepted yet, and now out of date: these bytes replace it.
            self.spool.remove(previous)

    def write(self, local: LocalFile, offset: int, data: bytes) -> int:
        with local.lock:
            self._writable(local)
            written = os.pwrite(local.fd, data, offset)
            local.size = max(local.size, offset + written)
            local.dirty = True
            return written

    def truncate(self, local: LocalFile, size: int) -> None:
        with local.lock:
            self._writable(local)
            os.ftruncate(local.fd, size)
            local.size = size
            local.dirty = True

    def read(self, local: LocalFile, offset: int, length: int) -> bytes:
        with local.lock:
            return os.pread(local.fd, length, offset)

    # ---- sending ------------------------------------------------------

    def upload(self, local: LocalFile) -> bool:
        """Send what changed since the last upload; True if something was sent.

        Raises the server's error (the bytes stay pending in the spool).
        """
        with local.lock:
            if local.unlinked or not (local.dirty or local.state in ("pending", "failed")):
                return False
            if local.size == 0 and local.target.kind == "file":
                return self._keep_empty(local)
            entry = local.entry
            if local.entry_open:
                self.spool.commit(entry)
                local.entry_open = False
            local.dirty = False
            local.state = "pending"
        try:
            self.uploader.push(entry)
        except Exception as exc:
            self._keep_durably(entry)
            with local.lock:
                if local.entry is entry:
                    local.state = "refused" if entry.state == "refused" else "failed"
                    local.error = str(exc)
            raise
        with local.lock:
            if local.entry is entry:
                local.entry, local.state, local.error = None, "uploaded", ""
        return True

    def _keep_durably(self, entry: SpoolEntry) -> None:
        """After a failed attempt: the bytes wait in the spool, so make them
        survive a power loss (usually done already with the failure)."""
        try:
            self.spool.seal(entry)
        except OSError as exc:
            logger.error("upload %s (%s) could not be made durable in the spool: %s",
                         entry.id, entry.target.describe(), exc)

    def _keep_empty(self, local: LocalFile) -> bool:
        """An empty file: XNAT cannot store one (caller holds the lock)."""
        local.dirty = False
        if local.entry is not None:
            self.spool.remove(local.entry)
            local.entry, local.entry_open = None, False
        if local.replaces_remote:
            local.state = "failed"
            raise XnatUnsupported(f"XNAT cannot hold an empty file ({local.target.describe()})")
        local.state = "empty"
        logger.warning("%s is empty and stays local: XNAT does not store empty files", local.target.describe())
        return False

    def refresh(self, local: LocalFile) -> bool:
        """After a background retry: True once the spool no longer holds the entry (it was sent)."""
        with local.lock:
            entry = local.entry
            if entry is None or local.entry_open or local.state not in ("pending", "failed", "refused"):
                return False
            current = self.spool.get(entry.id)
            if current is None:
                local.entry, local.state, local.error = None, "uploaded", ""
                return True
            local.state, local.error = current.state, current.last_error
            return False

    def discard(self, local: LocalFile) -> None:
        """Forget a local file: its unsent bytes leave the spool. The bytes stay
        readable through handles still open on it; the last one closes it."""
        with local.lock:
            local.unlinked = True
            entry, local.entry = local.entry, None
        if entry is not None:
            self.spool.remove(entry)
        if local.handles == 0:
            local.close()


def _copy_descriptor(source: int, destination: int, size: int) -> None:
    offset = 0
    while offset < size:
        chunk = os.pread(source, min(COPY_CHUNK, size - offset), offset)
        if not chunk:
            break
        os.pwrite(destination, chunk, offset)
        offset += len(chunk)
