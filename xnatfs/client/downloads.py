"""Downloads that land in the local file system.

A download to a path goes to a hidden temporary file in the destination's
folder and is renamed into place only when it is complete and has the
expected size, so a reader never sees half a file under the final name and
a failed download leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xnatfs.client.http import CHUNK_SIZE, XnatSession
from xnatfs.errors import XnatServerError

logger = logging.getLogger(__name__)

_ZIP_ENTRY = re.compile(r"^.*?/resources/[^/]+/files/(?P<path>.+)$")


def _temp_beside(destination: Path) -> tuple[int, str]:
    destination.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def download_to_path(
    session: XnatSession,
    server_path: str,
    destination: str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    retries: int | None = None,
    check: Callable[[str], None] | None = None,
) -> str:
    """Stream ``server_path`` into ``destination``; return the destination path.

    The size is checked against Content-Length when the server sends one
    (zips have none). ``check`` gets the finished temporary file and raises
    if it is unusable (for example :func:`check_zip`).
    """
    destination = Path(destination).absolute()
    fd, temp = _temp_beside(destination)
    try:
        with os.fdopen(fd, "wb") as handle:
            session.download_whole(server_path, handle, params=params, retries=retries)
        if check is not None:
            check(temp)
        os.replace(temp, destination)
    except BaseException:
        _discard(temp)
        raise
    return str(destination)


def check_zip(path: str) -> None:
    """Raise unless ``path`` is a complete zip archive (its directory is at the end)."""
    if not zipfile.is_zipfile(path):
        raise XnatServerError(f"the server's zip archive is incomplete or damaged ({os.path.getsize(path)} bytes)")


def entry_relpath(name: str, known: set[str]) -> str | None:
    """The file path inside its resource for a zip entry name.

    XNAT names entries ``<session>/scans/<id>-<type>/resources/<label>/files/<path>``
    by default; other layouts are matched against the listed paths by suffix.
    """
    match = _ZIP_ENTRY.match(name)
    if match and (not known or match["path"] in known):
        return match["path"]
    if name in known:
        return name
    candidates = [path for path in known if name.endswith("/" + path)]
    if candidates:
        return max(candidates, key=len)
    return None if known else name.rsplit("/", 1)[-1]


def extract_zip(
    zip_path: str, output_dir: str | os.PathLike[str], expected: Mapping[str, int] | None = None
) -> list[str]:
    """Unpack a resource zip into ``output_dir``, one file per listed path.

    ``expected`` maps relative paths to sizes (from a file listing): every
    one of them must be in the zip with that size. Entry names are never
    trusted as paths; nothing is written outside ``output_dir``.
    """
    root = Path(output_dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    known = set(expected or ())
    written = []
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            relpath = entry_relpath(info.filename, known)
            if relpath is None:
                logger.debug("skipping zip entry %s: not in the file listing", info.filename)
                continue
            target = (root / relpath).resolve()
            if not target.is_relative_to(root.resolve()) or target == root.resolve():
                raise XnatServerError(f"zip entry would land outside the folder: {info.filename!r}")
            if expected is not None and info.file_size != expected[relpath]:
                raise XnatServerError(
                    f"zip entry {relpath} has {info.file_size} bytes, the listing says {expected[relpath]}"
                )
            fd, temp = _temp_beside(target)
            try:
                with os.fdopen(fd, "wb") as out, archive.open(info) as source:
                    while chunk := source.read(CHUNK_SIZE):
                        out.write(chunk)
                os.replace(temp, target)
            except BaseException:
                _discard(temp)
                raise
            written.append(relpath)
    missing = known.difference(written)
    if missing:
        raise XnatServerError(f"the zip lacks {len(missing)} listed file(s), e.g. {sorted(missing)[0]}")
    return written
