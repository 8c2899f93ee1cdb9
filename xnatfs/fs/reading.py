"""Open files being read: served from the content cache, fetched on a miss.

A cache hit costs no request at all. A miss downloads the file through the
cache (one download however many readers); files of ``large_file_bytes`` or
more are fetched in the background and each read waits only for the bytes it
needs, so a reader can start at once and memory stays flat.
"""

from __future__ import annotations

import logging

import trio

from xnatfs.cache.content import CacheKey, CachedFile, ContentCache, PendingFetch

logger = logging.getLogger(__name__)

class ReadHandle:
    """One open of a server file; all blocking calls run in worker threads."""

    def __init__(self, key: CacheKey, cached: CachedFile | None, pending: PendingFetch | None, hit: bool):
        self.key = key
        self.hit = hit
        self._cached = cached
        self._pending = pending

    @classmethod
    async def from_cache(cls, cache: ContentCache, key: CacheKey, limiter: trio.CapacityLimiter) -> ReadHandle | None:
        """The cached copy of ``key``, or None on a miss."""
        if key.size == 0:
            return cls(key, None, None, hit=True)
        cached = await trio.to_thread.run_sync(cache.lookup, key, limiter=limiter)
        return cls(key, cached, None, hit=True) if cached is not None else None

    @classmethod
    async def download(cls, cache: ContentCache, key: CacheKey, download, limiter: trio.CapacityLimiter,
                       *, large_file_bytes: int) -> ReadHandle:
        """Fetch ``key`` through the cache with ``download(fileobj)`` (another reader may be at it already)."""

        def open_blocking() -> ReadHandle:
            if key.size >= large_file_bytes:
                logger.debug("serving %s while it downloads", key.uri)
                return cls(key, None, cache.start_fetch(key, download), hit=False)
            logger.debug("downloading %s", key.uri)
            return cls(key, cache.fetch(key, download), None, hit=False)

        return await trio.to_thread.run_sync(open_blocking, limiter=limiter)

    async def read(self, offset: int, length: int, limiter: trio.CapacityLimiter) -> bytes:
        end = min(offset + length, self.key.size)
        if offset >= end:
            return b""
        if self._cached is not None:
            return await trio.to_thread.run_sync(self._cached.pread, offset, end - offset, limiter=limiter)
        return await trio.to_thread.run_sync(self._read_pending, offset, end, limiter=limiter)

    def read_blocking(self, offset: int, length: int) -> bytes:
        """Like :meth:`read`, from a worker thread."""
        end = min(offset + length, self.key.size)
        if offset >= end:
            return b""
        if self._cached is not None:
            return self._cached.pread(offset, end - offset)
        return self._read_pending(offset, end)

    def _read_pending(self, offset: int, end: int) -> bytes:
        self._pending.wait_for(end)
        return self._pending.pread(offset, end - offset)

    async def close(self, limiter: trio.CapacityLimiter) -> None:
        cached, pending = self._cached, self._pending
        self._cached = self._pending = None
        if cached is None and pending is None:
            return

        def close_blocking() -> None:
            if cached is not None:
                cached.close()
            if pending is not None:
                pending.close()

        await trio.to_thread.run_sync(close_blocking, limiter=limiter)
