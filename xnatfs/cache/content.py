"""The on-disk cache of file contents.

Layout of the cache folder (0700; every file 0600)::

    data/<xx>/<uri hash>-<version hash>   complete entries, one file each
    tmp/<entry name>.<pid>.<random>.part  downloads in progress
    locks/<entry name>.lock               "somebody is filling this entry"
    whole/<name hash>                     "every file of this group was here at once" (a series)

An entry's name is derived from its :class:`CacheKey`: the first part from the
URI (so every version of one server file can be found and dropped together),
the second from size and digest (so a file changed on the server is a new
entry and a stale copy can never be served for it).

All state lives in the folder itself, so several processes, even on several
machines over NFS, can share it:

* Only complete, verified files are ever renamed into ``data/``; a download
  that fails or comes up short leaves at most a ``tmp/`` file, which is
  removed when the cache is next opened.
* Entries are not fsynced: a killed process loses nothing the kernel has
  not already got, and after a power loss an entry whose data never reached
  the disk is short or empty, which opening it notices (its size must be the
  key's) and drops, so it is fetched again. A cache is allowed to forget.
* Whoever fills an entry holds an exclusive lock on ``locks/<name>.lock``;
  another process wanting the same entry waits for that lock and then finds
  the entry complete, so each file is downloaded once.
* A reader holds a shared ``flock`` on the entry's file while it is open
  ("pinned"). The evictor takes an exclusive lock without waiting and skips
  any entry it cannot lock, so files in use are never evicted.
* Least-recently-used order comes from the entry's modification time, which
  the cache sets itself on each use (mount options such as ``noatime`` make
  access times useless). Each process keeps an index of entries in memory,
  rebuilt by scanning ``data/`` when opened and again when it is older than
  ``rescan_interval`` and room must be made; before evicting an entry the
  evictor rereads its time, so a use by another process is respected.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import logging
import math
import mmap
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from xnatfs.cache.files import (
    disk_free,
    lock_named,
    make_private_dir,
    remove_unlocked,
    same_file,
    try_lock_exclusive,
    unlock_named,
)
from xnatfs.client.budget import Budget, current_budget
from xnatfs.errors import XnatServerError

logger = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
# Files this big are hashed in a thread beside the download, which maps this much of the
# file at a time: the MD5 reads the page cache in place (no copy) and takes the GIL back
# once per piece.
HASH_THREAD_BYTES = 8 << 20
HASH_PIECE_BYTES = 16 << 20
# How often a caller waiting for another's download looks whether bytes arrived (its progress).
PROGRESS_POLL = 0.5
# Left free on the cache folder's disk whatever --cache-size allows: the upload spool
# beside the cache refuses to grow into its last 64 MiB (fs.writing), so this keeps room
# for writes before they must ask the cache to give some up.
DISK_RESERVE = 128 << 20


class CacheKey(NamedTuple):
    """What identifies cached bytes: the server address and the size and
    digest the listing reported. A changed file on the server is a different key."""

    uri: str
    size: int
    digest: str = ""


@dataclass(frozen=True)
class CacheInfo:
    directory: Path
    entries: int
    bytes_used: int
    max_bytes: int
    pinned: int  # entries this process has open
    disk_free: int  # bytes free on the folder's disk, which may bound the cache first


def entry_name(key: CacheKey) -> str:
    return f"{_uri_hash(key.uri)}-{_version_hash(key)}"


def _make_subfolders(data_dir: Path) -> None:
    """Create every ``data/<xx>`` folder now: a series' first insert into a fresh cache would
    otherwise make most of them, three more system calls per file while its zip streams in."""
    present = set(os.listdir(data_dir))
    for number in range(256):
        name = f"{number:02x}"
        if name not in present:
            try:
                os.mkdir(data_dir / name, 0o700)
            except FileExistsError:  # another process opening the same cache
                pass


def check_bytes(key: CacheKey, data: bytes) -> None:
    """Raise XnatServerError unless ``data`` has the key's size and MD5."""
    if len(data) != key.size:
        raise XnatServerError(f"got {len(data)} bytes where {key.size} were listed", url=key.uri)
    if key.digest and hashlib.md5(data, usedforsecurity=False).hexdigest() != key.digest.lower():
        raise XnatServerError("file does not match its MD5 digest", url=key.uri)


def _uri_hash(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:40]


def _version_hash(key: CacheKey) -> str:
    return hashlib.sha256(f"{key.size}:{key.digest.lower()}".encode()).hexdigest()[:16]


class _SharedHandle:
    """One open descriptor shared by every :class:`CachedFile` of an entry in
    this process, with a count of users; ``on_last_close`` runs when the last
    one is done (closing the descriptor, which drops the pin)."""

    def __init__(
        self,
        fd: int,
        size: int,
        path: Path,
        lock: threading.RLock,
        on_last_close: Callable[[_SharedHandle], None],
        *,
        base: int = 0,
    ):
        # ``lock`` is the cache's own lock, so that pins and eviction see one state.
        self.fd = fd
        self.size = size
        self.path = path
        self.base = base  # where the bytes start in the file behind ``fd``
        self.users = 0
        self.closed = False
        self._lock = lock
        self._on_last_close = on_last_close

    def open(self) -> CachedFile:
        with self._lock:
            if self.closed:
                raise ValueError("cache entry already released")
            self.users += 1
        return CachedFile(self)

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0:
                self.closed = True
                self._on_last_close(self)


