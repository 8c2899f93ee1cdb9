"""Short-lived caches of listings and other metadata.

A listing is trusted for ``ttl`` seconds. When several tasks want the same
missing listing at once, one of them loads it (in a worker thread) and the
others wait for that result instead of asking the server again.

The caches are bounded by the rows they hold (:func:`rows`), not by how
many listings: a walk of a project whose sessions hold thousands of files
each would otherwise keep every file record it met, and the daemon would
grow with the archive instead of staying within a bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

import trio
from cachetools import TTLCache

T = TypeVar("T")

# About half a kilobyte of memory each (a file's record: its names, size, digest, URI).
MAX_ROWS = 1_000_000


def rows(value: object) -> int:
    """What a cached value weighs: the records of a listing (its length), 1 for one record."""
    if isinstance(value, (str, bytes)):
        return 1
    try:
        return max(1, len(value))  # type: ignore[arg-type]
    except TypeError:
        return 1


class _Flight:
    """One load under way, and what came of it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: Exception | None = None
        self.abandoned = False  # the loading task was cancelled: waiters try again
        self.stale = False  # invalidated while loading: do not keep the result


class ListingCache:
    """A TTL cache with single-flight loading.

    Any value can be cached, None included (get() cannot tell a cached None
    from a miss; get_or_load() can). Safe to use from the trio thread and
    from worker threads at once.

    ``generation`` changes whenever a value is stored or dropped, so that
    what is worked out of cached values can be kept until then, or until
    one of them expires (:meth:`get_until` tells when).
    """

    def __init__(self, ttl: float, max_rows: int = MAX_ROWS, *, timer: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.now = timer
        self.max_rows = max_rows
        self.generation = 0
        # Each value is kept with the time it expires; the least recently used go first
        # once the rows of all of them pass ``max_rows``.
        self._cache: TTLCache[Hashable, tuple[Any, float]] = TTLCache(
            maxsize=max_rows, ttl=ttl, timer=timer, getsizeof=lambda kept: rows(kept[0])
        )
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The cached value, or None when missing or expired."""
        with self._lock:
            kept = self._cache.get(key)
        return None if kept is None else kept[0]

    def get_until(self, key: Hashable) -> tuple[Any, float] | None:
        """``(cached value, when it expires)``, or None when missing or expired."""
        with self._lock:
            return self._cache.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._store(key, value)

    def _store(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` under ``key`` (the lock is held)."""
        try:
            self._cache[key] = (value, self.now() + self.ttl)
        except ValueError:
            # Heavier than the whole bound: handed to whoever asked, not kept.
            self._cache.pop(key, None)
        self.generation += 1

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key``; a load of it already under way will not be kept."""
        with self._lock:
            self.generation += 1
            self._cache.pop(key, None)
            flight = self._flights.pop(key, None)
            if flight is not None:
                flight.stale = True

    def invalidate_where(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget every key for which ``predicate(key)`` is true."""
        with self._lock:
            self.generation += 1
            for key in [k for k in list(self._cache.keys()) if predicate(k)]:
                self._cache.pop(key, None)
            for key in [k for k in self._flights if predicate(k)]:
                self._flights.pop(key).stale = True

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._cache.clear()
            for flight in self._flights.values():
                flight.stale = True
            self._flights.clear()

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def expire(self) -> None:
        """Drop what expired now rather than when the next listing comes in."""
        with self._lock:
            self._cache.expire()

    @property
    def rows_held(self) -> int:
        """The rows (:func:`rows`) of the listings in memory now, at most ``max_rows``."""
        with self._lock:
            return int(self._cache.currsize)

    async def get_or_load(self, key: Hashable, load: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        """The cached value for ``key``, or ``load()`` run in a worker thread.

        Concurrent callers for one key share a single load. If it raises,
        every one of them gets the exception and nothing is cached.
        """
        while True:
            with self._lock:
                kept = self._cache.get(key)
                if kept is not None:
                    return cast(T, kept[0])
                flight = self._flights.get(key)
                leading = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight()
            if leading:
                return await self._load(key, flight, load, limiter)
            await flight.done.wait()
            if flight.abandoned:
                continue
            if flight.error is not None:
                raise flight.error
            return cast(T, flight.value)

    async def _load(self, key: Hashable, flight: _Flight, load: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        try:
            # Abandoned if the caller gives up: a file system request must be
            # answered in time even while the server does not answer.
            value = await trio.to_thread.run_sync(load, limiter=limiter, abandon_on_cancel=True)
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.abandoned = True
            raise
        else:
            flight.value = value
            with self._lock:
                if not flight.stale:
                    self._store(key, value)
            return value
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()
