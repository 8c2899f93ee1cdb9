"""What the HTTP session has been doing lately: requests, errors by kind, latency, health.

Kept cheaply for ``xnatfs status``: one small bucket per minute in a ring
of :data:`MINUTES`, updated under a lock once per HTTP request (never per
file system request). Health is judged from the latest outcomes:

* ``stalled``: a request has been waiting for more than ``stall_after``
  seconds and nothing has answered meanwhile;
* ``unreachable``: the latest attempt got no HTTP answer at all;
* ``slow``: answers in the current and previous minute took ``slow_after``
  seconds on average or more;
* ``answering``: otherwise (also before the first request).

The session adds what it alone knows: while its circuit breaker fails
requests fast, the server is ``stalled`` whatever the last outcomes were.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

MINUTES = 10
SLOW_SECONDS = 2.0
STALL_SECONDS = 30.0


@dataclass
class _Minute:
    minute: int
    requests: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


def error_kind(outcome: int | BaseException) -> str:
    """A short name for a failed request: ``HTTP 503``, ``timeout``, ``connection``, ``tls``, ..."""
    if isinstance(outcome, int):
        return f"HTTP {outcome}"
    if isinstance(outcome, requests.exceptions.SSLError):
        return "tls"
    if isinstance(outcome, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(outcome, requests.exceptions.ConnectionError):
        return "connection"
    return type(outcome).__name__


class RequestActivity:
    """Counters of one session's HTTP requests, safe to update from worker threads."""

    def __init__(
        self,
        *,
        slow_after: float = SLOW_SECONDS,
        stall_after: float = STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.slow_after = slow_after
        self.stall_after = stall_after
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: list[_Minute | None] = [None] * MINUTES
        self._waiting: dict[int, float] = {}
        self._tickets = itertools.count()
        self._last_answer = 0.0
        self._unreachable = False

    def _bucket(self, now: float) -> _Minute:
        minute = int(now // 60)
        slot = minute % MINUTES
        bucket = self._ring[slot]
        if bucket is None or bucket.minute != minute:
            bucket = self._ring[slot] = _Minute(minute)
        return bucket

    def started(self) -> int:
        """A ticket for a request going out now; pass it to :meth:`finished`."""
        ticket = next(self._tickets)
        with self._lock:
            self._waiting[ticket] = self._clock()
        return ticket

    def finished(self, ticket: int, outcome: int | BaseException) -> None:
        """Record the HTTP status a request got, or the exception that ended it."""
        now = self._clock()
        with self._lock:
            began = self._waiting.pop(ticket, now)
            bucket = self._bucket(now)
            bucket.requests += 1
            bucket.seconds += now - began
            if isinstance(outcome, int):
                self._last_answer = now
                self._unreachable = False
                if outcome >= 400:
                    bucket.errors[error_kind(outcome)] += 1
            else:
                kind = error_kind(outcome)
                bucket.errors[kind] += 1
                # A timeout got no answer either: a hung server is as unreachable as a refusing one.
                self._unreachable = kind in ("connection", "tls", "timeout")

    def summary(self, minutes: int = 5) -> dict[str, Any]:
        """Requests, errors by kind and mean latency over the last ``minutes``; health; in flight."""
        now = self._clock()
        current = int(now // 60)
        with self._lock:
            recent = [b for b in self._ring if b is not None and current - b.minute < minutes]
            latest = [b for b in recent if current - b.minute < 2]
            oldest_wait = now - min(self._waiting.values()) if self._waiting else 0.0
            errors: Counter[str] = Counter()
            for bucket in recent:
                errors.update(bucket.errors)
            answered = sum(b.requests for b in latest)
            mean = sum(b.seconds for b in latest) / answered if answered else 0.0
            stalled = oldest_wait > self.stall_after and now - self._last_answer > self.stall_after
            health = (
                "stalled"
                if stalled
                else "unreachable"
                if self._unreachable
                else "slow"
                if answered and mean >= self.slow_after
                else "answering"
            )
            return {
                "minutes": minutes,
                "requests": sum(b.requests for b in recent),
                "errors": dict(errors),
                "mean_seconds": round(mean, 3),
                "in_flight": len(self._waiting),
                "health": health,
            }
