"""Open files being read: served from the content cache, fetched on a miss.

A cache hit costs no request at all. A miss downloads the file through the
cache (one download however many readers); files of ``large_file_bytes`` or
more are fetched in the background and each read waits only for the bytes it
needs, so a reader can start at once and memory stays flat.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO, Protocol

import trio

from xnatfs.cache.content import CachedFile, CacheKey, ContentCache, PendingFetch
from xnatfs.fs.deadlines import bounded, run_abandonable

logger = logging.getLogger(__name__)

# Reads up to this size are served on the event loop when the page cache holds them (about 50 µs).
LOOP_READ_BYTES = 1 << 20


class HotFiles:
    """Cache entries kept open after their last reader closed them.

    Opening such a file again costs no disk work, no lock and no worker
    thread: the open entry is lent to the new reader and given back on
    close. Bounded by count and bytes; the entries held stay pinned (not
    evicted) until they drop out of here and their last borrower is done.
    Used from the event loop only.
    """

    def __init__(self, max_files: int, max_bytes: int):
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._open: OrderedDict[CacheKey, CachedFile] = OrderedDict()
        self._bytes = 0
        self._lent: dict[CachedFile, int] = {}  # entry → readers that have it now
        self._dropped: set[CachedFile] = set()  # out of here, closed when the last reader gives it back

    def __len__(self) -> int:
        """How many entries are held open."""
        return len(self._open)

    def borrow(self, key: CacheKey) -> CachedFile | None:
        """The open entry of ``key`` for one more reader, who must :meth:`give_back` it."""
        cached = self._open.get(key)
        if cached is None:
            return None
        self._open.move_to_end(key)
        self._lent[cached] = self._lent.get(cached, 0) + 1
        return cached

    def give_back(self, cached: CachedFile) -> list[CachedFile]:
        """A reader is done with ``cached``; returns the entries the caller must close."""
        lent = self._lent.get(cached)
        if lent is None:
            return []  # let go of by clear(), whose caller closes it
        left = lent - 1
        if left:
            self._lent[cached] = left
            return []
        del self._lent[cached]
        if cached in self._dropped:
            self._dropped.discard(cached)
            return [cached]
        return []

    def keep(self, key: CacheKey, cached: CachedFile) -> list[CachedFile]:
        """Hold ``cached`` open; returns the entries the caller must close."""
        if key in self._open or key.size > self.max_bytes:
            return [cached]
        self._open[key] = cached
        self._bytes += key.size
        surplus = []
        while len(self._open) > self.max_files or self._bytes > self.max_bytes:
            old_key, old = self._open.popitem(last=False)
            self._bytes -= old_key.size
            surplus.extend(self._let_go(old))
        return surplus

    def drop_uri(self, uri: str) -> list[CachedFile]:
        """Let go of every version of ``uri``; returns the entries to close."""
        gone = [key for key in self._open if key.uri == uri]
        to_close = []
        for key in gone:
            self._bytes -= key.size
            to_close.extend(self._let_go(self._open.pop(key)))
        return to_close

    def clear(self) -> list[CachedFile]:
        """Let go of everything, lent or not (when the mount ends)."""
        held = list(self._open.values()) + list(self._dropped)
        self._open.clear()
        self._dropped.clear()
        self._lent.clear()
        self._bytes = 0
        return held

    def _let_go(self, cached: CachedFile) -> list[CachedFile]:
        if cached in self._lent:
            self._dropped.add(cached)
            return []
        return [cached]


class FileReader(Protocol):
    """An open file that serves bytes it does not own: a server file's :class:`ReadHandle`, or bytes in memory."""

    key: CacheKey

    async def read(self, offset: int, length: int, limiter: trio.CapacityLimiter) -> bytes:
        """Up to ``length`` bytes at ``offset``."""

    def read_blocking(self, offset: int, length: int) -> bytes:
        """Like :meth:`read`, from a worker thread."""

    async def close(self, limiter: trio.CapacityLimiter, hot: HotFiles | None = None) -> None:
        """Let go of what the open holds."""


