"""XNAT errors → errno values, in one place, and the guard every handler wears.

Every file system handler is wrapped by :func:`fuse_handler`: whatever goes
wrong inside becomes a ``pyfuse3.FUSEError`` with a sensible errno and a log
line, so no exception ever reaches (and stops) the event loop.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from xnatfs.errors import (
    XnatConflict,
    XnatError,
    XnatInvalidLabel,
    XnatNotFound,
    XnatPermissionError,
    XnatServerError,
    XnatTimeout,
    XnatUnavailable,
    XnatUnsupported,
)
from xnatfs.fs.deadlines import CallerKilled, RequestDeadlines

logger = logging.getLogger(__name__)

_BY_TYPE: tuple[tuple[type[XnatError], int], ...] = (
    (XnatNotFound, errno.ENOENT),
    (XnatPermissionError, errno.EACCES),  # includes XnatAuthError
    (XnatConflict, errno.EEXIST),
    (XnatInvalidLabel, errno.EINVAL),
    (XnatUnsupported, errno.ENOTSUP),
    (XnatServerError, errno.EIO),  # includes XnatTimeout, XnatUnavailable, XnatAnswerTooLarge
)

# A stalled server times out every request; one line a minute tells it.
TIMEOUT_LOG_INTERVAL = 60.0


class _Occasional:
    """Logs a recurring failure at most once per ``interval``, counting the ones kept quiet."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = float("-inf")
        self._quiet = 0

    def log(self, operation: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._quiet += 1
            logger.debug("%s failed: %s", operation, exc)
            return
        more = f" ({self._quiet} more since the last report)" if self._quiet else ""
        logger.error("%s failed: %s%s", operation, exc, more)
        self._last = now
        self._quiet = 0


_timeouts = _Occasional(TIMEOUT_LOG_INTERVAL)

# Keyed by int | None so that an error without a status falls through to EIO.
_BY_STATUS: dict[int | None, int] = {
    400: errno.EINVAL,
    401: errno.EACCES,
    403: errno.EACCES,
    404: errno.ENOENT,
    405: errno.ENOTSUP,
    409: errno.EEXIST,
    417: errno.EINVAL,
    422: errno.EINVAL,
}


# A file that would outgrow the spool's disk or the largest file the mount
# takes: the caller's request is refused, nothing failed.
_REFUSED_FOR_SIZE = frozenset({errno.ENOSPC, errno.EFBIG})


def errno_for(exc: BaseException) -> int:
    """The errno a file system caller should see for ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, CallerKilled):
        return errno.EINTR  # seen by nobody: the process dies with it
    if isinstance(exc, XnatError):
        for kind, code in _BY_TYPE:
            if isinstance(exc, kind):
                return code
        return _BY_STATUS.get(exc.status, errno.EIO)
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def to_fuse_error(exc: BaseException, operation: str) -> pyfuse3.FUSEError:
    """Log ``exc`` at a level that matches how surprising it is; return the FUSEError."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    code = errno_for(exc)
    if isinstance(exc, CallerKilled):
        logger.info("%s given up: %s", operation, exc)
    elif isinstance(exc, XnatUnavailable):
        logger.debug("%s: %s", operation, exc)  # the stall was logged once when it began
    elif isinstance(exc, XnatTimeout):
        _timeouts.log(operation, exc)
    elif isinstance(exc, XnatError):
        if code == errno.ENOENT:
            logger.debug("%s: %s", operation, exc)
        elif code == errno.EIO:
            logger.error("%s failed: %s", operation, exc)
        else:
            logger.warning("%s refused (%s): %s", operation, errno.errorcode.get(code, code), exc)
    elif isinstance(exc, OSError) and code in _REFUSED_FOR_SIZE:
        logger.warning("%s refused (%s): %s", operation, errno.errorcode.get(code, code), exc)
    elif isinstance(exc, OSError):
        logger.error("%s failed: %s", operation, exc)
    else:
        logger.error("%s failed unexpectedly", operation, exc_info=exc)
    return pyfuse3.FUSEError(code)


def refused(code: int, message: str, *args: object) -> pyfuse3.FUSEError:
    """The FUSEError for a change the mount turns down, with the reason logged for the user."""
    logger.warning(message, *args)
    return pyfuse3.FUSEError(code)


T = TypeVar("T")
P = ParamSpec("P")


def fuse_handler(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap an async pyfuse3 handler so that every exception becomes a FUSEError.

    Cancellation and other BaseExceptions pass through untouched: they belong
    to trio, not to the caller of the file system. A handler of an object
    with a ``deadlines`` attribute (:class:`xnatfs.fs.deadlines.RequestDeadlines`)
    runs under its bound.
    """

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        deadlines: RequestDeadlines | None = getattr(args[0], "deadlines", None) if args else None
        try:
            if deadlines is None:
                return await method(*args, **kwargs)
            return await deadlines.run(method, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise to_fuse_error(exc, method.__name__) from None

    return guarded


def never_waits(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Like :func:`fuse_handler`, for a handler that never waits on the server (it
    answers from what is in memory): errors are mapped the same way, and it pays
    nothing for a request bound it cannot need. A slow path of such a handler that
    may wait runs through ``self.deadlines.run`` itself."""

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise to_fuse_error(exc, method.__name__) from None

    return guarded
