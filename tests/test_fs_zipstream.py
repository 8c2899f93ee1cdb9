"""Zips parsed from their local headers as they stream in."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from xnatfs.fs.zipstream import ZipStream, ZipStreamError


class Unseekable(io.RawIOBase):
    """Where zipfile must write data descriptors: a stream it cannot seek back in."""

    def __init__(self):
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += chunk
        return len(chunk)


FILES = {
    "S/scans/2-T1w/resources/DICOM/files/2-0001.dcm": os.urandom(5000),
    "S/scans/2-T1w/resources/DICOM/files/sub/2-0002.dcm": b"\0" * 70000,
    "S/scans/2-T1w/resources/DICOM/files/empty.dcm": b"",
}


def make_zip(*, seekable: bool, compression: int, force_zip64: bool = False) -> bytes:
    sink = io.BytesIO() if seekable else Unseekable()
    with zipfile.ZipFile(sink, "w", compression=compression) as bundle:
        bundle.writestr("S/scans/", b"")
        for name, data in FILES.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            with bundle.open(info, "w", force_zip64=force_zip64) as entry:
                entry.write(data)
    return bytes(sink.getvalue() if seekable else sink.data)


def parse(blob: bytes, chunk: int) -> dict[str, bytes]:
    found = {}
    sizes = {name: len(data) for name, data in FILES.items()}
    stream = ZipStream(lambda name, data: found.__setitem__(name, data), sizes.get, max_entry=1 << 20)
    for start in range(0, len(blob), chunk):
        stream.write(blob[start : start + chunk])
    stream.close()
    return found


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("force_zip64", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_every_entry_arrives_whole(seekable, compression, force_zip64, chunk):
    blob = make_zip(seekable=seekable, compression=compression, force_zip64=force_zip64)
    if chunk == 1 and len(blob) > 20000 and compression == zipfile.ZIP_STORED:
        chunk = 3
    assert parse(blob, chunk) == FILES


def test_a_cut_zip_is_an_error():
    blob = make_zip(seekable=False, compression=zipfile.ZIP_STORED)
    with pytest.raises(ZipStreamError):
        parse(blob[: len(blob) // 2], 4096)


def test_stored_entry_of_unknown_size_is_an_error():
    blob = make_zip(seekable=False, compression=zipfile.ZIP_STORED)
    stream = ZipStream(lambda name, data: None, lambda name: None, max_entry=1 << 20)
    with pytest.raises(ZipStreamError):
        stream.write(blob)


def test_garbage_is_an_error():
    stream = ZipStream(lambda name, data: None, lambda name: None, max_entry=1 << 20)
    with pytest.raises(ZipStreamError):
        stream.write(b"<html>not a zip</html>" * 3)


def test_entries_larger_than_the_bound_are_refused():
    blob = make_zip(seekable=True, compression=zipfile.ZIP_STORED)
    stream = ZipStream(lambda name, data: None, lambda name: 70000, max_entry=10000)
    with pytest.raises(ZipStreamError):
        stream.write(blob)


def test_a_damaged_entry_is_an_error():
    blob = bytearray(make_zip(seekable=False, compression=zipfile.ZIP_STORED))
    position = blob.index(FILES["S/scans/2-T1w/resources/DICOM/files/2-0001.dcm"][:64])
    blob[position + 10] ^= 0xFF
    with pytest.raises(ZipStreamError):
        parse(bytes(blob), 4096)
