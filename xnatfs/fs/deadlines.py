"""Every file system request answered within a bound, whatever the server does.

A process waiting for a FUSE answer cannot be killed, not even with
SIGKILL, so no request may wait on the server without end. Each request
runs under a :class:`~xnatfs.client.budget.Budget` of ``timeout`` seconds
without progress: the HTTP layer caps its socket waits and retries by it,
and the event loop answers the kernel when it is spent, even if a worker
thread is still stuck in a socket call (that thread is abandoned; its socket
timeout ends it soon after, and it keeps its limiter slot until then, so
stuck threads never outnumber the workers). A download that keeps receiving
bytes pushes the deadline on, so it is never cut while it moves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from xnatfs.client.budget import Budget, bounded_by
from xnatfs.errors import XnatTimeout

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How often the deadlines of requests whose downloads made progress are pushed on.
LONGEST_CHECK_INTERVAL = 1.0


class RequestDeadlines:
    """The deadlines of the requests in progress on one mount (event loop only)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._active: dict[trio.CancelScope, Budget] = {}

    async def run(self, method: Callable[..., Awaitable[T]], *args, **kwargs) -> T:
        """``await method(*args, **kwargs)``, given up with :class:`XnatTimeout` when its budget is spent."""
        budget = Budget(self.timeout)
        with trio.CancelScope(deadline=trio.current_time() + self.timeout) as scope, bounded_by(budget):
            self._active[scope] = budget
            try:
                return await method(*args, **kwargs)
            finally:
                del self._active[scope]
        raise XnatTimeout(f"no answer from the server within {self.timeout:g} s")

    async def watch(self) -> None:
        """Push on the deadlines of requests whose downloads made progress; runs until cancelled."""
        interval = min(LONGEST_CHECK_INTERVAL, self.timeout / 4)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for scope, budget in list(self._active.items()):
                scope.deadline = now + budget.remaining()


async def run_abandonable(function: Callable[[], T], *, limiter: trio.CapacityLimiter,
                          discard: Callable[[T], None]) -> T:
    """``function()`` in a worker thread that is abandoned if the request is given up.

    A result that arrives after that (an open file, say) goes to ``discard``
    instead of being lost with its resources.
    """
    lock = threading.Lock()
    state: dict[str, object] = {}

    def work() -> T:
        result = function()
        with lock:
            if not state.get("abandoned"):
                state["result"] = result
                return result
        discard(result)
        return result

    try:
        return await trio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
    except trio.Cancelled:
        with lock:
            state["abandoned"] = True
            late = state.pop("result", _NONE)
        if late is not _NONE:
            discard(late)
        raise


_NONE = object()
