"""Sending spooled uploads to XNAT.

An entry is removed from the spool right after the server confirmed it.
For a DICOM import that matters most: sending the same zip twice could
import it twice. The one window left is between the server's answer and the
removal of the record (one unlink, and for a sealed entry a directory
fsync): a process killed exactly there would send the entry again on the
next retry. A process killed while the request is still in flight leaves
the entry pending too, since the server's answer never arrived.

A client error that sending again cannot change (see
:func:`xnatfs.errors.is_permanent_refusal`) leaves the entry ``refused``:
never sent again on its own, so a file whose name or content the server
will not take does not go out every few minutes for ever.

Before anything is sent the spool checks that the bytes are the ones it
recorded (:meth:`UploadSpool.check`); bytes a power loss may have damaged
stay in the spool as failed and are never sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import trio

from xnatfs.cache.spool import SpoolEntry, UploadSpool
from xnatfs.client.budget import Budget, bounded_by
from xnatfs.client.contract import ArchiveClient
from xnatfs.errors import XnatError, XnatUnavailable, is_permanent_refusal

logger = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 2.0
RETRY_CHECK_SECONDS = 30.0  # the longest a mount's retries sleep between rounds
FINAL_UPLOAD_SECONDS = 60.0  # what an unmount gives the last attempt
MAX_RETRY_DELAY = 300.0
# requests sends a file object 16 KiB per system call; a file up to this size
# is read whole and goes out in one, which for the many-small-files case
# (cp -r of a folder) is a good part of the time spent per upload. Small
# enough that uploads in every worker thread at once stay within memory.
SEND_FROM_MEMORY_LIMIT = 4 << 20


@dataclass
class PushReport:
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # busy elsewhere, or not due yet
    errors: list[tuple[str, str]] = field(default_factory=list)  # (entry id, message)


class Uploader:
    """Sends spool entries through an :class:`~xnatfs.client.contract.ArchiveClient`."""

    def __init__(self, spool: UploadSpool, connection: ArchiveClient):
        self.spool = spool
        self.connection = connection
        self._sending: dict[str, BinaryIO] = {}  # entry ID → its staged file, while it is sent
        # Entry ID → the MD5 of what the server got, for entries sent by push_pending
        # (the background retries, or `uploads retry`), until asked for (sent_digest).
        self._sent_digests: dict[str, str] = {}

    def sending(self) -> dict[str, int]:
        """Entry ID → bytes of its staged file read so far, for each upload under way in this process."""
        progress = {}
        for entry_id, source in list(self._sending.items()):
            try:
                progress[entry_id] = source.tell()
            except ValueError:
                continue  # finished and closed meanwhile
        return progress

    def push(self, entry: SpoolEntry, *, hashed: bool = True) -> str:
        """One attempt. On success the entry leaves the spool; on failure the
        attempt is recorded and the error raised. Waits if another thread or
        process is sending the same entry, then does nothing if that one succeeded.

        Returns the MD5 of the bytes the server got: "" when another sent them,
        or when not ``hashed`` (a caller that waits for the upload and would
        rather work it out later)."""
        return self._push(entry, wait=True, hashed=hashed) or ""

    def sent_digest(self, entry_id: str) -> str:
        """The MD5 of what push_pending sent for the entry ("" if it did not), told once."""
        return self._sent_digests.pop(entry_id, "")

    def sent_digests(self) -> dict[str, str]:
        """Entry ID → MD5 of what push_pending sent, for every entry not asked about yet; told once."""
        digests, self._sent_digests = self._sent_digests, {}
        return digests

    def note_sent(self, digests: dict[str, str]) -> None:
        """What another process (``xnatfs uploads retry``) sent, as its :meth:`sent_digests` said."""
        self._sent_digests.update(digests)

    def push_pending(self, server: str | None = None, *, due_only: bool = False) -> PushReport:
        """Try every pending entry once, oldest first. With ``due_only``,
        entries still inside their back-off delay are skipped."""
        report = PushReport()
        now = time.time()
        pending = self.spool.pending(server)
        for done, entry in enumerate(pending):
            if due_only and now < self.retry_at(entry):
                report.skipped += 1
                continue
            try:
                digest = self._push(entry, wait=False)
            except XnatUnavailable:
                # The server is known to be silent: no use trying the others now.
                report.skipped += len(pending) - done
                break
            except Exception as exc:
                report.failed += 1
                report.errors.append((entry.id, str(exc)))
                continue
            if digest is None:
                report.skipped += 1
            else:
                report.ok += 1
                if digest:
                    self._sent_digests[entry.id] = digest
        return report

    def next_retry_delay(self, entry: SpoolEntry) -> float:
        """Seconds to wait after the last attempt: doubling from 2 s up to
        5 min, stretched by up to half again so that entries failed together
        are not retried together. The stretch is fixed per entry and attempt."""
        if entry.attempts <= 0:
            return 0.0
        base = min(FIRST_RETRY_DELAY * 2 ** (entry.attempts - 1), MAX_RETRY_DELAY)
        seed = hashlib.sha256(f"{entry.id}:{entry.attempts}".encode()).digest()
        spread = int.from_bytes(seed[:4], "big") / 2**32
        return float(min(base * (1 + spread / 2), MAX_RETRY_DELAY))

    def retry_at(self, entry: SpoolEntry) -> float:
        """When (time.time() scale) the entry is next due."""
        return entry.updated + self.next_retry_delay(entry)

    def _push(self, entry: SpoolEntry, *, wait: bool, hashed: bool = True) -> str | None:
        """Send the entry; the MD5 of what the server got ("" unknown), None when not sent here."""
        with self.spool.claim(entry, wait=wait) as current:
            if current is None:
                return None
            if current.state == "refused":
                # Refused while the caller waited for it: a user decides whether it goes again.
                _follow(entry, current)
                raise XnatError(f"{current.target.describe()}: refused by the server: {current.last_error}")
            refusal = self.spool.check(current)
            if refusal:
                self.spool.record_failure(current, refusal, seal=False)
                _follow(entry, current)
                logger.error(
                    "upload %s (%s) kept in the spool, not sent: %s", current.id, current.target.describe(), refusal
                )
                raise XnatError(f"{current.target.describe()}: {refusal}")
            try:
                digest = self._send(current, hashed)
            except XnatUnavailable:
                # Refused before anything was sent: not an attempt, so the
                # entry is tried again as soon as the server answers.
                raise
            except Exception as exc:
                refused = is_permanent_refusal(exc)
                self.spool.record_failure(current, str(exc), refused=refused)
                _follow(entry, current)
                if refused:
                    logger.error(
                        "upload %s (%s) refused by the server; kept in the spool, not sent again "
                        "until `xnatfs uploads retry %s` (or `uploads discard`): %s",
                        current.id,
                        current.target.describe(),
                        current.id,
                        exc,
                    )
                else:
                    logger.warning(
                        "upload %s (%s) failed, attempt %d: %s",
                        current.id,
                        current.target.describe(),
                        current.attempts,
                        exc,
                    )
                raise
            self.spool.remove(current)
        logger.info("uploaded %s (%s)", entry.id, entry.target.describe())
        return digest

    def _send(self, entry: SpoolEntry, hashed: bool) -> str:
        with open(entry.data_path, "rb") as source:
            self._sending[entry.id] = source
            try:
                return self._send_from(entry, source, hashed)
            finally:
                del self._sending[entry.id]

    def _send_from(self, entry: SpoolEntry, source: BinaryIO, hashed: bool) -> str:
        """Send the staged file; if ``hashed``, the MD5 of what went out ("" for an import)."""
        target = entry.target
        if target.kind != "file":
            self.connection.import_dicom_zip(target.project, target.subject, target.experiment, source)
            return ""
        if os.fstat(source.fileno()).st_size <= SEND_FROM_MEMORY_LIMIT:
            body = source.read()
            self.connection.upload_file(target.resource_uri, target.relpath, body, overwrite=True)
            return hashlib.md5(body, usedforsecurity=False).hexdigest() if hashed else ""
        if not hashed:
            self.connection.upload_file(target.resource_uri, target.relpath, source, overwrite=True)
            return ""
        body_hashed = HashedBody(source)
        self.connection.upload_file(target.resource_uri, target.relpath, cast(BinaryIO, body_hashed), overwrite=True)
        return body_hashed.hexdigest()


class HashedBody:
    """A staged file sent as a request body, hashed as it goes out.

    Only bytes read in one pass from the start count: a rewind to the start
    (the request sent again) starts over; any other seek leaves no digest."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._position = 0
        self._whole = True

    def read(self, size: int = -1) -> bytes:
        block = self._file.read(size)
        if self._whole:
            self._md5.update(block)
        self._position += len(block)
        return block

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if position == 0:
            self._md5, self._whole = hashlib.md5(usedforsecurity=False), True
        elif position != self._position:
            self._whole = False
        self._position = position
        return position

    def hexdigest(self) -> str:
        """The MD5 of the file as read; "" unless it was read whole, in order."""
        at_end = self._position == os.fstat(self._file.fileno()).st_size
        return self._md5.hexdigest() if self._whole and at_end else ""

    def __getattr__(self, name: str) -> Any:
        # tell, seekable, fileno, name: what requests and the retries ask of a file.
        return getattr(self._file, name)


