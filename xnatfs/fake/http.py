"""HTTP/1.1 plumbing of the fake XNAT: requests, responses and how they travel.

Handlers build a :class:`Response` whose body is bytes, a :class:`FileBody`
(sent with ``socket.sendfile``) or a :class:`StreamBody` (a producer writing
into a chunked stream, used for zip and tar downloads). :func:`send` writes
it, and is also where injected faults (dropped connections, truncated
bodies) are carried out, so every endpoint is subject to them alike.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

STREAM_CHUNK = 256 * 1024
COPY_BUFFER = 1024 * 1024
# A body that the handler left unread is drained up to this size to keep
# the connection usable; beyond it the connection is closed instead.
MAX_DRAIN = 16 * 1024 * 1024


class BadRequest(Exception):
    """The request itself is malformed (answered 400)."""


@dataclass
class FileBody:
    """``length`` bytes from ``offset`` of an open file, which :func:`send` closes."""

    file: BinaryIO
    offset: int
    length: int


@dataclass
class StreamBody:
    """A body of unknown length: ``produce(out)`` writes it into ``out``."""

    produce: Callable[[BinaryIO], None]


@dataclass
class Response:
    status: int = 200
    body: bytes | FileBody | StreamBody = b""
    content_type: str = "text/plain;charset=UTF-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return self


def error_page(status: int, message: str) -> Response:
    """An error answer the way XNAT's REST layer writes it: the message in ``<h3>``."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    text = html.escape(message)
    body = (
        f"<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{text}</h3><p>{reason} ({status})</p>\n</body>\n</html>\n"
    )
    return Response(status, body.encode(), "text/html;charset=UTF-8")


class Request:
    """One parsed HTTP request; the body is read on demand."""

    def __init__(self, handler):
        self.handler = handler
        self.method: str = handler.command
        self.target: str = handler.path
        split = urlsplit(handler.path)
        self.path: str = split.path
        self.segments: list[str] = [unquote(s) for s in split.path.split("/") if s != ""]
        self.query_items: list[tuple[str, str]] = parse_qsl(split.query, keep_blank_values=True)
        self._query_lower = {k.lower(): v for k, v in self.query_items}
        self.headers = handler.headers
        self.user: str | None = None
        self.new_session: str | None = None
        self._body_reader: BodyReader | None = None

    def param(self, name: str, default: str | None = None) -> str | None:
        """A query parameter, by case-insensitive name (the last one given wins)."""
        return self._query_lower.get(name.lower(), default)

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("true", "1", "yes", "y")

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").strip()

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None

    @property
    def body(self) -> BodyReader:
        if self._body_reader is None:
            self._body_reader = BodyReader(self.handler.rfile, self.headers)
        return self._body_reader

    def read_body(self, limit: int = 64 * 1024 * 1024) -> bytes:
        data = self.body.read(limit + 1)
        if len(data) > limit:
            raise BadRequest("Request body too large for this endpoint.")
        return data

    def body_to_file(self, path: Path) -> tuple[int, str]:
        """Stream the body into ``path``; returns its size and MD5 hex digest."""
        total = 0
        digest = hashlib.md5()
        with open(path, "wb") as out:
            while chunk := self.body.read(COPY_BUFFER):
                out.write(chunk)
                digest.update(chunk)
                total += len(chunk)
        return total, digest.hexdigest()

    def finish_body(self) -> bool:
        """Consume what is left of the body; False if it was too large to drain."""
        return self.body.drain(MAX_DRAIN)


class BodyReader:
    """Reads a request body framed by Content-Length or chunked transfer coding."""

    def __init__(self, rfile, headers):
        self._rfile = rfile
        encoding = (headers.get("Transfer-Encoding") or "").lower()
        self.chunked = "chunked" in encoding
        self._left = 0  # bytes left in the body, or in the current chunk
        if not self.chunked:
            raw = headers.get("Content-Length")
            try:
                self._left = int(raw) if raw is not None else 0
            except ValueError as exc:
                raise BadRequest("Invalid Content-Length header.") from exc
            if self._left < 0:
                raise BadRequest("Invalid Content-Length header.")
        self._done = not self.chunked and self._left == 0
        self.broken = False

    def read(self, size: int) -> bytes:
        parts = []
        wanted = size
        while wanted > 0 and not self._done:
            if self._left == 0:
                if not self.chunked:
                    self._done = True
                    break
                self._next_chunk()
                continue
            data = self._rfile.read(min(wanted, self._left))
            if not data:
                self._done = True
                self.broken = True
                raise BadRequest("Request body ended early.")
            self._left -= len(data)
            wanted -= len(data)
            parts.append(data)
            if self.chunked and self._left == 0:
                self._rfile.readline()  # CRLF after chunk data
        return b"".join(parts)

    def _next_chunk(self) -> None:
        line = self._rfile.readline(1024)
        try:
            self._left = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            # The framing is lost: nothing more can be read from this connection.
            self._done = True
            self.broken = True
            raise BadRequest("Malformed chunked body.") from exc
        if self._left == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._done = True

    def drain(self, limit: int) -> bool:
        if self.broken:
            return False
        drained = 0
        while not self._done:
            chunk = self.read(COPY_BUFFER)
            drained += len(chunk)
            if drained > limit:
                return False
        return True


