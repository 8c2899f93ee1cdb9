"""The exceptions every layer of xnatfs raises.

One family, rooted at :class:`XnatError`, so callers can catch "anything
XNAT said no to" in one clause and still tell a missing object from a
permission problem. The file system turns these into errno values in one
place (``xnatfs.fs.errno``); the command line turns them into one-line
messages.

Messages never contain credentials: URLs are stripped of any user:password
part before they are stored here.
"""

from __future__ import annotations

from typing import overload
from urllib.parse import urlsplit, urlunsplit


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: str | None) -> str | None:
    """Return ``url`` without any ``user:password@`` part and query secrets."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class XnatError(Exception):
    """XNAT refused a request, or could not be reached.

    ``status`` is the HTTP status code when the server answered, else None.
    ``url`` is the address asked for, without credentials.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        self.message = message
        self.url = redact_url(url)
        self.status = status
        super().__init__(message)

    def __str__(self) -> str:
        detail = self.message
        if self.status is not None:
            detail = f"{detail} (HTTP {self.status})"
        if self.url:
            detail = f"{detail} [{self.url}]"
        return detail


class XnatNotFound(XnatError):
    """The object does not exist (HTTP 404)."""


class XnatPermissionError(XnatError):
    """Not allowed: 403, or 401 even after a fresh login."""


class XnatAuthError(XnatPermissionError):
    """The credentials were refused, or the password has expired."""


class XnatPasswordExpired(XnatAuthError):
    """The server answered the login with its page asking for a new password."""


class XnatConflict(XnatError):
    """The label is in use, the object exists, or a workflow blocks the change (HTTP 409)."""


class XnatInvalidLabel(XnatError):
    """XNAT allows only letters, digits, ``_`` and ``-`` in IDs and labels (HTTP 417)."""


class XnatServerError(XnatError):
    """A 5xx answer or a network failure that outlasted the retries."""


class XnatTimeout(XnatServerError):
    """The server did not answer within the time allowed."""


class XnatUnavailable(XnatServerError):
    """Refused without asking: the server has just failed several requests in a row."""


class XnatAnswerTooLarge(XnatServerError):
    """An answer to be held in memory was larger than allowed."""


class XnatUnsupported(XnatError):
    """XNAT has no way to do what was asked."""


# Client errors that may pass: not logged in yet, too slow, busy or locked for now.
_PASSING_CLIENT_ERRORS = frozenset({401, 408, 409, 423, 429})


def is_permanent_refusal(exc: BaseException) -> bool:
    """The server answered that the request itself is wrong (a 4xx client
    error other than the passing ones): sending it again unchanged cannot help."""
    status = getattr(exc, "status", None) if isinstance(exc, XnatError) else None
    return status is not None and 400 <= status < 500 and status not in _PASSING_CLIENT_ERRORS


class XnatConversionError(XnatError):
    """A series could not be converted to NIfTI: the converter failed, timed
    out or wrote nothing, or the series' files were not at hand. ``url`` is
    the series' resource."""


# datman's name for the same family, so code written for datman.xnat works.
XnatException = XnatError
