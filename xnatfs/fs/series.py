"""Fetching a whole scan resource (a DICOM series) in one request.

Tools that read one file of a series nearly always read them all, and a
series is often hundreds of small files: one request each costs a round
trip each. On the first cache miss in a scan resource, the whole resource is
fetched as one zip (XNAT's ``?format=zip``) in the background. The zip is
parsed as it streams in (:mod:`xnatfs.fs.zipstream`); each file is checked
against the listing's size and digest as soon as it is complete (by
:data:`CHECK_THREADS` threads) and served from memory to whoever opens it
meanwhile. While a reader is going through the series (a file of it opened
in the last :data:`QUIET_BEFORE_WRITING`), each checked file is also offered
to :attr:`SeriesFlight.pages` (the kernel's page cache of the folder being
read), so the reader's reads of it need no request. Writing it into the
content cache (by :data:`STORE_THREADS` threads), after which it is kept
open for the next reader, waits for the zip's end, and for its readers to
pause (:data:`QUIET_BEFORE_WRITING`), while memory allows: under one GIL,
writing while the zip streams in or is read slowed both the download and
the readers it serves. Files parsed but not yet written are held in memory
up to :data:`IN_FLIGHT_BYTES`, one bound shared by every zip under way;
from half of it on, or as soon as a download waits for room, the writers
write, or, while the series is being read, park each file on disk
(:meth:`ContentCache.parking`), serve its readers from there, and write it
into the cache after the wait for the zip's end and its readers' pause:
making a file per entry is the slowest thing a disk does, and it held the
download, and so the readers, back to its pace. The file that was asked for first is fetched on its own meanwhile, so
that read is not held up; a later open of a file of the series waits for
that file only, not for the whole zip.

Each resource is zipped at most once per mount (until we change it
ourselves), so a cache too small for the series cannot make it loop.

A zip may also start early, before any file is opened: when a scan's
resource folder is named outside a walk (:meth:`SeriesFetcher.start_early`),
while its file listing is still on its way, so the zip's round trip
overlaps the listing's. Such a zip may be abandoned (its connection closed):
its bytes wait for the listing before any is matched, checked and cached;
it stops once it has brought ``early_bytes`` with no file of it opened, as
soon as the listing shows the series bigger than that, and when no file of
it has been opened ``early_wait`` seconds after it started. A cache that held
the whole series before (a hint kept in the cache folder) starts none.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, BinaryIO, cast

import trio

from xnatfs.cache.content import CachedFile, CacheKey, ContentCache, check_bytes
from xnatfs.client import paths
from xnatfs.client.budget import Budget, bounded_by
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import RemoteFile, Resource
from xnatfs.errors import XnatError
from xnatfs.fs.zipstream import ZipStream, ZipStreamError

logger = logging.getLogger(__name__)

CHECK_THREADS = 2
# One writer per zip: two contended for the directories in the kernel and for the GIL, and a
# 4 800-file series read in 3.8 s instead of 3.1 s.
STORE_THREADS = 1
IN_FLIGHT_BYTES = 64 << 20
# The writers also wait while the series is being read: until no file of it was opened for this
# long. A reader going through a series opens a file every millisecond or so, and the writes
# competing with it for the GIL made its last files come slower.
QUIET_BEFORE_WRITING = 0.1
# ...but no longer than this after the zip's end, so a series read on and on still reaches the cache.
LONGEST_WRITE_WAIT = 5.0
# Zips started before a file of them was opened, at most this many at once.
EARLY_AT_ONCE = 2


class SeriesAbandoned(Exception):
    """An early zip stopped: nobody opened a file of it in time, or it grew past its bound."""


class SeriesFlight:
    """One zip download under way: an event per file, set once it is cached (or given up).

    An early flight starts before its files are known; until :meth:`know`
    names them, any file may be waited for. It may be abandoned until a file
    of it is opened (:meth:`claim`).
    """

    def __init__(self, *, early: bool):
        self.ready: dict[str, trio.Event] = {}
        # Files checked and not in the cache yet: their readers are served from here meanwhile,
        # from memory or, while memory is short, from where they are parked on disk.
        # By key, not address: a reader of a version the listing shows since gets none of these.
        self.checked: dict[CacheKey, bytes | CachedFile] = {}
        self.files: list[RemoteFile] = []
        self.wanted: set[str] | None = None
        self.claimed = not early
        self.abandoned = False
        self.last_opened = -math.inf  # when a file of it was last opened
        self.ended: float | None = None  # when the zip's download ended
        self.unread = False  # nobody will read on: the mount is ending
        # Set once the files are known or the flight is abandoned: the download thread waits for it.
        self.known = threading.Event()
        self.done = trio.Event()
        # The zip's own progress (its stalls end at the socket timeout): a request
        # waiting for a file of it is not given up while the zip moves.
        self.transfer = Budget(math.inf)
        # Where a checked file's bytes go as well while the series is being read: set by
        # whoever opens a file of it and knows where the kernel sees the series.
        self.pages: Callable[[RemoteFile, CacheKey, bytes], None] | None = None

    def know(self, files: Sequence[RemoteFile], wanted: Sequence[RemoteFile]) -> None:
        """The resource's files, and those the zip is to cache (the rest are left to their readers)."""
        self.files = list(files)
        self.wanted = {remote.uri for remote in wanted}
        for uri, event in self.ready.items():
            if uri not in self.wanted:
                event.set()
        for uri in self.wanted:
            self.ready.setdefault(uri, trio.Event())
        self.known.set()

    def event_for(self, uri: str) -> trio.Event | None:
        """What to wait for before ``uri`` can be in the cache; None if the zip leaves it out."""
        if self.wanted is None:
            return self.ready.setdefault(uri, trio.Event())
        return self.ready.get(uri) if uri in self.wanted else None

    def claim(self) -> None:
        """The zip is wanted, whatever it costs: a file of it is being opened, or the whole
        series is asked for."""
        self.claimed = True

    def opened(self) -> None:
        """A file of the series is being opened: its readers are going through it."""
        self.claim()
        self.last_opened = time.monotonic()

    def being_read(self) -> bool:
        """Whether a file of the series was opened in the last :data:`QUIET_BEFORE_WRITING`."""
        return not self.unread and time.monotonic() - self.last_opened < QUIET_BEFORE_WRITING

    def write_wait(self) -> float:
        """Seconds the cache writes still wait: for the zip's end, then until no file of it was
        opened for :data:`QUIET_BEFORE_WRITING` (at most :data:`LONGEST_WRITE_WAIT` after the end)."""
        if self.unread:
            return 0.0
        if self.ended is None:
            return math.inf
        until = min(self.last_opened + QUIET_BEFORE_WRITING, self.ended + LONGEST_WRITE_WAIT)
        return max(0.0, until - time.monotonic())

    def abandon(self, why: str, resource_uri: str) -> None:
        """Stop the zip unless a file of it is being opened."""
        if not self.claimed:
            self.stop(why, resource_uri)

    def stop(self, why: str, resource_uri: str) -> None:
        """Stop the zip; whoever waits for a file of it reads the file by itself."""
        if not self.abandoned:
            logger.debug("zip of %s abandoned: %s", resource_uri, why)
            self.abandoned = True
            self.known.set()

    def finish(self) -> None:
        for event in self.ready.values():
            event.set()
        for held in self.checked.values():
            if isinstance(held, CachedFile):
                held.close()
        self.checked.clear()
        self.known.set()
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
        server: str,
        early_bytes: int,
        early_wait: float,
    ):
        self.connection = connection
        self.cache = cache
        self.key_for = key_for
        self.keep_open = keep_open
        self.limiter = limiter
        self.max_bytes = max_bytes
        self.large_file_bytes = large_file_bytes
        self.server = server
        self.early_bytes = early_bytes
        self.early_wait = early_wait
        self._running: dict[str, SeriesFlight] = {}
        self._done: set[str] = set()
        self._tried_early: set[str] = set()
        # One bound for every zip under way: readers of many series at once hold no more
        # downloaded bytes in memory than the reader of one.
        self._in_flight = _ByteBudget(IN_FLIGHT_BYTES)

    def write_held(self) -> None:
        """The mount is ending, and nobody will read on: the files held for their readers
        are written into the cache now, not after a pause of reading that ends the wait,
        and a zip started early that no reader claimed stops."""
        for resource_uri, flight in self._running.items():
            flight.unread = True
            flight.abandon("the file system is unmounted", resource_uri)
        self._in_flight.wake()

    def eligible(self, files: Sequence[RemoteFile]) -> bool:
        """A scan resource of several files that together fit comfortably in the cache."""
        if len(files) < 2 or not paths.is_scan_resource(files[0].resource_uri):
            return False
        total = sum(f.size for f in files)
        return total <= self.max_bytes and all(f.size < self.large_file_bytes for f in files)

    def running(self, resource_uri: str) -> SeriesFlight | None:
        return self._running.get(resource_uri)

    def opening(self, resource_uri: str) -> SeriesFlight | None:
        """A file of ``resource_uri`` is being opened: a zip of it under way is no longer early.

        Returns that zip, if one is under way."""
        flight = self._running.get(resource_uri)
        if flight is not None:
            flight.opened()
        return flight

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
        flight = self._running[resource_uri] = SeriesFlight(early=False)
        flight.know(files, wanted)
        nursery.start_soon(self._fetch, resource_uri, flight)
        return True

    def start_early(
        self, nursery: trio.Nursery, resource: Resource, listing: Callable[[], Awaitable[Sequence[RemoteFile]]]
    ) -> bool:
        """Start zipping ``resource`` before a file of it is opened; True if started now.

        ``listing()`` gives the resource's files. At most once per resource
        and mount (until we change it), never while a zip of it runs or ran,
        not for a resource its record shows too small or too big for it, and
        not while :data:`EARLY_AT_ONCE` zips nobody has opened a file of run.
        """
        resource_uri = resource.uri
        if not self.early_bytes or resource_uri in self._tried_early:
            return False
        if sum(1 for f in self._running.values() if not f.claimed and not f.abandoned) >= EARLY_AT_ONCE:
            # A script naming many folders must not fill the workers (and the server) with zips
            # nobody may read; a file opened later is zipped then.
            return False
        if (resource.file_count is not None and resource.file_count < 2) or (
            resource.file_size is not None and resource.file_size > self.early_bytes
        ):
            return False
        if resource_uri in self._running or resource_uri in self._done:
            return False
        self._tried_early.add(resource_uri)
        flight = self._running[resource_uri] = SeriesFlight(early=True)
        nursery.start_soon(self._fetch_early, resource_uri, flight, listing)
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
            flight.claim()
            await flight.done.wait()

    def forget(self, resource_uri: str) -> None:
        """Allow a new zip of a resource whose files we changed."""
        self._done.discard(resource_uri)
        self._tried_early.discard(resource_uri)

    async def _fetch_early(
        self,
        resource_uri: str,
        flight: SeriesFlight,
        listing: Callable[[], Awaitable[Sequence[RemoteFile]]],
    ) -> None:
        async with trio.open_nursery() as watching:
            watching.start_soon(self._learn_files_or_stop, resource_uri, flight, listing)
            watching.start_soon(self._abandon_unopened, resource_uri, flight)
            await self._fetch(resource_uri, flight)
            watching.cancel_scope.cancel()

    async def _learn_files_or_stop(
        self,
        resource_uri: str,
        flight: SeriesFlight,
        listing: Callable[[], Awaitable[Sequence[RemoteFile]]],
    ) -> None:
        try:
            await self._learn_files(resource_uri, flight, listing)
        except BaseException:
            # Cancelled (the mount is stopping): the download thread must not wait for files forever.
            flight.stop("the mount is stopping", resource_uri)
            raise

    async def _learn_files(
        self,
        resource_uri: str,
        flight: SeriesFlight,
        listing: Callable[[], Awaitable[Sequence[RemoteFile]]],
    ) -> None:
        """Tell an early flight its files once the listing is in, or abandon it."""
        try:
            files = list(await listing())
        except Exception as exc:  # the reader's own look reports it; this zip just stops
            flight.stop(f"its listing failed: {exc}", resource_uri)
            return
        if not self.eligible(files):
            flight.stop("it is not a series worth a zip", resource_uri)
            return
        if sum(f.size for f in files) > self.early_bytes:
            flight.abandon(f"the series is bigger than {self.early_bytes} bytes", resource_uri)
        missing = await trio.to_thread.run_sync(self._missing, files, limiter=self.limiter)
        if not missing:
            await trio.to_thread.run_sync(self.cache.note_whole, self.server + resource_uri, limiter=self.limiter)
            flight.stop("every file of it is in the cache", resource_uri)
            return
        flight.know(files, missing)

    async def _abandon_unopened(self, resource_uri: str, flight: SeriesFlight) -> None:
        await trio.sleep(self.early_wait)
        flight.abandon(f"no file of it was opened within {self.early_wait:g} s", resource_uri)

    def _missing(self, files: Sequence[RemoteFile]) -> list[RemoteFile]:
        return [f for f in files if not self.cache.contains(self.key_for(f))]

    async def _fetch(self, resource_uri: str, flight: SeriesFlight) -> None:
        loop_calls = _LoopCalls(trio.lowlevel.current_trio_token())

        # Both queued without waiting for the loop, so the checking and storing threads
        # go on; queued calls run in order, and before the fetch's end.
        def checked(remote: RemoteFile, key: CacheKey, data: bytes) -> None:
            def serve_from_memory() -> None:
                flight.checked[key] = data
                flight.ready[remote.uri].set()
                if flight.pages is not None and flight.being_read():
                    try:
                        flight.pages(remote, key, data)
                    except Exception:  # an error here must not reach the event loop's machinery
                        logger.exception("handing %s to the kernel's page cache failed", remote.uri)

            loop_calls.post(serve_from_memory)

        def parked(key: CacheKey, piece: CachedFile) -> None:
            def serve_from_disk() -> None:
                if key in flight.checked:
                    flight.checked[key] = piece
                else:
                    piece.close()

            loop_calls.post(serve_from_disk)

        def cached(remote: RemoteFile, key: CacheKey, entry: CachedFile | None) -> None:
            def hand_over() -> None:
                held = flight.checked.pop(key, None)
                if isinstance(held, CachedFile):
                    held.close()
                try:
                    if entry is not None:
                        self.keep_open(key, entry)
                except Exception:  # an error here must not reach the event loop's machinery
                    logger.exception("keeping %s open failed", remote.uri)
                flight.ready[remote.uri].set()

            loop_calls.post(hand_over)

        try:
            stored = await trio.to_thread.run_sync(
                self._fetch_blocking, resource_uri, flight, checked, parked, cached, limiter=self.limiter
            )
            logger.debug("series %s: %d files cached from one zip", resource_uri, stored)
        except SeriesAbandoned:
            pass
        except (XnatError, OSError, ZipStreamError) as exc:
            logger.warning("fetching series %s as a zip failed, reading its files one by one: %s", resource_uri, exc)
        except Exception:
            logger.exception("fetching series %s as a zip failed", resource_uri)
        finally:
            if not flight.abandoned:
                self._done.add(resource_uri)
            del self._running[resource_uri]
            flight.finish()

    def _fetch_blocking(
        self,
        resource_uri: str,
        flight: SeriesFlight,
        checked: Callable[[RemoteFile, CacheKey, bytes], None],
        parked: Callable[[CacheKey, CachedFile], None],
        cached: Callable[[RemoteFile, CacheKey, CachedFile | None], None],
    ) -> int:
        if flight.abandoned:
            raise SeriesAbandoned()
        whole = self.server + resource_uri
        if flight.wanted is not None:  # started on an open, knowing its files
            if not self._missing([f for f in flight.files if f.uri in flight.wanted]):
                return 0
        elif self.cache.had_whole(whole):
            flight.stop("the cache held the whole series before", resource_uri)
            raise SeriesAbandoned()
        budget = self._in_flight
        stored = 0
        lock = threading.Lock()
        entries = _Entries(flight, resource_uri)

        def check(remote: RemoteFile, data: bytes) -> None:
            handed_on = False
            try:
                key = self.key_for(remote)
                check_bytes(key, data)
                # Its readers need not wait for the disk: the checked bytes serve them meanwhile.
                checked(remote, key, data)
                storing.submit(store, remote, key, data)
                handed_on = True
            except XnatError as exc:
                logger.warning("zip entry for %s does not match the listing: %s", remote.uri, exc)
            finally:
                if not handed_on:
                    budget.release(len(data))

        def store(remote: RemoteFile, key: CacheKey, data: bytes) -> None:
            held = len(data)
            try:
                # Writing to disk while the zip streams in takes the processor (and the GIL)
                # from the download and the readers it serves from memory; until memory runs
                # short, the writers wait for the zip's end and a pause of its readers.
                budget.hold_until(flight.write_wait)
                if flight.being_read():
                    # Memory is short while the series is being read: parking the bytes is one
                    # write to a file already open, where an entry makes a file, which on a slow
                    # disk held the download, and so the readers, back to its pace. With nobody
                    # reading, writing as the zip comes in finishes the cache soonest.
                    piece = parking.park(data)
                    if piece is not None:
                        parked(key, piece.share())
                        budget.release(held)
                        held = 0
                        later.append((remote, key, piece))
                        return
                write(remote, key, data)
            except OSError as exc:
                # Its readers read it from memory until the zip is done, then fetch it alone.
                logger.warning("caching %s from its series zip failed: %s", remote.uri, exc)
            finally:
                if held:
                    budget.release(held)

        def write(remote: RemoteFile, key: CacheKey, data: bytes) -> None:
            nonlocal stored
            # Kept open, so a reader after that finds it open already.
            entry = self.cache.insert_bytes(key, data, checked=True)
            if entry is not None:
                with lock:
                    stored += 1
            cached(remote, key, entry)

        def write_parked() -> None:
            while later:
                remote, key, piece = later.popleft()
                with piece:
                    budget.hold_until(flight.write_wait)
                    try:
                        write(remote, key, piece.pread(0, piece.size))
                    except OSError as exc:
                        logger.warning("caching %s from its series zip failed: %s", remote.uri, exc)

        later: deque[tuple[RemoteFile, CacheKey, CachedFile]] = deque()  # parked, in the zip's order

        try:
            with (
                self.cache.parking() as parking,
                _Workers(STORE_THREADS, "xnatfs-store") as storing,
                _Workers(CHECK_THREADS, "xnatfs-check") as checking,
            ):

                def on_entry(name: str, data: bytes) -> None:
                    remote = entries.take(name, len(data))
                    if remote is None:
                        return
                    budget.acquire(len(data))
                    checking.submit(check, remote, data)

                stream = ZipStream(on_entry, entries.size_of, max_entry=self.large_file_bytes)
                gate = _EarlyGate(stream, flight, resource_uri, self.early_bytes)
                # A write-only file object: all a download writes to.
                try:
                    with bounded_by(flight.transfer):
                        self.connection.download_zip(resource_uri, cast(BinaryIO, gate))
                finally:
                    flight.ended = time.monotonic()
                    budget.wake()
                stream.close()
        finally:
            # Checked files are worth keeping even when the zip broke off.
            try:
                write_parked()
            finally:
                for _remote, _key, piece in later:
                    piece.close()
        if entries.complete():
            self.cache.note_whole(whole)
        return stored


