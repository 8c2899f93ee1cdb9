"""Fetching a whole scan resource (a DICOM series) in one request.

Tools that read one file of a series nearly always read them all, and a
series is often hundreds of small files: one request each costs a round
trip each. On the first cache miss in a scan resource, the whole resource is
fetched as one zip (XNAT's ``?format=zip``) in the background. The zip is
parsed as it streams in (:mod:`xnatfs.fs.zipstream`); each file goes into
the content cache as soon as it is complete, checked against the listing's
size and digest, by a few threads so that writing the cache keeps up with
the network, and kept open for the reader. Files parsed but not yet written
are held in memory up to :data:`IN_FLIGHT_BYTES`, one bound shared by every
zip under way. The file that was asked for first is fetched on its own
meanwhile, so that read is not held up; a later open of a file of the
series waits for that file only, not for the whole zip.

Each resource is zipped at most once per mount (until we change it
ourselves), so a cache too small for the series cannot make it loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, cast

import trio

from xnatfs.cache.content import CachedFile, CacheKey, ContentCache
from xnatfs.client import paths
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import RemoteFile
from xnatfs.errors import XnatError
from xnatfs.fs.zipstream import ZipStream, ZipStreamError

logger = logging.getLogger(__name__)

INSERT_THREADS = 4
IN_FLIGHT_BYTES = 64 << 20


class SeriesFlight:
    """One zip download under way: an event per file, set once it is cached (or given up)."""

    def __init__(self, files: Sequence[RemoteFile]):
        self.ready = {remote.uri: trio.Event() for remote in files}
        self.done = trio.Event()

    def event_for(self, uri: str) -> trio.Event | None:
        """What to wait for before ``uri`` can be in the cache; None if the zip leaves it out."""
        return self.ready.get(uri)

    def finish(self) -> None:
        for event in self.ready.values():
            event.set()
        self.done.set()


class SeriesFetcher:
    """One zip download per scan resource, shared by every reader of the series."""

    def __init__(
        self,
        connection: ArchiveClient,
        cache: ContentCache,
        key_for: Callable[[RemoteFile], CacheKey],
        limiter: trio.CapacityLimiter,
        *,
        max_bytes: int,
        large_file_bytes: int,
        keep_open: Callable[[CacheKey, CachedFile], None],
    ):
        self.connection = connection
        self.cache = cache
        self.key_for = key_for
        self.keep_open = keep_open
        self.limiter = limiter
        self.max_bytes = max_bytes
        self.large_file_bytes = large_file_bytes
        self._running: dict[str, SeriesFlight] = {}
        self._done: set[str] = set()
        # One bound for every zip under way: readers of many series at once hold no more
        # downloaded bytes in memory than the reader of one.
        self._in_flight = _ByteBudget(IN_FLIGHT_BYTES)

    def eligible(self, files: Sequence[RemoteFile]) -> bool:
        """A scan resource of several files that together fit comfortably in the cache."""
        if len(files) < 2 or not paths.is_scan_resource(files[0].resource_uri):
            return False
        total = sum(f.size for f in files)
        return total <= self.max_bytes and all(f.size < self.large_file_bytes for f in files)

    def running(self, resource_uri: str) -> SeriesFlight | None:
        return self._running.get(resource_uri)

    def start(
        self, nursery: trio.Nursery, resource_uri: str, files: Sequence[RemoteFile], *, fetched_alone: RemoteFile | None
    ) -> bool:
        """Start zipping ``resource_uri`` unless it is running or done; True if started now.

        ``fetched_alone`` is the file the caller downloads by itself meanwhile;
        the zip leaves it to that download.
        """
        if resource_uri in self._running or resource_uri in self._done:
            return False
        wanted = [f for f in files if fetched_alone is None or f.uri != fetched_alone.uri]
        flight = self._running[resource_uri] = SeriesFlight(wanted)
        nursery.start_soon(self._fetch, resource_uri, list(files), wanted, flight)
        return True

    async def fetch_whole(self, nursery: trio.Nursery, resource_uri: str, files: Sequence[RemoteFile]) -> None:
        """Zip the whole series into the cache (or wait for the zip under way).

        Returns at once for a series zipped before or not worth a zip; files
        still missing afterwards are the caller's to fetch one by one.
        """
        if self.eligible(files):
            self.start(nursery, resource_uri, files, fetched_alone=None)
        flight = self._running.get(resource_uri)
        if flight is not None:
            await flight.done.wait()

    def forget(self, resource_uri: str) -> None:
        """Allow a new zip of a resource whose files we changed."""
        self._done.discard(resource_uri)

    async def _fetch(
        self, resource_uri: str, files: list[RemoteFile], wanted: list[RemoteFile], flight: SeriesFlight
    ) -> None:
        token = trio.lowlevel.current_trio_token()

        def cached(remote: RemoteFile, entry: CachedFile | None) -> None:
            def hand_over() -> None:
                try:
                    if entry is not None:
                        self.keep_open(self.key_for(remote), entry)
                except Exception:  # an error here must not reach the event loop's machinery
                    logger.exception("keeping %s open failed", remote.uri)
                flight.ready[remote.uri].set()

            # Queued without waiting for the loop, so the inserting thread goes
            # on with the next file; queued calls run before the fetch's end.
            token.run_sync_soon(hand_over)

        try:
            stored = await trio.to_thread.run_sync(
                self._fetch_blocking, resource_uri, files, wanted, cached, limiter=self.limiter
            )
            logger.debug("series %s: %d of %d files cached from one zip", resource_uri, stored, len(wanted))
        except (XnatError, OSError, ZipStreamError) as exc:
            logger.warning("fetching series %s as a zip failed, reading its files one by one: %s", resource_uri, exc)
        except Exception:
            logger.exception("fetching series %s as a zip failed", resource_uri)
        finally:
            self._done.add(resource_uri)
            del self._running[resource_uri]
            flight.finish()

    def _fetch_blocking(
        self,
        resource_uri: str,
        files: list[RemoteFile],
        wanted: list[RemoteFile],
        cached: Callable[[RemoteFile, CachedFile | None], None],
    ) -> int:
        wanted = [f for f in wanted if not self.cache.contains(self.key_for(f))]
        if not wanted:
            return 0
        matcher = _Matcher(files)
        still_wanted = {f.uri for f in wanted}
        budget = self._in_flight
        stored = 0
        lock = threading.Lock()

        def insert(remote: RemoteFile, data: bytes) -> None:
            nonlocal stored
            try:
                # Kept open, so the reader waiting for it finds it open already.
                entry = self.cache.insert_bytes(self.key_for(remote), data)
                if entry is not None:
                    with lock:
                        stored += 1
                cached(remote, entry)
            except XnatError as exc:
                logger.warning("zip entry for %s does not match the listing: %s", remote.uri, exc)
            finally:
                budget.release(len(data))

        with ThreadPoolExecutor(max_workers=INSERT_THREADS, thread_name_prefix="xnatfs-series") as pool:

            def on_entry(name: str, data: bytes) -> None:
                remote = matcher.match(name)
                if remote is None or remote.uri not in still_wanted or len(data) != remote.size:
                    return
                still_wanted.discard(remote.uri)
                budget.acquire(len(data))
                pool.submit(insert, remote, data)

            stream = ZipStream(on_entry, matcher.size_of, max_entry=self.large_file_bytes)
            # A write-only file object: all a download writes to.
            self.connection.download_zip(resource_uri, cast(BinaryIO, stream))
            stream.close()
        return stored


class _Matcher:
    """Which file of the listing a zip entry holds.

    XNAT names entries ``<session>/scans/<id>-<type>/resources/<label>/files/<path>``
    (other layouts drop parts of that prefix): an entry belongs to the path
    after ``/files/``, else to the longest listed path it ends with.
    """

    def __init__(self, files: Sequence[RemoteFile]):
        self.by_path = {f.path: f for f in files}

    def match(self, name: str) -> RemoteFile | None:
        if "/files/" in name:
            found = self.by_path.get(name.split("/files/", 1)[1])
            if found is not None:
                return found
        suffixes = [name] + [name[index + 1 :] for index, char in enumerate(name) if char == "/"]
        for suffix in suffixes:
            found = self.by_path.get(suffix)
            if found is not None:
                return found
        return None

    def size_of(self, name: str) -> int | None:
        found = self.match(name)
        return found.size if found is not None else None


class _ByteBudget:
    """Bounds the bytes read ahead of the cache writers (back-pressure on the download)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.changed = threading.Condition()

    def acquire(self, count: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.used == 0 or self.used + count <= self.limit)
            self.used += count

    def release(self, count: int) -> None:
        with self.changed:
            self.used -= count
            self.changed.notify_all()
