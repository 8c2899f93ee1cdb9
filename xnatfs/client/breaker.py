"""Failing fast while the server does not answer.

When several requests in a row found the server silent (timed out),
waiting the whole timeout again for every new request only
piles up stuck callers. :class:`CircuitBreaker` then refuses requests at
once for a short cool-off; after it, one request is let through as a probe
(and one more after each further cool-off), and the first answer of any
kind closes the breaker again. Each
change of state is logged once, not each refused request.
"""

from __future__ import annotations

import logging
import threading
import time

from xnatfs.errors import XnatUnavailable

logger = logging.getLogger(__name__)

FAILURES_TO_OPEN = 3
COOL_OFF_SECONDS = 5.0


class CircuitBreaker:
    """Counts consecutive timed-out requests to one server; thread-safe."""

    def __init__(self, server: str, *, failures_to_open: int = FAILURES_TO_OPEN, cool_off: float = COOL_OFF_SECONDS):
        self.server = server
        self.failures_to_open = failures_to_open
        self.cool_off = cool_off
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None  # None: closed; else when the next probe may go

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None

    @property
    def silent(self) -> bool:
        """The last request found the server silent (it timed out)."""
        with self._lock:
            return self._failures > 0

    def before_request(self, url: str) -> None:
        """Raise :class:`XnatUnavailable` if this request must fail fast."""
        with self._lock:
            if self._open_until is None:
                return
            now = time.monotonic()
            if now >= self._open_until:
                self._open_until = now + self.cool_off
                return
        raise XnatUnavailable("the server is not answering; failing fast for a while", url=url)

    def answered(self) -> None:
        """The server answered (with any status)."""
        with self._lock:
            was_open = self._open_until is not None
            self._failures = 0
            self._open_until = None
        if was_open:
            logger.warning("server answers again: %s", self.server)

    def failed(self, why: str) -> None:
        """A request timed out."""
        with self._lock:
            self._failures += 1
            was_open = self._open_until is not None
            if not was_open and self._failures < self.failures_to_open:
                return
            self._open_until = time.monotonic() + self.cool_off
        if not was_open:
            logger.error(
                "server stalled: %s (%s, %d times in a row); failing fast, probing every %.0f s",
                self.server,
                why,
                self.failures_to_open,
                self.cool_off,
            )
