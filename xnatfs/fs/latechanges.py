"""Changes the server may carry out after the mount gave up on them.

XNAT has no conditional writes. An upload or a deletion whose answer never
came (or came only when it was sent again) may still be carried out after a
newer version of the file was sent, and the older bytes would stay, or the
file go, silently. :class:`LateChanges` remembers such changes and, once a
newer version of the file is sent (or the file renamed away), looks at what
the server lists a few times over the next minutes and puts things right:
sends the newer version again, or deletes a late copy under the old name
(docs/SEMANTICS.md section 5, docs/RELIABILITY.md problem 65).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from xnatfs.cache.spool import UploadTarget, descriptor_digest
from xnatfs.cache.uploader import UploadRetries
from xnatfs.client.budget import Budget, bounded_by
from xnatfs.client.contract import ArchiveClient
from xnatfs.errors import XnatError
from xnatfs.fs.local import ABSENT, LocalFile
from xnatfs.fs.writing import Writer

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After a file whose earlier upload was left in doubt is sent: when to look at what the
# server lists of it, in multiples of the request timeout after the last look.
CONFIRM_WAITS = (1, 2, 4)


class LateChanges:
    """What the server may still carry out of the mount's changes, and the looks after it."""

    def __init__(
        self,
        *,
        client: ArchiveClient,
        writer: Writer,
        retries: UploadRetries,
        timeout: float,
        limiter: trio.CapacityLimiter,
        forget_files: Callable[[str], None],
        in_background: Callable[[Callable[[], Awaitable[None]]], None],
    ):
        self.client = client
        self.writer = writer
        self.retries = retries
        self.timeout = timeout
        self.limiter = limiter
        self.forget_files = forget_files  # a resource's file listing, to be loaded again
        self.in_background = in_background
        # Files confirm_sent looks after → whether a newer version was sent since it started.
        self._confirming: dict[LocalFile, bool] = {}
        # Old names clear_old_name looks after → whether a file was sent under that name since.
        self._clearing: dict[tuple[str, str], bool] = {}
        # (resource URI, path) → when a deletion of that file failed once it may have reached the server.
        self._doubted_deletes: dict[tuple[str, str], float] = {}

    def file_sent(self, local: LocalFile) -> None:
        """A file was sent: if a change of its name before it may still be carried out
        (see :meth:`confirm_sent`), have the server's copy looked at."""
        key = (local.target.resource_uri, local.target.relpath)
        if key in self._clearing:
            self._clearing[key] = True
        deleted = self._doubted_deletes.pop(key, None)
        if deleted is not None and time.monotonic() - deleted < self._span():
            local.doubted.add(ABSENT)
        if not local.doubted:
            return
        if local in self._confirming:
            self._confirming[local] = True
        else:
            self._confirming[local] = False
            self.in_background(functools.partial(self.confirm_sent, local))

    def deletion_failed(self, resource_uri: str, relpath: str) -> None:
        """A deletion failed once it may have reached the server: it may be carried out yet,
        after a file sent under this name, which :meth:`confirm_sent` sees to."""
        now = time.monotonic()
        self._doubted_deletes = {key: when for key, when in self._doubted_deletes.items() if now - when < self._span()}
        self._doubted_deletes[(resource_uri, relpath)] = now

    def watch_old_name(self, target: UploadTarget, doubted: frozenset[str]) -> None:
        """A file left ``target`` (renamed away) while uploads of it there are in doubt."""
        self._clearing[(target.resource_uri, target.relpath)] = False
        self.in_background(functools.partial(self.clear_old_name, target, set(doubted)))

    async def confirm_sent(self, local: LocalFile) -> None:
        """``local`` was sent after an upload of an older version of it, or a deletion of its
        name, went unanswered (or was answered only when sent again). The server may carry
        that one out still, after ours: XNAT has no conditional writes, and the older bytes
        would stay, or the file go. So look at the MD5 the server lists for it a few times
        over the next minutes, and send ours again should it list one of those versions, or
        none. Each newer version sent meanwhile is looked after in turn. In the background;
        it ends once the file is removed through the mount, or the server lists a version
        that is not the mount's."""
        try:
            while await self._confirm_version(local):
                pass
        except Exception:
            # Background work: nothing of it may end the mount.
            logger.exception("looking at what the server holds of %s failed", local.target.describe())
        finally:
            self._confirming.pop(local, None)

    async def _confirm_version(self, local: LocalFile) -> bool:
        """:meth:`confirm_sent` for the version sent last; True when a newer one was sent
        meanwhile. With a descriptor of its own on the bytes: the mount may stop showing
        its copy of the file meanwhile."""
        self._confirming[local] = False
        with local.lock:
            fd = os.dup(local.fd) if local.fd >= 0 else -1
        if fd < 0:
            return False
        mtime, target, doubted = local.mtime, local.target, set(local.doubted)
        try:
            ours = (await self._background_call(descriptor_digest, fd))[1]
            for wait in CONFIRM_WAITS:
                await trio.sleep(wait * self.timeout)
                if self._confirming.get(local):
                    return True
                if local.mtime != mtime or local.unlinked:
                    return False  # its next upload asks again; removed: nothing to look after
                try:
                    listed = await self._background_call(self.listed_digest, target)
                except XnatError as exc:
                    logger.debug("could not look at %s on the server: %s", target.describe(), exc)
                    continue
                found = ABSENT if listed is None else listed
                if found == ours:
                    continue
                if found not in doubted:
                    return False  # another version, or gone: someone else's change
                logger.warning(
                    "%s: the server carried out an earlier change of it, one left unanswered, after the "
                    "last upload; sending the last one again",
                    target.describe(),
                )
                try:
                    await self._background_call(self.writer.send_copy, target, fd)
                except (XnatError, OSError) as exc:
                    logger.error(
                        "%s: sending it again failed; kept in the spool for another try: %s", target.describe(), exc
                    )
                    self.retries.wake()
                    return False
                self.forget_files(target.resource_uri)
            local.doubted -= doubted
            return False
        finally:
            os.close(fd)

    async def clear_old_name(self, target: UploadTarget, doubted: set[str]) -> None:
        """A file was renamed away from ``target`` while uploads of it there (versions
        ``doubted``) went unanswered: carried out later, one would bring the old name back.
        Look at that name 1, 2 and 4 timeouts later, and delete a copy found there with one
        of those versions. In the background; it ends once another file holds the name, or
        the mount sent one under it."""
        key = (target.resource_uri, target.relpath)
        try:
            for wait in CONFIRM_WAITS:
                await trio.sleep(wait * self.timeout)
                try:
                    listed = await self._background_call(self.listed_digest, target)
                    if listed is None:
                        continue
                    if listed not in doubted or self._clearing.get(key):
                        return  # someone's file now, or ours again
                    logger.warning(
                        "%s: the server carried out an upload of it, one left unanswered, after the file "
                        "was renamed away; deleting it again",
                        target.describe(),
                    )
                    await self._background_call(self.client.delete_file, target.resource_uri, target.relpath)
                except XnatError as exc:
                    logger.debug("could not look at or delete %s on the server: %s", target.describe(), exc)
                    continue
                self.forget_files(target.resource_uri)
        except Exception:
            # Background work: nothing of it may end the mount.
            logger.exception("looking at what the server holds of %s failed", target.describe())
        finally:
            self._clearing.pop(key, None)

    def _span(self) -> float:
        """How long after a change left in doubt :meth:`confirm_sent` may still look."""
        return sum(CONFIRM_WAITS) * self.timeout

    def listed_digest(self, target: UploadTarget) -> str | None:
        """The MD5 the server lists for the file now (None: not there), asked afresh."""
        for remote in self.client.list_files(target.resource_uri):
            if remote.path == target.relpath:
                return (remote.digest or "").lower()
        return None

    async def _background_call(self, function: Callable[..., T], *args: Any) -> T:
        """A blocking call for work in the background: bounded by a budget of its own, not
        by that of the request that started the work (which may be over). Not abandoned at
        unmount: it may be reading a descriptor its caller closes once it returns."""

        def run() -> T:
            with bounded_by(Budget(self.timeout)):
                return function(*args)

        return await trio.to_thread.run_sync(run, limiter=self.limiter)
