"""XNAT errors → errno values, in one place, and the guard every handler wears.

Every file system handler is wrapped by :func:`fuse_handler`: whatever goes
wrong inside becomes a ``pyfuse3.FUSEError`` with a sensible errno and a log
line, so no exception ever reaches (and stops) the event loop.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3

from xnatfs.errors import (
    XnatConflict,
    XnatError,
    XnatInvalidLabel,
    XnatNotFound,
    XnatPermissionError,
    XnatServerError,
    XnatUnsupported,
)

logger = logging.getLogger(__name__)

_BY_TYPE: tuple[tuple[type[XnatError], int], ...] = (
    (XnatNotFound, errno.ENOENT),
    (XnatPermissionError, errno.EACCES),   # includes XnatAuthError
    (XnatConflict, errno.EEXIST),
    (XnatInvalidLabel, errno.EINVAL),
    (XnatUnsupported, errno.ENOTSUP),
    (XnatServerError, errno.EIO),
)

_BY_STATUS = {
    400: errno.EINVAL,
    401: errno.EACCES,
    403: errno.EACCES,
    404: errno.ENOENT,
    405: errno.ENOTSUP,
    409: errno.EEXIST,
    417: errno.EINVAL,
    422: errno.EINVAL,
}


def errno_for(exc: BaseException) -> int:
    """The errno a file system caller should see for ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
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
    if isinstance(exc, XnatError):
        if code == errno.ENOENT:
            logger.debug("%s: %s", operation, exc)
        elif code == errno.EIO:
            logger.error("%s failed: %s", operation, exc)
        else:
            logger.warning("%s refused (%s): %s", operation, errno.errorcode.get(code, code), exc)
    elif isinstance(exc, OSError):
        logger.error("%s failed: %s", operation, exc)
    else:
        logger.error("%s failed unexpectedly", operation, exc_info=exc)
    return pyfuse3.FUSEError(code)


T = TypeVar("T")


def fuse_handler(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap an async pyfuse3 handler so that every exception becomes a FUSEError.

    Cancellation and other BaseExceptions pass through untouched: they belong
    to trio, not to the caller of the file system.
    """

    @functools.wraps(method)
    async def guarded(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise to_fuse_error(exc, method.__name__) from None

    return guarded