class CachedFile:
    """An open, complete cache entry. While open it is pinned: no process
    sharing the cache folder will evict it. Close it when done (a forgotten
    one is closed when garbage-collected)."""

    def __init__(self, handle: _SharedHandle):
        self._handle = handle
        self.path = handle.path
        self.size = handle.size
        # Runs at most once, whether from close() or from garbage collection.
        self._release = weakref.finalize(self, handle.release)

    @property
    def closed(self) -> bool:
        return not self._release.alive

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; fewer only at the end of the file."""
        if self.closed:
            raise ValueError("read from a closed cache entry")
        if offset < 0:
            return b""
        return _pread_full(self._handle.fd, self._handle.base + offset, min(length, self.size - offset))

    def pread_nowait(self, offset: int, length: int) -> bytes | None:
        """Like :meth:`pread` when every byte asked for is in the page cache;
        None (having waited for nothing) when the disk would have to be read."""
        if self.closed:
            return None
        if offset < 0:
            return b""
        return _pread_nowait(self._handle.fd, self._handle.base + offset, min(length, self.size - offset))

    def share(self) -> CachedFile:
        """Another handle on the same entry, with its own close()."""
        if self.closed:
            raise ValueError("cache entry already closed")
        return self._handle.open()

    def close(self) -> None:
        self._release()

    def __enter__(self) -> CachedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CachedFile({str(self.path)!r}, size={self.size})"


class ParkedFiles:
    """Checked bytes kept on the cache's disk instead of in memory until they are
    written into the cache (see :meth:`ContentCache.parking`).

    One nameless file in the cache folder, appended to; each piece parked is
    read through a :class:`CachedFile` of its own. The file goes with the
    last of those and :meth:`close`, and with the process: a crash leaves
    nothing of it.
    """

    def __init__(self, cache: ContentCache):
        self._cache = cache
        self._fd: int | None = None
        self._end = 0
        self._users = 1  # this object's own, until close()
        self._lock = threading.RLock()

    def park(self, data: bytes) -> CachedFile | None:
        """``data`` on disk, open; None when the disk has no room to spare for it."""
        size = len(data)
        if not self._cache.room_to_park(size):
            return None
        with self._lock:
            if self._fd is None:
                self._fd = self._cache.open_nameless()
            fd, offset = self._fd, self._end
            self._end += size
            self._users += 1
        try:
            _pwrite_full(fd, data, offset)
        except BaseException:
            self._piece_done(None)
            raise
        handle = _SharedHandle(fd, size, self._cache.directory, self._lock, self._piece_done, base=offset)
        return handle.open()

    def close(self) -> None:
        """No more pieces; the file goes once every piece parked is closed too."""
        self._piece_done(None)

    def _piece_done(self, _handle: _SharedHandle | None) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._fd is not None:
                self._cache.close_later(self._fd)
                self._fd = None

    def __enter__(self) -> ParkedFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pwrite_full(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _pread_full(fd: int, offset: int, length: int) -> bytes:
    if length <= 0 or offset < 0:
        return b""
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _pread_nowait(fd: int, offset: int, length: int) -> bytes | None:
    if length <= 0 or offset < 0:
        return b""
    buffer = bytearray(length)
    try:
        count = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not all in memory; EOPNOTSUPP: a file system without it
        return None
    # Handed out as it is, without a copy into a bytes object: these bytes go
    # to the kernel, and pyfuse3 takes any buffer.
    return cast(bytes, buffer) if count == length else None


class _Fill:
    """One download of one key, shared by every caller in this process that
    wants the key while it runs."""

    def __init__(self, key: CacheKey, download: Callable[[BinaryIO], None]):
        self.key = key
        self.download = download
        self.lock = threading.Lock()
        self.state = "queued"  # queued → running → done
        self.written = 0  # bytes [0, written) are on disk
        self.received = 0  # bytes on disk in all, with those of parts further on
        self.spans: list[_Span] = []  # where the download's streams write, by offset
        self.fd: int | None = None  # the temp file, while downloading
        self.error: BaseException | None = None
        self.keep = True  # False once discard_uri() asked to forget it
        self.views: list[PendingFetch] = []
        # The download's progress: a request waiting for it counts it as its own.
        self.transfer = Budget(math.inf)
        # Readers waiting for bytes, each woken only once its own bytes are written: with
        # every reader woken on every write, the wake-ups would compete for the GIL with
        # the download and the MD5 for nothing.
        self.waiting: list[_Waiter] = []

    def claim(self) -> bool:
        """True for exactly one caller: the one that runs the download."""
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "running"
            return True

    def progressed(self, span: _Span, frontier: int) -> None:
        with self.lock:
            self.received += frontier - span.frontier
            span.frontier = frontier
            self.transfer.progress()
            self.written = _run_end(self.spans, self.written)
            still = []
            for waiter in self.waiting:
                if _run_end(self.spans, waiter.start) >= waiter.end:
                    waiter.ready.set()
                else:
                    still.append(waiter)
            self.waiting = still

    def wait_for(self, start: int, end_offset: int, timeout: float | None) -> None:
        # Whoever reads up to the end waits for the checks of size and MD5,
        # so a download that fails them is an error to that reader at least.
        end_offset = min(end_offset, self.key.size)
        whole = end_offset >= self.key.size
        # Past the last byte: no write satisfies the wait, only the end of the download.
        self._wait(_Waiter(start, self.key.size + 1 if whole else end_offset), timeout)

    def wait_done(self, timeout: float | None) -> None:
        self._wait(_Waiter(0, self.key.size + 1), timeout)

    def _wait(self, waiter: _Waiter, timeout: float | None) -> None:
        """Until the waiter's bytes are written (or the download ends); raise its error.

        Woken for its own bytes only; every PROGRESS_POLL seconds meanwhile, the
        download's progress counts as the waiting caller's, so its request is not given
        up while a download another started moves.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        budget = current_budget()
        with self.lock:
            waiting = self.state != "done" and _run_end(self.spans, waiter.start) < waiter.end
            if waiting:
                self.waiting.append(waiter)
        try:
            while waiting:
                pause = PROGRESS_POLL if deadline is None else min(PROGRESS_POLL, deadline - time.monotonic())
                if pause <= 0:
                    raise TimeoutError(f"waited {timeout} s for {self.key.uri}")
                if waiter.ready.wait(pause):
                    break
                if budget is not None:
                    budget.take_progress_of(self.transfer)
        finally:
            if waiting:
                with self.lock:
                    if waiter in self.waiting:
                        self.waiting.remove(waiter)
        with self.lock:
            if self.error is not None:
                raise self.error

    def pread_partial(self, offset: int, length: int) -> bytes | None:
        """Bytes already downloaded, or None when the download is no longer running."""
        with self.lock:
            if self.fd is None:
                return None
            end = min(offset + length, _run_end(self.spans, offset))
            return _pread_full(self.fd, offset, end - offset)

    def pread_written_nowait(self, offset: int, length: int) -> bytes | None:
        """Bytes already downloaded, if all are in memory and none is the last
        byte (which must wait for the checks); otherwise None, without waiting."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            end = offset + length
            if self.fd is None or end >= self.key.size or _run_end(self.spans, offset) < end:
                return None
            return _pread_nowait(self.fd, offset, length)
        finally:
            self.lock.release()

    def finish(self, handle: _SharedHandle | None, error: BaseException | None) -> None:
        """Hand every waiting view its own open entry (or the error) and wake
        them up; a fill already finished stays as it was."""
        with self.lock:
            if self.state == "done":
                return
            self.state = "done"
            self.error = error
            self.fd = None
            if handle is not None:
                self.written = self.key.size
                for view in self.views:
                    if not view._closed:
                        view._slot[0] = handle.open()
            self.views = []
            for waiter in self.waiting:
                waiter.ready.set()
            self.waiting = []


class PendingFetch:
    """A download that may still be running. Bytes already on disk can be
    read while the rest arrives. Close it when done (it is also closed when
    garbage-collected)."""

    def __init__(self, key: CacheKey, fill: _Fill | None = None, own: CachedFile | None = None):
        self.key = key
        self._fill = fill
        self._closed = False
        # The entry this view keeps open once complete. Kept in a list the
        # finalizer can reach without keeping the view itself alive.
        self._slot: list[CachedFile | None] = [own]
        self._finalizer = weakref.finalize(self, _close_slot, self._slot)

    def wait_for(self, end_offset: int, timeout: float | None = None, *, start: int = 0) -> None:
        """Block until bytes ``[start, end_offset)`` are on disk (up to the end of
        the file: until the whole is verified); raise the download's error if it failed."""
        if self._fill is not None:
            self._fill.wait_for(start, end_offset, timeout)

    def done(self) -> bool:
        return self._fill is None or self._fill.state == "done"

    def pread(self, offset: int, length: int) -> bytes:
        """Read what has arrived of ``[offset, offset + length)``.

        While the download runs this returns what is on disk so far, possibly
        fewer bytes than asked for; call :meth:`wait_for` first to be sure of
        a full read. Raises the download's error if it failed.
        """
        if self._closed:
            raise ValueError("read from a closed download")
        if self._slot[0] is None and self._fill is not None:
            data = self._fill.pread_partial(offset, length)
            if data is not None:
                return data
            self._fill.wait_done(None)
        cached = self._slot[0]
        assert cached is not None, "a finished download leaves its entry in the slot"
        return cached.pread(offset, length)

    def pread_nowait(self, offset: int, length: int) -> bytes | None:
        """Bytes of ``[offset, offset + length)`` when they are all downloaded
        and in the page cache; None when getting them would mean waiting (for
        the download, its checks, a lock or the disk)."""
        if self._closed:
            return None
        if self._slot[0] is not None:
            return self._slot[0].pread_nowait(offset, length)
        if self._fill is None:
            return None
        return self._fill.pread_written_nowait(offset, min(length, self.key.size - offset))

    def result(self, timeout: float | None = None) -> CachedFile:
        """Wait for the whole file and return it open (pinned); the caller closes it."""
        if self._closed:
            raise ValueError("download handle already closed")
        if self._fill is not None:
            self._fill.wait_done(timeout)
        cached = self._slot[0]
        assert cached is not None, "a finished download leaves its entry in the slot"
        return cached.share()

    def close(self) -> None:
        if self._fill is not None:
            with self._fill.lock:
                self._closed = True
        else:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> PendingFetch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_slot(slot: list[CachedFile | None]) -> None:
    if slot[0] is not None:
        slot[0].close()


