"""The TTL listing cache and its single-flight loading."""

from __future__ import annotations

import threading
import time

import trio
import trio.testing

from xnatfs.cache.listing import ListingCache
from xnatfs.errors import XnatNotFound


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingLoader:
    """A blocking load that counts calls and can be held back."""

    def __init__(self, value="listing", delay: float = 0.05, error: Exception | None = None):
        self.value = value
        self.delay = delay
        self.error = error
        self.calls = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        self.started.set()
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value


def test_values_expire_after_ttl():
    clock = Clock()
    cache = ListingCache(ttl=60, timer=clock)
    cache.put(("subjects", "STUDY01"), ["SUB001"])
    clock.now += 59
    assert cache.get(("subjects", "STUDY01")) == ["SUB001"]
    clock.now += 2
    assert cache.get(("subjects", "STUDY01")) is None
    assert len(cache) == 0


def test_invalidate_and_invalidate_where():
    cache = ListingCache(ttl=60)
    for path in ("/P/S1", "/P/S1/E1", "/P/S2", "/Q"):
        cache.put(path, path.upper())
    cache.invalidate("/Q")
    cache.invalidate_where(lambda key: key == "/P/S1" or key.startswith("/P/S1/"))
    assert [cache.get(k) for k in ("/P/S1", "/P/S1/E1", "/P/S2", "/Q")] == [None, None, "/P/S2", None]
    cache.clear()
    assert cache.get("/P/S2") is None


def test_max_rows_bounds_the_cache():
    cache = ListingCache(ttl=60, max_rows=10)
    for i in range(50):
        cache.put(i, i)
    assert len(cache) == 10
    assert cache.get(49) == 49


def test_the_bound_counts_the_rows_of_each_listing_not_the_listings():
    cache = ListingCache(ttl=60, max_rows=10)
    for i in range(5):
        cache.put(i, ["row"] * 4)
    assert cache.rows_held == 8  # two listings of four rows; the older ones went first
    assert [cache.get(i) is not None for i in range(5)] == [False, False, False, True, True]
    cache.put("three", ["row"] * 3)
    assert cache.rows_held == 7 and cache.get(3) is None and cache.get(4) is not None


def test_a_listing_heavier_than_the_bound_is_answered_but_not_kept():
    cache = ListingCache(ttl=60, max_rows=10)
    cache.put("small", ["row"] * 3)
    big = ["row"] * 11
    loader = CountingLoader(value=big)

    async def main():
        limiter = trio.CapacityLimiter(1)
        assert await cache.get_or_load("big", loader, limiter) is big
        assert await cache.get_or_load("big", loader, limiter) is big

    trio.run(main)
    assert loader.calls == 2
    assert cache.get("big") is None and cache.get("small") is not None
    assert cache.rows_held == 3


def test_concurrent_callers_share_one_load():
    cache = ListingCache(ttl=60)
    loader = CountingLoader(value=["a", "b"])
    results = []

    async def main():
        limiter = trio.CapacityLimiter(4)

        async def one():
            results.append(await cache.get_or_load("k", loader, limiter))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        results.append(await cache.get_or_load("k", loader, limiter))

    trio.run(main)
    assert results == [["a", "b"]] * 11
    assert loader.calls == 1


def test_none_is_cached_by_get_or_load():
    cache = ListingCache(ttl=60)
    loader = CountingLoader(value=None, delay=0)

    async def main():
        limiter = trio.CapacityLimiter(1)
        assert await cache.get_or_load("missing-name", loader, limiter) is None
        assert await cache.get_or_load("missing-name", loader, limiter) is None

    trio.run(main)
    assert loader.calls == 1


def test_a_failed_load_reaches_every_waiter_and_is_not_cached():
    cache = ListingCache(ttl=60)
    loader = CountingLoader(error=XnatNotFound("no such project", status=404))
    errors = []

    async def main():
        limiter = trio.CapacityLimiter(4)

        async def one():
            try:
                await cache.get_or_load("k", loader, limiter)
            except XnatNotFound as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert loader.calls == 1
        loader.error = None
        assert await cache.get_or_load("k", loader, limiter) == "listing"

    trio.run(main)
    assert len(errors) == 5
    assert loader.calls == 2


def test_invalidation_during_a_load_keeps_its_result_out():
    cache = ListingCache(ttl=60)
    loader = CountingLoader(value="before", delay=0.2)

    async def main():
        limiter = trio.CapacityLimiter(4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.get_or_load, "k", loader, limiter)
            await trio.to_thread.run_sync(loader.started.wait)
            cache.invalidate("k")  # e.g. we just created a subject
        assert cache.get("k") is None
        loader.value = "after"
        assert await cache.get_or_load("k", loader, limiter) == "after"

    trio.run(main)
    assert loader.calls == 2


def test_waiters_retry_when_the_loading_task_is_cancelled():
    cache = ListingCache(ttl=60)
    loader = CountingLoader(value="v", delay=0.1)
    results = []

    async def main():
        limiter = trio.CapacityLimiter(1)
        blocker = trio.Event()

        async def hold_limiter(task_status=trio.TASK_STATUS_IGNORED):
            async with limiter:
                task_status.started()
                await blocker.wait()

        async def waiter():
            results.append(await cache.get_or_load("k", loader, limiter))

        async with trio.open_nursery() as nursery:
            await nursery.start(hold_limiter)
            with trio.CancelScope() as scope:
                # The leader waits for the limiter and is cancelled there, with a waiter behind it.
                async with trio.open_nursery() as inner:
                    inner.start_soon(cache.get_or_load, "k", loader, limiter)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(waiter)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
            blocker.set()

    trio.run(main)
    assert results == ["v"]
    assert loader.calls == 1


def test_real_clock_expiry_reloads():
    ttl = 0.05
    cache = ListingCache(ttl=ttl)
    loader = CountingLoader(delay=0)

    async def main():
        limiter = trio.CapacityLimiter(1)
        await cache.get_or_load("k", loader, limiter)
        with trio.fail_after(5):
            while cache.get("k") is not None:
                await trio.sleep(ttl / 5)
        await cache.get_or_load("k", loader, limiter)

    trio.run(main)
    assert loader.calls == 2
