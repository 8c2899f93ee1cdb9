"""Zip and tar downloads written as a stream, and unpacking of uploaded archives.

Downloads are produced straight into the chunked HTTP stream (no temporary
file, no Content-Length), stored rather than deflated: DICOM hardly
compresses and clients want the bytes fast.
"""

from __future__ import annotations

import shutil
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

COPY_BUFFER = 1024 * 1024
ZIP64_FROM = 2**31 - 1


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive
    path: Path  # the bytes on disk
    size: int
    mtime: float


def write_zip(entries: list[Entry], out: BinaryIO) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=_zip_time(entry.mtime))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = entry.size
            with archive.open(info, "w", force_zip64=entry.size >= ZIP64_FROM) as dest, open(entry.path, "rb") as src:
                shutil.copyfileobj(src, dest, COPY_BUFFER)


def write_tar(entries: list[Entry], out: BinaryIO, *, gzip: bool) -> None:
    with tarfile.open(fileobj=out, mode="w|gz" if gzip else "w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.size = entry.size
            info.mtime = int(entry.mtime)
            info.mode = 0o644
            with open(entry.path, "rb") as src:
                archive.addfile(info, src)


def _zip_time(mtime: float) -> tuple:
    # Zip cannot hold times before 1980.
    return time.localtime(max(mtime, 315532800 + 86400))[:6]


ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def unpack(archive_path: Path, name: str) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (member path, readable file) for each regular file of an uploaded archive.

    Raises ValueError if the archive cannot be read.
    """
    lower = name.lower()
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(archive_path) as archive:
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    with archive.open(info) as member:
                        yield info.filename, member
        else:
            with tarfile.open(archive_path, "r:*") as tar:
                for entry in tar:
                    if not entry.isfile():
                        continue
                    extracted = tar.extractfile(entry)
                    if extracted is not None:
                        yield entry.name, extracted
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"Unreadable archive: {exc}") from exc
