"""Staging writes in the upload spool and sending them to XNAT.

Every method here blocks (disk and HTTP) and is called from trio worker
threads, but :meth:`Writer.write_at_once`; a :class:`LocalFile`'s own lock
keeps concurrent writes, reads and uploads of one file apart. The rules:

- bytes go into an open spool entry; an entry that was committed (closed,
  perhaps sent) is never written again: the next write starts
  a new entry with a copy of the bytes, and the superseded entry is dropped;
- ``upload`` commits the entry, then makes one attempt; a failure leaves
  the entry in the spool, sealed (made durable, see ``xnatfs.cache.spool``)
  before the caller hears of it, where the background retry and the next
  mount find it, and is raised to the caller (close/fsync answer EIO). A
  success needs no fsync at all: the server has the bytes;
- a version whose upload the server may still carry out (it failed once its request
  may have reached the server, or went through only when sent again) is noted in
  ``LocalFile.doubted``, for ``LateChanges.confirm_sent`` once a newer one is sent;
- a new file nobody wrote into is not sent: XNAT has no empty files;
- a file grows only as far as the spool's disk has room for it (less a
  reserve, ENOSPC; cached contents sharing that disk are evicted first) and
  up to the mount's largest file size (EFBIG): a huge ``truncate`` or
  ``posix_fallocate`` fails at once instead of staging, and at close
  sending, gigabytes of zeros.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import BinaryIO

from xnatfs.cache.files import disk_free
from xnatfs.cache.spool import SpoolEntry, UploadSpool, UploadTarget, data_digest, descriptor_digest
from xnatfs.cache.uploader import Uploader
from xnatfs.client.changes import SentChanges, watching_changes
from xnatfs.errors import XnatUnsupported, is_permanent_refusal
from xnatfs.fs.local import LocalFile
from xnatfs.fs.settings import DEFAULT_MAX_FILE_SIZE

logger = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
# A write up to this size may be done on the event loop's thread (Writer.write_at_once): handing
# it to a worker thread and back costs far more than the write itself, a copy into the page
# cache, and tar and unzip write in pieces of 10 and 32 KiB.
WRITE_AT_ONCE_BYTES = 128 << 10
# Room left on the spool's disk for records, copies made at the next write, and everyone else.
SPOOL_RESERVE = 64 << 20


class Writer:
    """Local files over one spool and one connection."""

    def __init__(
        self,
        spool: UploadSpool,
        uploader: Uploader,
        *,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        make_disk_room: Callable[[int], int] | None = None,
    ):
        self.spool = spool
        self.uploader = uploader
        self.max_file_size = max_file_size
        # The content cache's ContentCache.make_disk_room, when it shares the spool's disk:
        # written bytes come before cached copies of the server's.
        self.make_disk_room = make_disk_room

    # ---- staging ------------------------------------------------------

    def stage(
        self,
        target: UploadTarget,
        container: str,
        relpath: str,
        *,
        fill: Callable[[BinaryIO], None] | None = None,
        copy_of: str = "",
        replaces_remote: bool = False,
    ) -> LocalFile:
        """A new local file for ``target``, empty or filled by ``fill(fileobj)`` (with the
        server's file whose MD5 is ``copy_of``, if known)."""
        entry = self.spool.create(target, copy_of=copy_of)
        fd = os.open(entry.data_path, os.O_RDWR | os.O_CLOEXEC)
        local = LocalFile(
            target=entry.target,
            container=container,
            relpath=relpath,
            fd=fd,
            entry=entry,
            replaces_remote=replaces_remote,
        )
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
        return LocalFile(
            target=entry.target,
            container=entry.target.resource_uri,
            relpath=entry.target.relpath,
            fd=fd,
            entry=entry,
            replaces_remote=True,
            size=os.fstat(fd).st_size,
            entry_open=False,
            state=entry.state if entry.state in ("failed", "refused") else "pending",
            error=entry.last_error,
            mtime=entry.created,
        )

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
        # Sent before, and shown only until the listings had caught up: now it has to be sent
        # again, and stays shown until then, whether that takes one try or many.
        local.expires = None
        if previous is not None and self.spool.get(previous.id) is not None:
            # Not accepted yet, and now out of date: these bytes replace it.
            self.spool.remove(previous)

    def _check_room(self, local: LocalFile, size: int, *, may_evict: bool = True) -> bool:
        """Refuse to grow a file to ``size`` bytes beyond what may be staged (caller holds the lock).

        False, without a word, when the room would have to be made by evicting cached
        files and ``may_evict`` is False."""
        if size <= local.size:
            return True
        if size > self.max_file_size:
            raise OSError(
                errno.EFBIG,
                f"{local.target.describe()} would grow to {size} bytes, "
                f"more than the largest file the mount takes ({self.max_file_size} bytes)",
            )
        room = disk_free(self.spool.directory) - SPOOL_RESERVE
        if size - local.size > room and self.make_disk_room is not None:
            if not may_evict:
                return False
            room = self.make_disk_room(size - local.size + SPOOL_RESERVE) - SPOOL_RESERVE
        if size - local.size > room:
            raise OSError(
                errno.ENOSPC,
                f"{local.target.describe()} would grow to {size} bytes; "
                f"the upload spool has room for {max(room, 0)} more",
            )
        return True

    def write(self, local: LocalFile, offset: int, data: bytes) -> int:
        with local.lock:
            self._check_room(local, offset + len(data))
            self._writable(local)
            return self._put(local, offset, data)

    def write_at_once(self, local: LocalFile, offset: int, data: bytes) -> int | None:
        """:meth:`write`, when it cannot take long, so the caller need not leave the event
        loop: a small piece, into the open spool entry (no copy to make), with room on the
        disk (no cached file to evict), while nobody else holds the file. None: not written,
        use :meth:`write`."""
        if len(data) > WRITE_AT_ONCE_BYTES or not local.lock.acquire(blocking=False):
            return None
        try:
            if not (local.entry_open or local.unlinked):
                return None
            if not self._check_room(local, offset + len(data), may_evict=False):
                return None
            return self._put(local, offset, data)
        finally:
            local.lock.release()

    @staticmethod
    def _put(local: LocalFile, offset: int, data: bytes) -> int:
        written = os.pwrite(local.fd, data, offset)
        local.size = max(local.size, offset + written)
        local.dirty = True
        local.mtime = time.time()
        return written

    def truncate(self, local: LocalFile, size: int) -> None:
        with local.lock:
            self._check_room(local, size)
            self._writable(local)
            os.ftruncate(local.fd, size)
            local.size = size
            local.dirty = True
            local.mtime = time.time()

    def retarget(self, local: LocalFile, target: UploadTarget, relpath: str, *, replaces_remote: bool) -> bool:
        """Give a local file a new name (a rename): the same file, so its open
        descriptors keep writing into it, and what it holds is sent under the
        new name at the next upload. True when the old name holds a copy of
        it on the server, which the caller deletes.
        """
        with local.lock:
            old_on_server = local.replaces_remote or local.state == "uploaded"
            if local.entry is not None and not self.spool.retarget(local.entry, target):
                # Sent under the old name while we waited for it.
                local.entry, local.entry_open, old_on_server = None, False, True
            local.target, local.relpath, local.replaces_remote = target, relpath, replaces_remote
            if local.entry is None:
                # The bytes are only on the server (under the old name) and in
                # our descriptor: the spool must hold them before that name goes.
                self._writable(local)
            if local.entry_open:
                local.dirty = True
            return old_on_server

    def read(self, local: LocalFile, offset: int, length: int) -> bytes:
        with local.lock:
            return os.pread(local.fd, length, offset)

    # ---- sending ------------------------------------------------------

    def upload(self, local: LocalFile, *, final: bool = True) -> bool:
        """Send what changed since the last upload; True if something was sent.

        Raises the server's error (the bytes stay pending in the spool).
        Not ``final`` (a flush or fsync while the file stays open, e.g. the
        shell closing one copy of a redirect's descriptor): a new file still
        empty is left alone, since what is written next decides its fate.
        """
        with local.lock:
            if local.unlinked or not (local.dirty or local.state in ("pending", "failed")):
                return False
            if local.size == 0 and local.target.kind == "file":
                if not final and not local.replaces_remote:
                    return False
                return self._keep_empty(local)
            entry = local.entry
            assert entry is not None  # a file with bytes to send keeps its spool entry
            if local.entry_open:
                self.spool.commit(entry)
                local.entry_open = False
            local.dirty = False
            local.state = "pending"
        sent = SentChanges()
        try:
            # Its MD5 is worked out after the close has its answer (hash_sent).
            with watching_changes(sent):
                self.uploader.push(entry, hashed=False)
        except Exception as exc:
            self._keep_durably(entry)
            doubted = self._digest(entry) if sent.count and not is_permanent_refusal(exc) else ""
            with local.lock:
                if doubted:
                    local.doubted.add(doubted)
                if local.entry is entry:
                    local.state = "refused" if entry.state == "refused" else "failed"
                    local.error = str(exc)
            raise
        with local.lock:
            if local.entry is entry:
                self._sent(local, "")
                if sent.count > 1:
                    # Sent again after an attempt the server may carry out later still: after
                    # a newer version of the file, whose upload then has it looked at.
                    local.sent_md5 = descriptor_digest(local.fd)[1]
                    local.doubted.add(local.sent_md5)
        return True

    @staticmethod
    def hash_sent(local: LocalFile, mtime: float) -> None:
        """Work out the MD5 of a file just sent (``mtime``: its time then), unless it has
        changed since: what lets it keep its time once the server lists it (blocking)."""
        digest = hashlib.md5(usedforsecurity=False)
        offset = 0
        while True:
            with local.lock:
                if local.fd < 0 or local.mtime != mtime:
                    return
                chunk = os.pread(local.fd, COPY_CHUNK, offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        with local.lock:
            if local.state == "uploaded" and local.mtime == mtime and local.size == offset:
                local.sent_md5 = digest.hexdigest()

    def _digest(self, entry: SpoolEntry) -> str:
        """The MD5 of an entry's bytes: recorded when it was sealed, else worked out ("" if gone)."""
        current = self.spool.get(entry.id)
        if current is not None and current.data_md5:
            return current.data_md5
        try:
            return data_digest(entry.data_path)[1]
        except OSError:
            return ""

    def send_copy(self, target: UploadTarget, fd: int) -> None:
        """Send the bytes ``fd`` reads to ``target`` through a spool entry of their own,
        which waits there for the retries if the server does not take them now (raised)."""
        entry = self.spool.create(target)
        try:
            with open(entry.data_path, "r+b") as sink:
                _copy_descriptor(fd, sink.fileno(), os.fstat(fd).st_size)
        except BaseException:
            self.spool.remove(entry)
            raise
        self.spool.commit(entry)
        try:
            self.uploader.push(entry, hashed=False)
        except Exception:
            self._keep_durably(entry)
            raise

    @staticmethod
    def _sent(local: LocalFile, digest: str) -> None:
        """The server holds the file under its name now (``digest``: the MD5 of what it got,
        "" unknown): emptying it later is refused like emptying any file XNAT holds (caller
        holds the lock)."""
        local.entry, local.state, local.error = None, "uploaded", ""
        local.replaces_remote = True
        local.sent_md5 = digest

    def _keep_durably(self, entry: SpoolEntry) -> None:
        """After a failed attempt: the bytes wait in the spool, so make them
        survive a power loss (usually done already with the failure)."""
        try:
            self.spool.seal(entry)
        except OSError as exc:
            logger.error(
                "upload %s (%s) could not be made durable in the spool: %s", entry.id, entry.target.describe(), exc
            )

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
                self._sent(local, self.uploader.sent_digest(entry.id))
                return True
            local.state, local.error = current.state, current.last_error
            return False

    def drop_unwritten(self, local: LocalFile) -> bool:
        """After the last close: a copy staged for writing that nobody wrote
        into leaves the spool, so nothing of it stays behind. True if dropped."""
        with local.lock:
            if local.entry is None or not local.entry_open or local.dirty or local.unlinked or local.handles:
                return False
            entry, local.entry, local.entry_open = local.entry, None, False
        self.spool.remove(entry)
        return True

    def forget_discarded(self, local: LocalFile) -> None:
        """``xnatfs uploads discard`` dropped the file's upload: it is not ours to show any
        more. Descriptors still open on it keep its bytes, unsent."""
        with local.lock:
            local.unlinked = True
            local.entry = None
        if local.handles == 0:
            local.close()

    def discard(self, local: LocalFile) -> bool:
        """Forget a local file: its unsent bytes leave the spool. The bytes stay
        readable through handles still open on it; the last one closes it.

        True when they had been sent after all, by a retry this file had not
        heard of yet or by ``xnatfs uploads retry``: the server holds them."""
        with local.lock:
            local.unlinked = True
            entry, local.entry = local.entry, None
        sent = entry is not None and not self.spool.withdraw(entry)
        if local.handles == 0:
            local.close()
        return sent


def _copy_descriptor(source: int, destination: int, size: int) -> None:
    offset = 0
    while offset < size:
        chunk = os.pread(source, min(COPY_CHUNK, size - offset), offset)
        if not chunk:
            break
        os.pwrite(destination, chunk, offset)
        offset += len(chunk)
