"""XNAT errors map to the errno values docs/SEMANTICS.md §3 promises, in one place."""

import errno

import pyfuse3
import pytest

from xnatfs.errors import (
    XnatAuthError,
    XnatConflict,
    XnatError,
    XnatInvalidLabel,
    XnatNotFound,
    XnatPermissionError,
    XnatServerError,
    XnatUnsupported,
)
from xnatfs.fs.errno import errno_for, fuse_handler, never_waits


@pytest.mark.parametrize(
    "exc, expected",
    [
        (XnatNotFound("gone", status=404), errno.ENOENT),
        (XnatPermissionError("no", status=403), errno.EACCES),
        (XnatAuthError("login refused", status=401), errno.EACCES),
        (XnatConflict("label in use", status=409), errno.EEXIST),
        (XnatInvalidLabel("bad label", status=417), errno.EINVAL),
        (XnatServerError("down", status=503), errno.EIO),
        (XnatServerError("connection failed"), errno.EIO),
        (XnatUnsupported("cannot"), errno.ENOTSUP),
        (XnatError("odd", status=404), errno.ENOENT),
        (XnatError("odd", status=502), errno.EIO),
        (FileNotFoundError(errno.ENOENT, "x"), errno.ENOENT),
        (ValueError("bug"), errno.EIO),
        (ExceptionGroup("both", [XnatPermissionError("no", status=403), XnatNotFound("x")]), errno.EACCES),
    ],
)
def test_errno_for(exc, expected):
    assert errno_for(exc) == expected


async def _raises(exc):
    raise exc


@pytest.mark.parametrize("wrapper", [fuse_handler, never_waits])
def test_handlers_turn_every_exception_into_a_fuse_error(caplog, wrapper):
    import trio

    guarded = wrapper(_raises)
    for exc, code in (
        (XnatServerError("down", url="http://x/data/a", status=500), errno.EIO),
        (RuntimeError("bug"), errno.EIO),
        (XnatNotFound("gone"), errno.ENOENT),
    ):
        with pytest.raises(pyfuse3.FUSEError) as raised:
            trio.run(guarded, exc)
        assert raised.value.errno == code
    assert "http://x/data/a" in caplog.text and "500" in caplog.text
    assert "Traceback" in caplog.text or "RuntimeError" in caplog.text