class _Entries:
    """Which wanted file each zip entry holds; waits for the listing when it is not known yet."""

    def __init__(self, flight: SeriesFlight, resource_uri: str):
        self.flight = flight
        self.resource_uri = resource_uri
        self._matcher: _Matcher | None = None
        self._still_wanted: set[str] = set()

    def _known(self) -> _Matcher:
        if self._matcher is None:
            self.flight.known.wait()
            if self.flight.abandoned:
                raise SeriesAbandoned()
            assert self.flight.wanted is not None  # set before known, unless abandoned
            self._still_wanted = set(self.flight.wanted)
            self._matcher = _Matcher(self.flight.files)
        return self._matcher

    def take(self, name: str, size: int) -> RemoteFile | None:
        """The wanted file entry ``name`` holds (once each); None for anything else."""
        remote = self._known().match(name)
        if remote is None or remote.uri not in self._still_wanted or size != remote.size:
            return None
        self._still_wanted.discard(remote.uri)
        return remote

    def size_of(self, name: str) -> int | None:
        return self._known().size_of(name)

    def complete(self) -> bool:
        """Whether every wanted file came in the zip."""
        return self._matcher is not None and not self._still_wanted


class _EarlyGate:
    """The download's file object: passes the zip on, and stops an early zip that must stop."""

    def __init__(self, stream: ZipStream, flight: SeriesFlight, resource_uri: str, early_bytes: int):
        self.stream = stream
        self.flight = flight
        self.resource_uri = resource_uri
        self.early_bytes = early_bytes
        self.received = 0

    def write(self, chunk: bytes) -> int:
        self.received += len(chunk)
        if not self.flight.claimed and self.received > self.early_bytes:
            self.flight.abandon(f"it brought {self.early_bytes} bytes with no file of it opened", self.resource_uri)
        if self.flight.abandoned:
            # Raised out of the download, which closes the connection.
            raise SeriesAbandoned()
        return self.stream.write(chunk)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass


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


