"""Whether the changes a caller asked for reached the server.

A change that fails may have been carried out all the same: its request
reached the server and the answer was lost, or said 500. One that failed
before any changing request went out (the server refused the connection,
the client failed fast, a GET or HEAD asked first went unanswered) changed
nothing. Whoever shows the server's state after a failed change needs to
tell the two apart: :func:`watching_changes` counts, for the calls made in
it (in this thread, through a context variable, as :mod:`budget` does),
the requests that could change the server and may have reached it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[SentChanges | None] = ContextVar("xnatfs_sent_changes", default=None)


class SentChanges:
    """Requests other than GET and HEAD that may have reached the server: answered
    (whatever the status), or failed once a connection was made."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def watching_changes(sent: SentChanges) -> Iterator[SentChanges]:
    """Count into ``sent`` the changing requests made inside the block."""
    token = _current.set(sent)
    try:
        yield sent
    finally:
        _current.reset(token)


def note_change_sent() -> None:
    """A request that could change the server may have reached it."""
    sent = _current.get()
    if sent is not None:
        sent.count += 1
