"""Reading a zip as it downloads, one entry at a time.

XNAT streams zips without a Content-Length, and the central directory comes
last; waiting for it would hold back every file until the whole zip is in.
:class:`ZipStream` is fed the bytes as they arrive (it is the file object
the download writes into) and hands over each entry as soon as its data is
complete (and its CRC checked), from the local headers alone.

Entries written to a stream may carry their sizes only in a data descriptor
after the data. Deflated data ends by itself; for stored data the size must
come from elsewhere: ``size_of(name)`` (the server's file listing). An entry
whose end cannot be found stops the parse with :class:`ZipStreamError`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

LOCAL_HEADER = b"PK\x03\x04"
CENTRAL_HEADER = b"PK\x01\x02"
END_OF_ARCHIVE = (b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")
DESCRIPTOR = b"PK\x07\x08"
_HEADER = struct.Struct("<4sHHHHHIIIHH")
_STORED, _DEFLATED = 0, 8
_HAS_DESCRIPTOR = 0x08
_ZIP64_EXTRA = 0x0001
_SIZE_UNKNOWN = 0xFFFFFFFF


class ZipStreamError(ValueError):
    """The bytes do not parse as a zip this reader can follow."""


class ZipStream:
    """A writable file object that parses the zip written into it.

    ``on_entry(name, data)`` is called for every complete file entry;
    ``size_of(name)`` gives the size of a stored entry whose header does not.
    ``max_entry`` bounds the bytes held for one entry.
    """

    def __init__(self, on_entry: Callable[[str, bytes], None], size_of: Callable[[str], int | None], *, max_entry: int):
        self.on_entry = on_entry
        self.size_of = size_of
        self.max_entry = max_entry
        self.finished = False
        # Bytes not parsed yet are _buffer[_start:]: taking from the front moves
        # an offset, and the parsed part is dropped only once it is most of it.
        self._buffer = bytearray()
        self._start = 0
        self._step = self._header
        self._name = ""
        self._flags = 0
        self._crc = 0
        self._zip64 = False
        self._remaining = 0
        self._data = bytearray()
        self._whole: bytes | None = None  # a stored entry taken in one piece, not copied into _data
        self._inflate: zlib._Decompress | None = None

    # file-object interface for the downloader
    def write(self, chunk: bytes) -> int:
        if not self.finished:
            if self._start and self._start * 2 >= len(self._buffer):
                del self._buffer[: self._start]
                self._start = 0
            self._buffer += chunk
            while not self.finished and self._step():
                pass
        return len(chunk)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.finished:
            raise ZipStreamError("the zip ended in the middle of an entry")

    # ---- parsing steps: each returns True when it made progress ---------

    def _available(self) -> int:
        return len(self._buffer) - self._start

    def _take(self, count: int) -> bytes | None:
        if self._available() < count:
            return None
        start = self._start
        with memoryview(self._buffer) as view:
            taken = bytes(view[start : start + count])
        self._start = start + count
        return taken

    def _header(self) -> bool:
        if self._available() < 4:
            return False
        start = self._start
        signature = bytes(self._buffer[start : start + 4])
        if signature == CENTRAL_HEADER or signature in END_OF_ARCHIVE:
            self.finished = True
            self._buffer.clear()
            self._start = 0
            return False
        if self._available() < _HEADER.size:
            return False
        (signature, _version, flags, method, _time, _date, crc, packed_size, size, name_length, extra_length) = (
            _HEADER.unpack_from(self._buffer, start)
        )
        if signature != LOCAL_HEADER:
            raise ZipStreamError("no local file header where one was expected")
        if self._available() < _HEADER.size + name_length + extra_length:
            return False
        self._start += _HEADER.size
        raw_name = self._take(name_length)
        extra = self._take(extra_length)
        assert raw_name is not None and extra is not None  # both lengths were checked above
        self._name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        self._flags = flags
        self._crc = crc
        self._zip64 = False
        zip64_sizes = _zip64_sizes(extra)
        if zip64_sizes is not None:
            self._zip64 = True
            size, packed_size = zip64_sizes if size == _SIZE_UNKNOWN else (size, packed_size)
        if method == _DEFLATED:
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            self._remaining = -1
        elif method == _STORED:
            self._inflate = None
            if flags & _HAS_DESCRIPTOR and not size and not self._name.endswith("/"):
                known = self.size_of(self._name)
                if known is None:
                    raise ZipStreamError(f"no size known for stored entry {self._name!r}")
                size = known
            if size > self.max_entry:
                raise ZipStreamError(f"entry {self._name!r} is larger than {self.max_entry} bytes")
            self._remaining = size
        else:
            raise ZipStreamError(f"entry {self._name!r} uses compression method {method}")
        self._data = bytearray()
        self._whole = None
        self._step = self._body
        return True

    def _body(self) -> bool:
        if self._inflate is not None:
            if not self._available():
                return False
            with memoryview(self._buffer) as view:
                self._keep(self._inflate.decompress(view[self._start :]))
            self._buffer.clear()
            self._start = 0
            if not self._inflate.eof:
                return False
            self._buffer += self._inflate.unused_data
        elif not self._data and self._available() >= self._remaining:
            # The whole entry is here: one copy, straight to the reader.
            self._whole = self._take(self._remaining)
            self._remaining = 0
        else:
            if not self._available():
                return False
            stored = self._take(min(self._remaining, self._available()))
            assert stored is not None  # never more than the buffer holds
            self._keep(stored)
            self._remaining -= len(stored)
            if self._remaining:
                return False
        self._step = self._descriptor if self._flags & _HAS_DESCRIPTOR else self._deliver
        return True

    def _keep(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > self.max_entry:
            raise ZipStreamError(f"entry {self._name!r} is larger than {self.max_entry} bytes")

    def _descriptor(self) -> bool:
        if self._available() < 4:
            return False
        start = self._start
        signed = self._buffer[start : start + 4] == DESCRIPTOR
        length = (4 if signed else 0) + 4 + (16 if self._zip64 else 8)
        descriptor = self._take(length)
        if descriptor is None:
            return False
        self._crc = struct.unpack_from("<I", descriptor, 4 if signed else 0)[0]
        self._step = self._deliver
        return True

    def _deliver(self) -> bool:
        name = self._name
        data = self._whole if self._whole is not None else bytes(self._data)
        if zlib.crc32(data) != self._crc:
            raise ZipStreamError(f"entry {name!r} does not match its CRC")
        self._data = bytearray()
        self._whole = None
        self._step = self._header
        if not name.endswith("/"):
            self.on_entry(name, data)
        return True


def _zip64_sizes(extra: bytes) -> tuple[int, int] | None:
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        if kind == _ZIP64_EXTRA and length >= 16:
            return struct.unpack_from("<QQ", extra, position + 4)
        position += 4 + length
    return None