class _Cut(Exception):
    """Raised inside a stream producer when a fault cuts the body short."""


class ChunkedWriter:
    """File-like sink that frames what is written as HTTP chunks."""

    def __init__(self, sock: socket.socket, chunked: bool, cut_after: int | None):
        self._sock = sock
        self._chunked = chunked
        self._buffer = bytearray()
        self._cut_after = cut_after
        self.sent = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        if len(self._buffer) >= STREAM_CHUNK:
            self._emit()
        return len(data)

    def flush(self) -> None:
        """Kept as a no-op: chunks go out when large enough or at the end."""

    def _emit(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._cut_after is not None and self.sent + len(data) > self._cut_after:
            data = data[: max(0, self._cut_after - self.sent)]
            self._send(data)
            raise _Cut()
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        self.sent += len(data)
        if self._chunked:
            self._sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self._sock.sendall(data)

    def finish(self) -> None:
        self._emit()
        if self._cut_after is not None:
            raise _Cut()
        if self._chunked:
            self._sock.sendall(b"0\r\n\r\n")


def _status_line(status: int) -> str:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n"


def send(handler, request_method: str, response: Response, *, cut: str | None = None) -> None:
    """Write ``response`` on the handler's connection.

    ``cut`` carries out a fault: ``"truncate"`` sends part of the body (no
    answer at all when there is no body) and closes the connection cleanly,
    ``"drop"`` does the same with a reset.
    """
    try:
        _send(handler, request_method, response, cut)
    finally:
        if isinstance(response.body, FileBody):
            response.body.file.close()


def _send(handler, request_method: str, response: Response, cut: str | None) -> None:
    sock: socket.socket = handler.connection
    body = response.body
    head_only = request_method == "HEAD"
    http10 = handler.request_version == "HTTP/1.0"
    lines = [
        _status_line(response.status),
        f"Date: {formatdate(usegmt=True)}\r\n",
        "Server: Apache-Coyote/1.1\r\n",
        f"Content-Type: {response.content_type}\r\n",
    ]
    lines += [f"{name}: {value}\r\n" for name, value in response.headers]
    stream = isinstance(body, StreamBody)
    if isinstance(body, StreamBody):
        if http10:
            handler.close_connection = True
        else:
            lines.append("Transfer-Encoding: chunked\r\n")
    else:
        length = len(body) if isinstance(body, bytes) else body.length
        lines.append(f"Content-Length: {length}\r\n")
    if cut or handler.close_connection:
        handler.close_connection = True
        lines.append("Connection: close\r\n")
    head = ("".join(lines) + "\r\n").encode("latin-1", "replace")

    if cut and (head_only or (not stream and length == 0)):
        # No body to cut short: the connection ends before the answer (a head
        # cut after its status line would still parse as a whole one).
        _finish_cut(sock, cut)
        return
    if head_only:
        sock.sendall(head)
        return
    if isinstance(body, bytes):
        if cut:
            sock.sendall(head + body[: len(body) // 2])
            _finish_cut(sock, cut)
        else:
            sock.sendall(head + body)
        return
    if isinstance(body, FileBody):
        sock.sendall(head)
        count = body.length // 2 if cut else body.length
        if count:
            sock.sendfile(body.file, body.offset, count)
        _finish_cut(sock, cut)
        return
    sock.sendall(head)
    writer = ChunkedWriter(sock, not http10, STREAM_CHUNK // 2 if cut else None)
    try:
        # zipfile and tarfile find the writer unseekable and only write to it.
        body.produce(cast(BinaryIO, writer))
        writer.finish()
    except _Cut:
        _finish_cut(sock, cut)


def _finish_cut(sock: socket.socket, cut: str | None) -> None:
    if cut == "drop":
        # SO_LINGER with a zero timeout makes close() send a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if cut:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def file_response(
    file: BinaryIO, *, content_type: str, range_header: str | None, honour_range: bool, mtime: float
) -> Response:
    """A download answer for one open file; a single byte range is honoured when switched on."""
    size = os.fstat(file.fileno()).st_size
    headers = [("Last-Modified", formatdate(mtime, usegmt=True)), ("Cache-Control", "must-revalidate")]
    if honour_range and range_header:
        span = parse_range(range_header, size)
        if span == "unsatisfiable":
            file.close()
            return Response(416, b"", content_type, headers + [("Content-Range", f"bytes */{size}")])
        if span is not None:
            start, end = span
            return Response(
                206,
                FileBody(file, start, end - start + 1),
                content_type,
                headers + [("Content-Range", f"bytes {start}-{end}/{size}"), ("Accept-Ranges", "bytes")],
            )
    if honour_range:
        headers.append(("Accept-Ranges", "bytes"))
    return Response(200, FileBody(file, 0, size), content_type, headers)


def parse_range(header: str, size: int):
    """Parse a single ``bytes=`` range; None when unusable (answer the whole file)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "unsatisfiable"
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def json_response(document, status: int = 200) -> Response:
    return Response(status, json.dumps(document).encode(), "application/json")


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode(), "text/plain;charset=UTF-8")


def method_not_allowed(request: Request, allowed: str) -> Response:
    response = error_page(405, f"Method {request.method} is not allowed here.")
    return response.header("Allow", allowed)