class _Workers:
    """A few threads running the calls submitted to them; leaving the ``with`` block waits for them all.

    Lighter than a ThreadPoolExecutor, whose submissions all take one lock shared by every
    executor: with several zips under way, their threads queued for it at each file.
    """

    def __init__(self, count: int, name: str):
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        self._tasks.put((call, args))

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            call, args = task
            try:
                call(*args)
            except Exception:  # a worker must outlive one bad file
                logger.exception("series zip worker failed")

    def __enter__(self) -> _Workers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for _thread in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()


class _LoopCalls:
    """Calls from worker threads to run on the event loop in the order posted.

    Each wake-up of the loop runs every call posted meanwhile: a zip of
    hundreds of files would otherwise wake it twice per file.
    """

    def __init__(self, token: trio.lowlevel.TrioToken):
        self._token = token
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def post(self, call: Callable[[], None]) -> None:
        with self._lock:
            self._calls.append(call)
            if len(self._calls) > 1:
                return  # a wake-up is on its way and will run this one too
        self._token.run_sync_soon(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call()


class _ByteBudget:
    """Bounds the bytes read ahead of the cache writers (back-pressure on the download).

    Writers may hold off (:meth:`hold_until`) while memory is plentiful: from half
    the bound on, or as soon as a download waits for room, they must write.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.waiting = 0
        self.changed = threading.Condition()

    def acquire(self, count: int) -> None:
        with self.changed:
            if not self._fits(count):
                self.waiting += 1
                self.changed.notify_all()  # writers holding off
                try:
                    self.changed.wait_for(lambda: self._fits(count))
                finally:
                    self.waiting -= 1
            self.used += count

    def _fits(self, count: int) -> bool:
        return self.used == 0 or self.used + count <= self.limit

    def hold_until(self, wait: Callable[[], float]) -> None:
        """Wait until memory runs short or ``wait()``, the seconds left to wait (asked again at
        each :meth:`wake` and when they have passed), is 0."""
        with self.changed:
            while self.waiting == 0 and self.used * 2 < self.limit:
                left = wait()
                if left <= 0:
                    return
                self.changed.wait(None if left == math.inf else left)

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def release(self, count: int) -> None:
        with self.changed:
            self.used -= count
            self.changed.notify_all()
