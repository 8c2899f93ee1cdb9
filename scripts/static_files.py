"""A static HTTP and WebDAV server of a local folder, for the benchmark's rclone mounts.

``scripts/bench.py`` serves a copy of the benchmark project's tree with it, so
rclone mount (its ``http`` and ``webdav`` backends) reads the same files as
xnatfs reads from the fake XNAT, under the same conditions: a
``ThreadingHTTPServer`` on 127.0.0.1, file bodies sent with ``sendfile``, and
the same delay added before every answer, Nagle's algorithm off. It answers

* GET and HEAD of a file, honouring a single byte Range;
* GET of a folder: an HTML index of links (what the ``http`` backend reads);
* PROPFIND with Depth 0 or 1 (what the ``webdav`` backend reads).

SIGUSR1 drops the added delay (for set-up work), SIGUSR2 restores it.

    python scripts/static_files.py ROOT [--latency-ms 20]   # prints its URL, then serves
"""

from __future__ import annotations

import argparse
import html
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class StaticServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, latency_ms: float):
        super().__init__(("127.0.0.1", 0), StaticHandler)
        self.root = root.resolve()
        self.delay = latency_ms / 1000.0

    def handle_error(self, request, client_address) -> None:
        """A client that went away (rclone closing spare connections, or a read it gave up) is no error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class StaticHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StaticServer

    def setup(self) -> None:
        super().setup()
        # As the fake XNAT does: a small answer is not held back waiting for the client's ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:
        """Quiet: a benchmark logs nothing per request."""

    # ---- requests -----------------------------------------------------

    def do_GET(self) -> None:
        self._get(send_body=True)

    def do_HEAD(self) -> None:
        self._get(send_body=False)

    def do_OPTIONS(self) -> None:
        self._wait()
        self._answer(200, b"", {"DAV": "1", "Allow": "OPTIONS, GET, HEAD, PROPFIND"})

    def do_PROPFIND(self) -> None:
        self._wait()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self._local()
        if target is None or not target.exists():
            self._answer(404, b"not found\n")
            return
        href = urlsplit(self.path).path
        responses = [self._propfind_entry(href, target)]
        if target.is_dir() and self.headers.get("Depth", "1") != "0":
            base = href if href.endswith("/") else href + "/"
            with os.scandir(target) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    responses.append(self._propfind_entry(base + quote(entry.name), Path(entry.path)))
        body = (
            '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
            + "".join(responses)
            + "</D:multistatus>\n"
        ).encode()
        self._answer(207, body, {"Content-Type": 'application/xml; charset="utf-8"'})

    # ---- answers ------------------------------------------------------

    def _wait(self) -> None:
        if self.server.delay:
            time.sleep(self.server.delay)

    def _local(self) -> Path | None:
        """The file or folder a request names, never outside the root."""
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        target = (self.server.root / relative).resolve()
        if target != self.server.root and self.server.root not in target.parents:
            return None
        return target

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _get(self, *, send_body: bool) -> None:
        self._wait()
        target = self._local()
        if target is None or not target.exists():
            self._answer(404, b"not found\n")
        elif target.is_dir():
            self._index(target)
        else:
            self._file(target, send_body)

    def _index(self, folder: Path) -> None:
        with os.scandir(folder) as entries:
            names = sorted((entry.name + "/" if entry.is_dir() else entry.name) for entry in entries)
        links = "".join(f'<li><a href="{quote(name)}">{html.escape(name)}</a></li>\n' for name in names)
        body = f"<!DOCTYPE html>\n<html><body><ul>\n{links}</ul></body></html>\n".encode()
        self._answer(200, body, {"Content-Type": "text/html; charset=utf-8"})

    def _file(self, path: Path, send_body: bool) -> None:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            start, end = 0, info.st_size
            status = 200
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "Last-Modified": formatdate(info.st_mtime, usegmt=True),
            }
            wanted = RANGE.match(self.headers.get("Range", "").strip())
            if wanted and (wanted.group(1) or wanted.group(2)):
                first, last = wanted.groups()
                if first:
                    start, end = int(first), (min(int(last) + 1, info.st_size) if last else info.st_size)
                else:
                    start, end = max(info.st_size - int(last), 0), info.st_size
                if start >= info.st_size or start >= end:
                    self._answer(416, b"", {"Content-Range": f"bytes */{info.st_size}"})
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.st_size}"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if send_body and end > start:
                self.wfile.flush()
                self.connection.sendfile(handle, start, end - start)

    def _propfind_entry(self, href: str, path: Path) -> str:
        info = path.stat()
        modified = formatdate(info.st_mtime, usegmt=True)
        if path.is_dir():
            if not href.endswith("/"):
                href += "/"
            props = f"<D:resourcetype><D:collection/></D:resourcetype><D:getlastmodified>{modified}</D:getlastmodified>"
        else:
            props = (
                f"<D:resourcetype/><D:getcontentlength>{info.st_size}</D:getcontentlength>"
                f"<D:getlastmodified>{modified}</D:getlastmodified>"
                "<D:getcontenttype>application/octet-stream</D:getcontenttype>"
            )
        return (
            f"<D:response><D:href>{html.escape(href)}</D:href><D:propstat><D:prop>{props}</D:prop>"
            "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to serve")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added before every answer")
    args = parser.parse_args(argv)
    server = StaticServer(Path(args.root), args.latency_ms)

    def set_delay(seconds: float) -> Callable[..., None]:
        def handler(_signum, _frame) -> None:
            server.delay = seconds

        return handler

    signal.signal(signal.SIGUSR1, set_delay(0.0))
    signal.signal(signal.SIGUSR2, set_delay(args.latency_ms / 1000.0))
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