class ReadHandle:
    """One open of a server file; all blocking calls run in worker threads."""

    def __init__(
        self,
        key: CacheKey,
        cached: CachedFile | None,
        pending: PendingFetch | None,
        lender: HotFiles | None = None,
        checked: bytes | None = None,
        *,
        parked: bool = False,
    ):
        self.key = key
        self._cached = cached
        self._pending = pending
        self._lender = lender  # ``cached`` is borrowed from it and goes back there
        self._checked = checked  # the whole file in memory, checked against the listing
        # ``cached`` is parked bytes, not an entry: kept open, it would keep their whole file.
        self._parked = parked

    @classmethod
    def from_checked(cls, key: CacheKey, checked: bytes | CachedFile) -> ReadHandle:
        """An open of bytes already checked against ``key`` (size, MD5), while the cache writes
        them: in memory, or parked on disk (an open of its own is taken)."""
        if isinstance(checked, CachedFile):
            return cls(key, checked.share(), None, parked=True)
        return cls(key, None, None, checked=checked)

    @classmethod
    async def from_cache(
        cls, cache: ContentCache, key: CacheKey, limiter: trio.CapacityLimiter, hot: HotFiles | None = None
    ) -> ReadHandle | None:
        """The cached copy of ``key``, or None on a miss."""
        if key.size == 0:
            return cls(key, None, None)
        cached = hot.borrow(key) if hot is not None else None
        if cached is not None:
            return cls(key, cached, None, lender=hot)
        cached = await trio.to_thread.run_sync(cache.lookup, key, limiter=limiter)
        return cls(key, cached, None) if cached is not None else None

    @classmethod
    async def download(
        cls,
        cache: ContentCache,
        key: CacheKey,
        download: Callable[[BinaryIO], None],
        limiter: trio.CapacityLimiter,
        *,
        large_file_bytes: int,
    ) -> ReadHandle:
        """Fetch ``key`` through the cache with ``download(fileobj)`` (another reader may be at it already)."""

        def open_blocking() -> ReadHandle:
            if key.size >= large_file_bytes:
                logger.debug("serving %s while it downloads", key.uri)
                return cls(key, None, cache.start_fetch(key, download))
            logger.debug("downloading %s", key.uri)
            try:
                return cls(key, cache.fetch(key, download), None)
            except ValueError:
                # The cache can lose the race between finishing a download and
                # a concurrent lookup of the same entry ("already released");
                # the entry is complete by then, so asking again finds it.
                logger.debug("cache entry for %s released under us; asking again", key.uri)
                return cls(key, cache.fetch(key, download), None)

        return await bounded(run_abandonable(open_blocking, limiter=limiter, discard=ReadHandle.discard))

    async def read(self, offset: int, length: int, limiter: trio.CapacityLimiter) -> bytes:
        end = min(offset + length, self.key.size)
        if offset >= end:
            return b""
        if self._checked is not None:
            return self._checked[offset:end]
        if end - offset <= LOOP_READ_BYTES:
            # Bytes already in memory are copied here: a worker thread costs
            # more than the copy. Anything that could wait goes to a thread.
            source = self._cached if self._cached is not None else self._pending
            assert source is not None  # only a discarded handle has neither
            data = source.pread_nowait(offset, end - offset)
            if data is not None:
                return data
        if self._cached is not None:
            return await trio.to_thread.run_sync(self._cached.pread, offset, end - offset, limiter=limiter)
        return await bounded(
            trio.to_thread.run_sync(self._read_pending, offset, end, limiter=limiter, abandon_on_cancel=True)
        )

    def read_blocking(self, offset: int, length: int) -> bytes:
        """Like :meth:`read`, from a worker thread."""
        end = min(offset + length, self.key.size)
        if offset >= end:
            return b""
        if self._checked is not None:
            return self._checked[offset:end]
        if self._cached is not None:
            return self._cached.pread(offset, end - offset)
        return self._read_pending(offset, end)

    def _read_pending(self, offset: int, end: int) -> bytes:
        pending = self._pending
        assert pending is not None  # only a discarded handle has neither
        pending.wait_for(end, start=offset)
        return pending.pread(offset, end - offset)

    def discard(self) -> None:
        """Close an open nobody will use (its request was given up)."""
        cached, pending = self._cached, self._pending
        self._cached = self._pending = None
        self._checked = None
        if cached is not None:
            cached.close()
        if pending is not None:
            pending.close()

    async def close(self, limiter: trio.CapacityLimiter, hot: HotFiles | None = None) -> None:
        """Let go of the entry; a complete one is handed to ``hot`` to be kept open."""
        cached, pending, lender = self._cached, self._pending, self._lender
        self._cached = self._pending = self._lender = None
        self._checked = None
        if self._parked and cached is not None:
            # Cheap here: the one close that frees their file's blocks runs in the cache's threads.
            cached.close()
            cached = None
        to_close = [cached] if cached is not None else []
        if cached is not None and lender is not None:
            to_close = lender.give_back(cached)
        elif cached is not None and hot is not None:
            to_close = hot.keep(self.key, cached)
        if not to_close and pending is None:
            # The usual close of a recently read file: nothing to wait for.
            return

        def close_blocking() -> None:
            for entry in to_close:
                entry.close()
            if pending is not None:
                pending.close()

        await trio.to_thread.run_sync(close_blocking, limiter=limiter)
