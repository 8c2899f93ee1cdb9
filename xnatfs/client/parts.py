"""One large file downloaded as several ranged streams at once.

A single HTTP stream of one file is limited by one connection and one
thread; where the server honours Range, the file is cut into parts that
several streams fetch side by side, in file order, so a reader going from
the start is served early. Each part goes to its own writer at its offset.
A part cut short is resumed on its own (only that part is asked for again);
every answer must describe the same version of the file as the first, so
parts of two versions are never joined. A server that answers the first
ranged request with the whole file is read as one stream, from that answer.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

from xnatfs.client.http import FileVersion, XnatSession

logger = logging.getLogger(__name__)


class PartTarget(Protocol):
    """Where the parts go: a writer for the bytes from ``offset`` up to ``end``."""

    def part(self, offset: int, end: int) -> BinaryIO: ...


@dataclass(frozen=True)
class PartPlan:
    """How a file of ``size`` bytes is cut: parts of ``part_size`` bytes, ``streams`` of them at once."""

    size: int
    part_size: int
    streams: int

    def bounds(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.part_size, self.size)) for start in range(0, self.size, self.part_size)]


class _Stopped(Exception):
    """Another part failed: this stream gives up."""


class _PartWriter:
    """A part's writer that stops its stream once another part failed, and
    reports when the first bytes arrive (the answer's status is known by then)."""

    def __init__(self, writer: BinaryIO, queue: _PartQueue, arrived: threading.Event | None = None):
        self._writer = writer
        self._queue = queue
        self._arrived = arrived

    def write(self, data: bytes | memoryview) -> int:
        if self._queue.stopped.is_set():
            raise _Stopped()
        if self._arrived is not None:
            self._arrived.set()
        return self._writer.write(data)


class _PartQueue:
    """The parts not yet started, handed out in file order; the first error stops them all."""

    def __init__(self, bounds: list[tuple[int, int]]):
        self._lock = threading.Lock()
        self._bounds = list(reversed(bounds))
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def take(self) -> tuple[int, int] | None:
        with self._lock:
            if self.stopped.is_set() or not self._bounds:
                return None
            return self._bounds.pop()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None and not isinstance(error, _Stopped):
                self.error = error
            self.stopped.set()


def download_in_parts(session: XnatSession, path: str, target: PartTarget, plan: PartPlan) -> None:
    """Write the whole file at ``path`` into ``target``, part by part, ``plan.streams`` parts at once.

    Raises the first part's error (after stopping the other streams); the
    target may then hold any mix of written parts, and the caller discards it.
    """
    bounds = plan.bounds()
    if session.supports_range is False or len(bounds) == 1:
        session.download(path, target.part(0, plan.size))
        return
    queue = _PartQueue(bounds[1:])
    version = FileVersion()
    arrived = threading.Event()

    def fetch_rest() -> None:
        while (part := queue.take()) is not None:
            start, end = part
            writer = cast(BinaryIO, _PartWriter(target.part(start, end), queue))
            session.download(path, writer, offset=start, length=end - start, same_as=version)

    def fetch_first() -> None:
        try:
            writer = cast(BinaryIO, _PartWriter(target.part(0, plan.size), queue, arrived))
            first_end = bounds[0][1]
            written = session.download(path, writer, length=first_end, same_as=version, to_end_if_unranged=True)
        finally:
            arrived.set()
        if written < plan.size:
            fetch_rest()

    streams = [_start(fetch_first, queue)]
    arrived.wait()
    if session.supports_range is True:
        logger.debug("%s: %d parts, %d streams", path, len(bounds), plan.streams)
        streams += [_start(fetch_rest, queue) for _ in range(min(plan.streams, len(bounds)) - 1)]
    elif session.supports_range is False:
        logger.info("%s: the server sent the whole file for a part of it; reading it as one stream", path)
    for stream in streams:
        stream.join()
    if queue.error is not None:
        raise queue.error


def _start(work: Callable[[], None], queue: _PartQueue) -> threading.Thread:
    """``work`` in a thread of its own that carries the caller's context (its request budget)."""
    context = contextvars.copy_context()

    def run() -> None:
        try:
            context.run(work)
        except BaseException as exc:
            queue.fail(exc)

    thread = threading.Thread(target=run, name="xnatfs-part", daemon=True)
    thread.start()
    return thread
