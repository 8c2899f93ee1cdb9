"""How long the work on behalf of one caller may go without progress.

A :class:`Budget` travels with one caller's work (a file system request,
say) through a context variable, so it reaches the worker thread that talks
HTTP without being passed down every call. The HTTP layer caps each socket
wait and each retry pause by what is left of it and stops retrying when it
is spent; a download that keeps receiving bytes calls :meth:`Budget.progress`
and so is never cut while it moves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_current: ContextVar[Budget | None] = ContextVar("xnatfs_budget", default=None)


class Budget:
    """``seconds`` without progress before the work is given up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last_progress = time.monotonic()

    def progress(self) -> None:
        """Bytes moved: the wait starts again."""
        self.last_progress = time.monotonic()

    def take_progress_of(self, work: Budget) -> None:
        """Count the progress of ``work``, which this caller waits for, as its own."""
        if work.last_progress > self.last_progress:
            self.last_progress = work.last_progress

    def remaining(self) -> float:
        """Seconds left before the work is given up (0 when spent)."""
        return max(0.0, self.seconds - (time.monotonic() - self.last_progress))


def current_budget() -> Budget | None:
    """The budget of the work running here, or None when it is unbounded."""
    return _current.get()


@contextmanager
def bounded_by(budget: Budget) -> Iterator[Budget]:
    """Run the block (and the worker threads it starts) under ``budget``."""
    token = enter_budget(budget)
    try:
        yield budget
    finally:
        leave_budget(token)


def enter_budget(budget: Budget) -> Token[Budget | None]:
    """Like :func:`bounded_by`, for code that cannot use a ``with`` block cheaply; undo with :func:`leave_budget`."""
    return _current.set(budget)


def leave_budget(token: Token[Budget | None]) -> None:
    _current.reset(token)


def note_progress() -> None:
    """Tell the current budget, if any, that bytes moved."""
    budget = _current.get()
    if budget is not None:
        budget.progress()