class UploadRetries:
    """The background retries of one mount's pending uploads, on their own schedule.

    Every round sends the entries that are due (the first round, every pending one;
    each under a budget of ``timeout`` seconds without progress, so a silent server
    holds a round up no longer than a request), then tells the mount through
    ``after_round`` so it can show what was sent, and sleeps until the next
    entry is due (at most :data:`RETRY_CHECK_SECONDS`) or until
    :meth:`wake` says a fresh failure wants looking at.
    """

    def __init__(
        self,
        uploader: Uploader,
        server: str,
        *,
        timeout: float,
        limiter: trio.CapacityLimiter,
        after_round: Callable[[], Awaitable[None]],
    ):
        self.uploader = uploader
        self.server = server
        self.timeout = timeout
        self.limiter = limiter
        self.after_round = after_round
        self._wakeup = trio.Event()

    def wake(self) -> None:
        """An upload just failed: look again now to learn when it is due."""
        self._wakeup.set()

    async def run(self) -> None:
        """Retry rounds until cancelled. The first sends every pending upload, due or not:
        a new mount is what a user starts to have them sent (the server may be back)."""
        delay, due_only = 0.0, False
        while True:
            with trio.move_on_after(delay):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            try:
                delay = await self._round(due_only=due_only)
            except Exception:
                logger.exception("retrying uploads failed")
                delay = RETRY_CHECK_SECONDS
            due_only = True

    async def _round(self, *, due_only: bool) -> float:
        """Send the pending uploads (those due, with ``due_only``); seconds until the next round."""
        report = await trio.to_thread.run_sync(
            self._push_pending, due_only, limiter=self.limiter, abandon_on_cancel=True
        )
        if report.ok or report.failed:
            logger.info("upload retry: %d sent, %d failed", report.ok, report.failed)
        await self.after_round()
        pending = await trio.to_thread.run_sync(
            self.uploader.spool.pending, self.server, limiter=self.limiter, abandon_on_cancel=True
        )
        if not pending:
            return RETRY_CHECK_SECONDS
        soonest = min(self.uploader.retry_at(entry) for entry in pending)
        return min(max(soonest - time.time(), 0.5), RETRY_CHECK_SECONDS)

    def _push_pending(self, due_only: bool) -> PushReport:
        with bounded_by(Budget(self.timeout)):
            return self.uploader.push_pending(self.server, due_only=due_only)

    def finish(self, budget: float = FINAL_UPLOAD_SECONDS) -> None:
        """At unmount: one more attempt for what is pending, for at most ``budget`` seconds (blocking)."""
        pending = self.uploader.spool.pending(self.server)
        if not pending:
            return
        logger.info("sending %d pending upload(s) before exiting", len(pending))
        deadline = time.monotonic() + budget
        left = 0
        # A silent server holds the exit up for one timeout at most, not one per upload.
        with bounded_by(Budget(self.timeout)):
            for entry in pending:
                if time.monotonic() > deadline:
                    left += 1
                    continue
                try:
                    self.uploader.push(entry)
                except XnatError:
                    left += 1
        if left:
            logger.warning(
                "%d upload(s) still pending; they are sent by the next mount or `xnatfs uploads retry`", left
            )


def _follow(entry: SpoolEntry, current: SpoolEntry) -> None:
    """Bring the caller's copy of an entry up to its record."""
    entry.state, entry.attempts, entry.last_error, entry.updated = (
        current.state,
        current.attempts,
        current.last_error,
        current.updated,
    )
    entry.data_size, entry.data_md5 = current.data_size, current.data_md5
