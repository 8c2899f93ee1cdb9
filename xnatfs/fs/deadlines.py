"""Every file system request answered within a bound, whatever the server does.

A process waiting for a FUSE answer cannot be killed, not even with
SIGKILL, so no request may wait on the server without end. Each request
runs under a :class:`~xnatfs.client.budget.Budget` of ``timeout`` seconds
without progress: the HTTP layer caps its socket waits and retries by it,
and each place where a request may wait on the server (a worker thread, a
download or listing another request started) is wrapped in :func:`bounded`,
which gives up when the budget is spent, even if a worker thread is still
stuck in a socket call (that thread is abandoned; its socket
timeout ends it soon after, and it keeps its limiter slot until then, so
stuck threads never outnumber the workers). A download that keeps receiving
bytes pushes the deadline on, so it is never cut while it moves.

A request whose caller was killed while it waits is given up at once
(:mod:`xnatfs.fs.callers`): its process cannot die before it is answered.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from xnatfs.client.budget import Budget, current_budget, enter_budget, leave_budget
from xnatfs.errors import XnatTimeout
from xnatfs.fs.callers import current_caller, enter_caller, is_killed, leave_caller

T = TypeVar("T")
P = ParamSpec("P")

# How often waiting requests are checked for a spent budget: the bound is kept to
# within this much (or a quarter of the timeout, if that is less). No finer: the
# HTTP layer's own timeout, whose error names the request, should come first.
LONGEST_CHECK_INTERVAL = 1.0
# How often their callers are looked at: a killed caller dies within this.
CALLER_CHECK_INTERVAL = 0.25


class CallerKilled(Exception):
    """The process that made the request was killed while the request waited."""


class _Wait:
    """One place a request waits: its budget, the budget of the work it waits for, its caller."""

    __slots__ = ("budget", "caller", "caller_killed", "moving")

    def __init__(self, budget: Budget, moving: Budget | None, caller: int | None):
        self.budget = budget
        self.moving = moving
        self.caller = caller
        self.caller_killed = False


class RequestDeadlines:
    """The bound on the requests of one mount (event loop only).

    :meth:`run` puts a request under a fresh budget and costs next to
    nothing; only the places that may wait on the server pay for a cancel
    scope, through :func:`bounded`.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._waiting: dict[trio.CancelScope, _Wait] = {}
        # Set while anything waits: an idle mount's watch sleeps instead of waking every tick.
        self._busy = trio.Event()

    async def run(self, method: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await method(*args, **kwargs)`` as one request under its own budget.

        Its caller is the process of the request context among ``args``, if
        any; a handler without one names it with :func:`asked_by`.
        """
        budget_token = enter_budget(Budget(self.timeout))
        own_token = _deadlines.set(self)
        caller_token = enter_caller(_caller_in(args))
        try:
            return await method(*args, **kwargs)
        finally:
            leave_caller(caller_token)
            _deadlines.reset(own_token)
            leave_budget(budget_token)

    async def watch(self) -> None:
        """Give up the waits whose request's budget is spent or whose caller was killed; runs until cancelled."""
        budget_interval = min(LONGEST_CHECK_INTERVAL, self.timeout / 4)
        tick = min(CALLER_CHECK_INTERVAL, budget_interval)
        ticks_per_budget_check = max(1, round(budget_interval / tick))
        ticks = 0
        while True:
            if not self._waiting:
                self._busy = trio.Event()
                await self._busy.wait()
            await trio.sleep(tick)
            ticks += 1
            budgets_due = ticks % ticks_per_budget_check == 0
            for scope, wait in list(self._waiting.items()):
                if wait.caller is not None and is_killed(wait.caller):
                    wait.caller_killed = True
                    scope.cancel()
                elif budgets_due:
                    if wait.moving is not None:
                        wait.budget.take_progress_of(wait.moving)
                    if wait.budget.remaining() <= 0:
                        scope.cancel()


def _caller_in(args: tuple[object, ...]) -> int | None:
    for arg in args:
        if isinstance(arg, pyfuse3.RequestContext):
            return arg.pid or None  # 0: the kernel itself, or a process outside the mount's namespace
    return None


def asked_by(tid: int | None) -> None:
    """The request being answered came from thread ``tid`` (for handlers FUSE gives no caller:
    the thread that opened the file). Lasts until the request ends."""
    enter_caller(tid)


_deadlines: ContextVar[RequestDeadlines | None] = ContextVar("xnatfs_deadlines", default=None)


async def bounded(awaitable: Coroutine[Any, Any, T], *, moving: Budget | None = None) -> T:
    """``await awaitable``, given up with :class:`XnatTimeout` once the current request's budget is spent.

    ``moving`` is the budget of work another caller runs and this one waits
    for (a zip, a download): while that work moves, so does this request.
    Outside a request (background work) it is just awaited.
    """
    deadlines = _deadlines.get()
    budget = current_budget()
    if deadlines is None or budget is None:
        return await awaitable
    if moving is not None:
        budget.take_progress_of(moving)
    if budget.remaining() <= 0:
        awaitable.close()
        raise _timeout(budget)
    wait = _Wait(budget, moving, current_caller())
    with trio.CancelScope() as scope:
        deadlines._waiting[scope] = wait
        deadlines._busy.set()
        try:
            return await awaitable
        finally:
            del deadlines._waiting[scope]
    if wait.caller_killed:
        raise CallerKilled(f"process {wait.caller} was killed while its request waited")
    raise _timeout(budget)


def _timeout(budget: Budget) -> XnatTimeout:
    return XnatTimeout(f"no answer from the server within {budget.seconds:g} s")


async def run_abandonable(
    function: Callable[[], T], *, limiter: trio.CapacityLimiter, discard: Callable[[T], None]
) -> T:
    """``function()`` in a worker thread that is abandoned if the request is given up.

    A result that arrives after that (an open file, say) goes to ``discard``
    instead of being lost with its resources.
    """
    lock = threading.Lock()
    abandoned = False
    delivered: list[T] = []

    def work() -> T:
        result = function()
        with lock:
            if not abandoned:
                delivered.append(result)
                return result
        discard(result)
        return result

    try:
        return await trio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
    except trio.Cancelled:
        with lock:
            abandoned = True
            late = delivered[:]
        for result in late:
            discard(result)
        raise