class _Waiter:
    """A reader waiting until bytes ``[start, end)`` are written."""

    __slots__ = ("end", "ready", "start")

    def __init__(self, start: int, end: int):
        self.start = start
        self.end = end
        self.ready = threading.Event()


class _Span:
    """Where one stream writes: from ``start`` on, ``frontier`` being the first byte not yet written."""

    __slots__ = ("end", "frontier", "start")

    def __init__(self, start: int, end: int):
        self.start = start
        self.frontier = start
        self.end = end


def _run_end(spans: list[_Span], offset: int) -> int:
    """The end of the bytes written without a gap from ``offset`` on (``offset`` when none are)."""
    end = offset
    for span in spans:  # sorted by start
        if span.start <= end < span.frontier:
            end = span.frontier
    return end


class _WriteOnly:
    """All a download uses of a file object besides ``write`` and ``tell``."""

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass


class _PartWriter(_WriteOnly):
    """The file object one stream writes into, from its span's start on."""

    def __init__(self, entry: _EntryWriter, span: _Span):
        self._entry = entry
        self._span = span

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._entry.write_at(self._span, data)

    def tell(self) -> int:
        return self._span.frontier - self._span.start


class _EntryWriter(_WriteOnly):
    """What a download writes into: streams to the temp file, hashes on the
    way, refuses more bytes than the key says, and tells readers how far it got.

    One stream writes with :meth:`write` (a file object that is not
    seekable); several streams, each fetching a part of the file, write
    through the writers :meth:`part` hands out, at their own offsets.

    The MD5 goes over the bytes in file order, as far as they are written
    without a gap. For a large file, or one fetched in parts, it runs in a
    thread of its own that maps the written bytes (in the page cache, without a copy)
    behind the download, so neither the download nor the readers it feeds
    wait for the hash; only the entry's completion (:meth:`verify`) does.
    """

    def __init__(self, fd: int, fill: _Fill):
        self._fd = fd
        self._fill = fill
        self._sequential: _PartWriter | None = None
        self._md5 = hashlib.md5(usedforsecurity=False) if fill.key.digest else None
        self._hashed = 0  # bytes [0, hashed) are in the MD5
        self._hasher: threading.Thread | None = None
        self._hash_error: OSError | None = None
        self._progress = threading.Condition()
        self._finished = False
        if fill.key.size >= HASH_THREAD_BYTES:
            self._start_hasher()

    def part(self, offset: int, end: int) -> BinaryIO:
        """A writer for the bytes ``[offset, end)``, which refuses any beyond ``end``."""
        span = _Span(offset, min(end, self._fill.key.size))
        with self._fill.lock:
            spans = self._fill.spans
            spans.insert(sum(1 for s in spans if s.start <= offset), span)
        if offset > 0:
            # Bytes that arrive out of order can only be hashed by reading them back in order.
            self._start_hasher()
        # Not a full BinaryIO, but all a download uses of one: write, tell, seekable, flush.
        return cast(BinaryIO, _PartWriter(self, span))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """The next bytes of a download that runs as one stream."""
        if self._sequential is None:
            self._sequential = cast(_PartWriter, self.part(0, self._fill.key.size))
        return self._sequential.write(data)

    def tell(self) -> int:
        return 0 if self._sequential is None else self._sequential.tell()

    def write_at(self, span: _Span, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        offset = span.frontier
        if offset + size > span.end:
            asked = "listed" if span.end == self._fill.key.size else "asked for"
            raise XnatServerError(
                f"server sent more than the {span.end - span.start} bytes {asked}", url=self._fill.key.uri
            )
        _pwrite_full(self._fd, view, offset)
        with self._progress:
            if self._hasher is None and self._md5 is not None and offset == self._hashed:
                self._md5.update(view)
                self._hashed += size
        self._fill.progressed(span, offset + size)
        with self._progress:
            self._progress.notify()
        return size

    def _start_hasher(self) -> None:
        with self._progress:
            if self._md5 is None or self._hasher is not None:
                return
            self._hasher = threading.Thread(target=self._hash_behind, name="xnatfs-md5", daemon=True)
            self._hasher.start()

    def _hash_behind(self) -> None:
        md5 = self._md5
        assert md5 is not None, "the hash thread runs only for keys with a digest"
        try:
            while True:
                with self._progress:
                    hashed = self._hashed
                    while self._fill.written == hashed and not self._finished:
                        self._progress.wait()
                    written = self._fill.written
                if written == hashed:
                    return
                while hashed < written:
                    hashed = _hash_mapped(md5, self._fd, hashed, min(written, hashed + HASH_PIECE_BYTES))
                with self._progress:
                    self._hashed = hashed
        except OSError as exc:
            self._hash_error = exc

    def close(self) -> None:
        """Stop the hashing thread once it has caught up with the bytes written."""
        with self._progress:
            hasher = self._hasher
            self._finished = True
            self._progress.notify()
        if hasher is not None:
            hasher.join()

    def verify(self) -> None:
        key = self._fill.key
        self.close()
        written = self._fill.written
        if written != key.size:
            raise XnatServerError(f"download ended after {written} of {key.size} bytes", url=key.uri)
        if self._hash_error is not None:
            raise XnatServerError(f"could not check the download's MD5: {self._hash_error}", url=key.uri)
        if self._md5 is not None and self._md5.hexdigest() != key.digest.lower():
            raise XnatServerError("downloaded file does not match its MD5 digest", url=key.uri)


def _hash_mapped(md5: hashlib._Hash, fd: int, start: int, end: int) -> int:
    """Add bytes ``[start, end)`` of the file ``fd`` to ``md5``, straight from the page cache; returns ``end``."""
    if os.fstat(fd).st_size < end:
        # A mapping past the end of the file would kill the process (SIGBUS) where a read fails.
        raise OSError(errno.EIO, "cache file shorter than the bytes written to it")
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with (
        mmap.mmap(fd, end - base, access=mmap.ACCESS_READ, offset=base) as mapped,
        memoryview(mapped) as whole,
        whole[start - base :] as piece,
    ):
        md5.update(piece)
    return end


class ContentCache:
    """Size-bounded, least-recently-used, on-disk cache of file contents.

    Every method blocks and is safe to call from any thread. ``fetch_workers``
    bounds how many :meth:`start_fetch` downloads run at once;
    ``rescan_interval`` is how stale (seconds) the in-memory index may be
    before it is rebuilt from the folder when room must be made.
    """

    def __init__(self, directory: Path | str, max_bytes: int, *, fetch_workers: int = 8, rescan_interval: float = 30.0):
        self.directory = Path(directory).expanduser().resolve()
        self.max_bytes = int(max_bytes)
        self.rescan_interval = rescan_interval
        make_private_dir(self.directory)
        self._data_dir = make_private_dir(self.directory / "data")
        _make_subfolders(self._data_dir)
        self._tmp_dir = make_private_dir(self.directory / "tmp")
        self._locks_dir = make_private_dir(self.directory / "locks")
        self._whole_dir = make_private_dir(self.directory / "whole")
        self._lock = threading.RLock()
        self._index: dict[str, list[int]] = {}  # name → [size, last use in ns]
        self._index_bytes = 0
        self._last_scan = float("-inf")
        self._reserved: dict[str, int] = {}  # entries being filled here → size
        # Files being written here (kept or not) → their size, and the fill whose bytes on
        # disk count already (None: nothing written until the whole file is).
        self._claims: dict[object, tuple[int, _Fill | None]] = {}
        self._pins: dict[str, _SharedHandle] = {}
        self._fills: dict[CacheKey, _Fill] = {}
        self._own_temps: set[Path] = set()
        self._temp_numbers = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="xnatfs-fetch")
        with self._lock:
            self._remove_leftovers()
            self._rescan()

    # -- public API ---------------------------------------------------------

    def lookup(self, key: CacheKey) -> CachedFile | None:
        """The complete entry for ``key``, open and pinned, or None. Counts as a use."""
        with self._lock:
            return self._open_entry(entry_name(key), key)

    def contains(self, key: CacheKey) -> bool:
        """Whether a complete entry exists; not counted as a use."""
        try:
            return os.stat(self._entry_path(entry_name(key))).st_size == key.size
        except FileNotFoundError:
            return False

    def note_whole(self, group: str) -> None:
        """Remember that every file of ``group`` (a series) was in the cache at once.

        Only a hint: eviction may have taken some of them since, and whoever
        trusts it must still look each file up.
        """
        (self._whole_dir / _uri_hash(group)).touch(mode=0o600)

    def had_whole(self, group: str) -> bool:
        """Whether :meth:`note_whole` was said of ``group``."""
        return (self._whole_dir / _uri_hash(group)).exists()

    def fetch(self, key: CacheKey, download: Callable[[BinaryIO], None]) -> CachedFile:
        """Return the entry for ``key``, downloading it first if needed.

        ``download(fileobj)`` must write the whole body to ``fileobj`` (which
        is not seekable; ``tell()`` says how much arrived, for resuming with a
        Range request), or, to fetch it in several streams at once, write each
        part through its own ``fileobj.part(offset, end)``. Concurrent callers, in this process or others, share
        one download. Raises the download's exception, or XnatServerError when
        the body's size or MD5 does not match the key; nothing is cached then.
        """
        cached = self.lookup(key)
        if cached is not None:
            return cached
        view, fill, _created = self._join(key, download)
        with view:
            # A queued background fill is taken over rather than waited for,
            # so a reader is never stuck behind unrelated prefetches.
            if fill.claim():
                self._run_fill(fill)
            return view.result()

    def start_fetch(self, key: CacheKey, download: Callable[[BinaryIO], None]) -> PendingFetch:
        """Like :meth:`fetch`, but the download runs in the background; the
        returned :class:`PendingFetch` serves bytes as they arrive."""
        cached = self.lookup(key)
        if cached is not None:
            return PendingFetch(key, own=cached)
        view, fill, created = self._join(key, download)
        if created:
            self._pool.submit(self._run_queued, fill)
        return view

    def insert(self, key: CacheKey, source: Path | str | BinaryIO) -> None:
        """Adopt bytes obtained some other way (unpacked from a zip, just
        uploaded); checked against the key like a download."""

        def copy_from(fileobj: BinaryIO) -> None:
            if isinstance(source, (str, Path)):
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, fileobj, COPY_CHUNK)
            else:
                shutil.copyfileobj(source, fileobj, COPY_CHUNK)

        self.fetch(key, copy_from).close()

    def insert_bytes(self, key: CacheKey, data: bytes, *, checked: bool = False) -> CachedFile | None:
        """Adopt ``data`` held in memory (a file unpacked from a series zip)
        and return its entry open, or None when the cache has no room for it.

        Raises XnatServerError when ``data`` does not match the key's size or
        MD5 (``checked``: the caller has just made sure with
        :func:`check_bytes`). Cheaper than :meth:`insert`: with the bytes
        already here there is no download to share, so no lock file; two
        processes adopting the same key at once each rename identical bytes
        into place.

        A series zip inserts hundreds of files from several threads at once:
        nothing under the cache lock touches the disk unless the entry is
        known there already, so those threads do not queue for the lock
        while each waits for its system calls.
        """
        if not checked:
            check_bytes(key, data)
        name = entry_name(key)
        free = disk_free(self.directory)
        with self._lock:
            if name in self._pins or name in self._index:
                existing = self._open_entry(name, key)
                if existing is not None:
                    return existing
            if not self._room_on_disk(key.size, free) or not self._reserve(name, key.size):
                return None
            claim = object()
            self._claims[claim] = (key.size, None)
        tmp_path = self._temp_path(name)
        fd = None
        try:
            fd = self._open_temp(tmp_path)
            _pwrite_full(fd, data, 0)
            path = self._place(name, fd, tmp_path)
            with self._lock:
                self._reserved.pop(name, None)
                self._claims.pop(claim, None)
                return self._pin_placed(name, key.size, fd, path).open()
        except BaseException:
            if fd is not None:
                os.close(fd)
            self._drop_temp(tmp_path)
            with self._lock:
                self._reserved.pop(name, None)
                self._claims.pop(claim, None)
            raise

    def parking(self) -> ParkedFiles:
        """A place on this cache's disk for checked bytes that wait to be written into it,
        cheaper to fill than entries (no file made per piece): a series zip's files,
        while memory is short and their readers are still going."""
        return ParkedFiles(self)

    def room_to_park(self, size: int) -> bool:
        """Whether the disk holds ``size`` more bytes with :data:`DISK_RESERVE` to spare, and the
        bytes of the files being written here, without evicting anything."""
        free = disk_free(self.directory)
        with self._lock:
            return free >= size + DISK_RESERVE + self._unwritten()

    def open_nameless(self) -> int:
        """A new file in the cache folder, with no name, open for reading and writing."""
        try:
            return os.open(self._tmp_dir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        # A file system without nameless files: a name removed at once (a crash in between
        # leaves a temp file, which the next start of a cache here removes).
        path = self._temp_path("parked")
        fd = self._open_temp(path)
        self._drop_temp(path)
        return fd

    def close_later(self, fd: int) -> None:
        """Close ``fd`` in one of this cache's threads: the last close of a large nameless
        file frees its blocks, which takes the disk's time, not the caller's."""
        try:
            self._pool.submit(os.close, fd)
        except RuntimeError:  # the cache is closed: no threads left
            os.close(fd)

    def discard_uri(self, uri: str) -> None:
        """Forget every cached version of ``uri``. Readers that have it open
        keep reading what they opened."""
        prefix = _uri_hash(uri) + "-"
        folder = self._data_dir / prefix[:2]
        with self._lock:
            for fill in self._fills.values():
                if fill.key.uri == uri:
                    fill.keep = False
            try:
                names = [n for n in os.listdir(folder) if n.startswith(prefix)]
            except FileNotFoundError:
                names = []
            for name in names:
                try:
                    os.unlink(folder / name)
                except FileNotFoundError:
                    pass
                self._index_drop(name)
                self._pins.pop(name, None)

    def info(self) -> CacheInfo:
        with self._lock:
            self._rescan()
            return CacheInfo(
                self.directory,
                len(self._index),
                self._index_bytes,
                self.max_bytes,
                len(self._pins),
                disk_free(self.directory),
            )

    def downloads(self) -> list[tuple[str, int, int]]:
        """(uri, bytes so far, size) of each download this process is running now."""
        with self._lock:
            fills = list(self._fills.values())
        return [(fill.key.uri, fill.received, fill.key.size) for fill in fills if fill.state == "running"]

    def disk_size(self) -> int:
        """The size of the disk the cache folder is on, which may bound the cache before ``max_bytes`` does."""
        disk = os.statvfs(self.directory)
        return disk.f_blocks * disk.f_frsize

    def make_disk_room(self, nbytes: int) -> int:
        """Evict entries nobody has open until the disk of the cache folder has ``nbytes``
        free (for the upload spool beside it, and for the cache's own fills); the bytes free then."""
        free = disk_free(self.directory)
        with self._lock:
            return self._disk_room(nbytes, free)

    def clear(self) -> None:
        """Drop every entry nobody has open, and leftovers of crashed processes."""
        with self._lock:
            self._remove_leftovers()
            self._rescan()
            self._evict_down_to(0)

    def close(self) -> None:
        """Stop background downloads that have not started; running ones finish."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queued = [fill for fill in self._fills.values() if fill.claim()]
        for fill in queued:
            self._complete(fill, None, XnatServerError("the cache was closed", url=fill.key.uri))
        # A process sharing this cache that was killed left its partial downloads; they
        # would otherwise stay until some mount starts on this cache again.
        with self._lock:
            self._remove_leftovers()

    # -- filling ------------------------------------------------------------

    def _join(self, key: CacheKey, download: Callable[[BinaryIO], None]) -> tuple[PendingFetch, _Fill, bool]:
        """A view on the fill for ``key``: the one under way, or a new queued
        one (then the flag is True and the caller must get it run)."""
        with self._lock:
            fill = self._fills.get(key)
            created = fill is None
            if fill is None:
                fill = self._fills[key] = _Fill(key, download)
            view = PendingFetch(key, fill)
            with fill.lock:
                fill.views.append(view)
        return view, fill, created

    def _run_queued(self, fill: _Fill) -> None:
        if fill.claim():
            self._run_fill(fill)

    def _run_fill(self, fill: _Fill) -> None:
        name = entry_name(fill.key)
        lock_path = self._locks_dir / f"{name}.lock"
        try:
            lock_fd = lock_named(lock_path)
            try:
                self._fill_locked(fill, name)
            finally:
                unlock_named(lock_fd, lock_path)
        except BaseException as exc:
            # Whatever stopped this filler, the callers waiting on the fill
            # learn of it; a fill that was finished stays as it was.
            self._complete(fill, None, exc)
            if not isinstance(exc, Exception):
                raise

    def _fill_locked(self, fill: _Fill, name: str) -> None:
        key = fill.key
        free = disk_free(self.directory)
        with self._lock:
            # Another process may have filled it while we waited for the lock.
            existing = self._open_entry(name, key)
            if existing is not None:
                with existing:
                    self._complete(fill, existing, None)
                return
            if not self._room_on_disk(key.size, free):
                # Served without being kept or not, the file is written here first.
                raise OSError(errno.ENOSPC, self._no_room_message(key))
            kept = self._reserve(name, key.size)
            self._claims[fill] = (key.size, fill)
        tmp_path = self._temp_path(name)
        fd = None
        try:
            fd = self._open_temp(tmp_path)
            with fill.lock:
                fill.fd = fd
            writer = _EntryWriter(fd, fill)
            try:
                # Not a full BinaryIO, but all a download uses of one: write, tell, seekable, flush.
                fill.download(cast(BinaryIO, writer))
                writer.verify()
            finally:
                writer.close()
            with self._lock:
                self._reserved.pop(name, None)
                self._claims.pop(fill, None)
                # Under the lock: discard_uri clears fill.keep, and must not miss the entry placed here.
                if kept and fill.keep:
                    handle = self._pin_placed(name, key.size, fd, self._place(name, fd, tmp_path))
                else:
                    logger.debug("%s served without caching (%d bytes)", key.uri, key.size)
                    handle = _SharedHandle(fd, key.size, tmp_path, self._lock, self._drop_transient)
                # Held until handed out to the waiting callers: a reader that
                # finds the new entry meanwhile and closes it must not release it.
                entry = handle.open()
        except BaseException as exc:
            logger.debug("download of %s failed: %s", key.uri, exc)
            with fill.lock:
                fill.fd = None
            if fd is not None:
                os.close(fd)
            self._drop_temp(tmp_path)
            with self._lock:
                self._reserved.pop(name, None)
                self._claims.pop(fill, None)
            self._complete(fill, None, exc)
            return
        with entry:
            self._complete(fill, entry, None)

    def _place(self, name: str, fd: int, tmp_path: Path) -> Path:
        """Move a verified file written through ``fd`` into place as entry ``name``.

        May run outside the cache lock while the caller holds ``name`` reserved, which keeps
        this process's evictions away from it."""
        path = self._entry_path(name)
        try:
            os.rename(tmp_path, path)
        except FileNotFoundError:
            # The first entry in its subfolder (these are never removed).
            make_private_dir(path.parent)
            os.rename(tmp_path, path)
        self._own_temps.discard(tmp_path)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return path

    def _pin_placed(self, name: str, size: int, fd: int, path: Path) -> _SharedHandle:
        """Index and pin an entry just placed; its last write counts as its use (no utime)."""
        self._index_set(name, size, time.time_ns())
        handle = _SharedHandle(fd, size, path, self._lock, self._unpin)
        self._pins[name] = handle
        return handle

    def _complete(self, fill: _Fill, entry: CachedFile | None, error: BaseException | None) -> None:
        """Finish ``fill`` with ``entry`` (which the caller keeps open meanwhile) or ``error``."""
        # Under the cache lock throughout: the lock order is always cache lock,
        # then a fill's condition.
        with self._lock:
            if self._fills.get(fill.key) is fill:
                del self._fills[fill.key]
            fill.finish(None if entry is None else entry._handle, error)

    def _drop_transient(self, handle: _SharedHandle) -> None:
        os.close(handle.fd)
        self._drop_temp(handle.path)

    def _temp_path(self, name: str) -> Path:
        return self._tmp_dir / f"{name}.{os.getpid()}.{next(self._temp_numbers)}.part"

    def _open_temp(self, path: Path) -> int:
        """Create the temp file for an entry being filled; the caller drops it on failure."""
        # Named ours before it exists, so this process's clean-up of leftovers passes it by.
        # No cache lock: that clean-up only asks the set whether it holds a path.
        self._own_temps.add(path)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                # Marks the file as in progress for other processes' clean-up.
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            if same_file(fd, path):
                return fd
            # Another process's clean-up removed it between its creation and the lock.
            os.close(fd)

    def _drop_temp(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._own_temps.discard(path)

    # -- entries, pins and eviction (callers hold self._lock) ---------------

    def _entry_path(self, name: str) -> Path:
        return self._data_dir / name[:2] / name

    def _open_entry(self, name: str, key: CacheKey) -> CachedFile | None:
        handle = self._pins.get(name)
        if handle is None:
            handle = self._pin(name, key.size)
            if handle is None:
                return None
        now = time.time_ns()
        self._touch(handle.fd, handle.path, now)
        if name in self._index:
            self._index[name][1] = now
        else:
            self._index_set(name, key.size, now)
        return handle.open()

    @staticmethod
    def _touch(fd: int, path: Path, now: int) -> None:
        try:
            os.utime(fd, ns=(now, now))
        except OSError as exc:  # a read-only or foreign-owned cache still serves
            logger.debug("cannot record use of %s: %s", path, exc)

    def _pin(self, name: str, size: int) -> _SharedHandle | None:
        path = self._entry_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._index_drop(name)
            return None
        try:
            # Blocks only while another process's evictor is deleting it.
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_size != size or not same_file(fd, path):
                os.close(fd)
                self._index_drop(name)
                return None
        except BaseException:
            os.close(fd)
            raise
        handle = _SharedHandle(fd, size, path, self._lock, self._unpin)
        self._pins[name] = handle
        return handle

    def _unpin(self, handle: _SharedHandle) -> None:
        name = handle.path.name
        if self._pins.get(name) is handle:
            del self._pins[name]
        os.close(handle.fd)

    def _reserve(self, name: str, size: int) -> bool:
        """Make room for ``size`` more bytes; False when that is impossible
        (too big, or the rest is pinned), in which case the entry is served
        but not kept."""
        if size > self.max_bytes:
            return False
        limit = self.max_bytes - size
        if self._used() > limit:
            if time.monotonic() - self._last_scan > self.rescan_interval:
                self._rescan()
            self._evict_down_to(limit)
        if self._used() > limit:
            return False
        self._reserved[name] = size
        return True

    def _used(self) -> int:
        return self._index_bytes + sum(self._reserved.values())

    def _evict_down_to(self, limit: int) -> None:
        self._evict_oldest(lambda: self._used() <= limit)

    def _evict_oldest(self, enough: Callable[[], bool]) -> int:
        """Evict least recently used entries nobody has open until ``enough()``; how many went."""
        evicted = 0
        by_age = sorted(self._index.items(), key=lambda item: item[1][1])
        for name, (_size, used_ns) in by_age:
            if enough():
                break
            if name in self._pins or name in self._reserved:
                continue
            if self._evict(name, used_ns):
                evicted += 1
        return evicted

    def _room_on_disk(self, size: int, free: int) -> bool:
        """Make the disk hold ``size`` more bytes with :data:`DISK_RESERVE` to spare, evicting
        entries as needed whatever ``--cache-size`` allows (the disk may be the smaller bound).

        ``free`` is the disk's free space measured just before the cache lock was taken;
        files finished since then may have used up to one file's size of it, well within the reserve."""
        needed = size + DISK_RESERVE + self._unwritten()
        return self._disk_room(needed, free) >= needed

    def _unwritten(self) -> int:
        """What the files being written here still need of the disk, counted as taken."""
        return sum(total - (fill.received if fill is not None else 0) for total, fill in self._claims.values())

    def _disk_room(self, needed: int, free: int) -> int:
        """``free`` if it is ``needed`` bytes or more, else the bytes free once entries were evicted for them."""
        return free if free >= needed else self._free_disk_to(needed)

    def _free_disk_to(self, needed: int) -> int:
        """Evict entries until the disk has ``needed`` bytes free, or none is left to evict; the bytes free then."""
        if time.monotonic() - self._last_scan > self.rescan_interval:
            self._rescan()  # other processes' entries count too
        before = self._index_bytes
        evicted = self._evict_oldest(lambda: disk_free(self.directory) >= needed)
        if evicted:
            logger.info(
                "evicted %d cached files (%d bytes) to make room on the disk of %s",
                evicted,
                before - self._index_bytes,
                self.directory,
            )
        return disk_free(self.directory)

    def _no_room_message(self, key: CacheKey) -> str:
        return (
            f"{key.uri} ({key.size} bytes) does not fit on the disk of the cache folder {self.directory}: "
            f"{disk_free(self.directory)} bytes free once every cached file not in use was evicted, "
            f"{DISK_RESERVE} of them kept free for uploads"
        )

    def _evict(self, name: str, used_ns: int) -> bool:
        """Remove the entry unless another process holds or used it meanwhile; whether it went."""
        path = self._entry_path(name)
        fd = try_lock_exclusive(path)
        if fd is None:
            if not path.exists():
                self._index_drop(name)
            return False  # pinned by another process
        try:
            st = os.fstat(fd)
            if st.st_mtime_ns > used_ns:
                # Another process used it since we last looked: it is not old.
                self._index[name][1] = st.st_mtime_ns
                return False
            removed = same_file(fd, path)
            if removed:
                os.unlink(path)
            self._index_drop(name)
            return removed
        finally:
            os.close(fd)

    def _index_set(self, name: str, size: int, used_ns: int) -> None:
        self._index_drop(name)
        self._index[name] = [size, used_ns]
        self._index_bytes += size

    def _index_drop(self, name: str) -> None:
        old = self._index.pop(name, None)
        if old is not None:
            self._index_bytes -= old[0]

    def _rescan(self) -> None:
        index: dict[str, list[int]] = {}
        total = 0
        for folder in os.scandir(self._data_dir):
            if not folder.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(folder.path):
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                index[item.name] = [st.st_size, st.st_mtime_ns]
                total += st.st_size
        self._index = index
        self._index_bytes = total
        self._last_scan = time.monotonic()

    def _remove_leftovers(self) -> None:
        removed = remove_unlocked(self._tmp_dir, self._own_temps)
        remove_unlocked(self._locks_dir)
        if removed:
            logger.info("removed %d unfinished downloads from %s", removed, self._tmp_dir)
