"""Shared checks for the reliability, security and hostile-input tests (no tests here).

The checks compare what a mount serves and what its cache folder holds with
what the server has, file by file, by MD5:

- ``mountutil.server_files`` (shared with the mount tests) lists every file
  the mount should show, with the size, digest and address the server reports;
- :func:`read_or_eio` reads a file through the mount and returns its bytes,
  or None when the read failed with EIO (the only failure allowed under
  faults); anything else fails the test;
- :func:`check_cache` proves that every entry in the cache folder holds
  exactly the bytes its name promises, and that no unfinished download is
  left where a reader could find it.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import http.server
import os
import socketserver
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from xnatfs.cache.content import CacheKey, entry_name


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def read_or_eio(path: Path) -> bytes | None:
    """The whole file, or None if reading it failed with EIO; other errors propagate."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        if exc.errno == errno.EIO:
            return None
        raise


def known_entries(url: str, files) -> dict[str, str]:
    """Cache entry name → MD5 its bytes must have, for every (uri, size, digest) given."""
    names = {}
    for item in files:
        key = CacheKey(url.rstrip("/") + item.uri, item.size, item.digest)
        names[entry_name(key)] = item.digest
    return names


def cached_entries(cache_dir: Path) -> list[Path]:
    data = cache_dir / "data"
    if not data.exists():
        return []
    return sorted(p for p in data.rglob("*") if p.is_file())


def check_cache(cache_dir: Path, url: str, files, *, allow_unknown: bool = False) -> int:
    """Assert that every cached entry holds the bytes its key names; return how many there are.

    ``files`` are ServerFile records of every version the cache may rightly
    hold. An entry not among them fails the check unless ``allow_unknown``.
    No ``tmp/`` leftovers may remain (call this with the daemon stopped).
    """
    expected = known_entries(url, files)
    entries = cached_entries(cache_dir)
    for entry in entries:
        assert entry.parent.name == entry.name[:2], f"entry in the wrong folder: {entry}"
        digest = expected.get(entry.name)
        if digest is None:
            assert allow_unknown, f"cache entry for no known file version: {entry}"
            continue
        assert md5(entry.read_bytes()) == digest, f"cache entry {entry.name} holds the wrong bytes"
    leftovers = list((cache_dir / "tmp").glob("*")) if (cache_dir / "tmp").exists() else []
    assert leftovers == [], f"unfinished downloads left behind: {leftovers}"
    return len(entries)


def vmrss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def write_config(path: Path, **values) -> tuple[str, str]:
    """A TOML config with a ``[defaults]`` table; returns the ``--config`` arguments."""
    lines = ["[defaults]"]
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return ("--config", str(path))


def all_file_paths(root: Path) -> list[Path]:
    found = []
    for folder, _dirs, names in os.walk(root):
        found.extend(Path(folder) / name for name in names)
    return sorted(found)


class Relay:
    """A small HTTP relay on 127.0.0.1 between the mount and a server, for faults the
    fake server has no switch for.

    Every request is forwarded to ``upstream`` and the answer relayed back, with:

    - ``throttle``: bytes per second for answer bodies (slow downloads to crash in);
    - ``hold``: a predicate on (method, path); a matching request waits until
      :meth:`release` and is then dropped without ever reaching the server (an
      upload in flight when its sender dies);
    - ``rewrite``: a function (method, path, status, headers, body) → (status,
      headers, body) that can turn a correct answer into a hostile one.

    ``redirect`` maps request paths (without query) to the upstream paths to ask
    for instead, so a rewritten listing can point at real files under other names.
    ``tls`` (an ``ssl.SSLContext``) makes the relay speak HTTPS. ``log`` holds
    (method, path, status) of every answer relayed; ``held`` is set while a
    request is waiting; ``sending`` names the throttled bodies under way. Use as a context manager.
    """

    HOP_HEADERS = frozenset(
        {
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "host",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        }
    )

    def __init__(self, upstream: str, *, throttle: int | None = None, hold=None, rewrite=None, tls=None):
        self.upstream = upstream.rstrip("/")
        self.throttle = throttle
        self.hold = hold
        self.rewrite = rewrite
        self.log: list[tuple[str, str, int]] = []
        self.sending: list[str] = []  # paths whose answer bodies are being relayed now, at the throttle's pace
        self.redirect: dict[str, str] = {}
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet: pytest shows failures anyway
                pass

            def _relay(self):
                relay._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _relay

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def release(self) -> None:
        self._release.set()

    def _read_body(self, handler) -> bytes | None:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(handler.rfile.read(size))
                handler.rfile.readline()
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else None

    def _handle(self, handler) -> None:
        method, path = handler.command, handler.path
        body = self._read_body(handler)
        if self.hold is not None and self.hold(method, path):
            self.held.set()
            self._release.wait(60)
            handler.close_connection = True
            return
        upstream = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in self.HOP_HEADERS}
        base, mark, query = path.partition("?")
        target = self.redirect.get(base, base) + mark + query
        try:
            connection.request(method, target, body=body, headers=headers)
            answer = connection.getresponse()
            status = answer.status
            out_headers = [(k, v) for k, v in answer.getheaders() if k.lower() not in self.HOP_HEADERS]
            data = answer.read()
        except OSError:
            handler.close_connection = True
            return
        finally:
            connection.close()
        if self.rewrite is not None:
            status, out_headers, data = self.rewrite(method, path, status, out_headers, data)
        with self._lock:
            self.log.append((method, path, status))
        try:
            handler.send_response_only(status)
            for key, value in out_headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if method == "HEAD":
                return
            if not self.throttle:
                handler.wfile.write(data)
                return
            step = max(1, self.throttle // 50)
            with self._lock:
                self.sending.append(path)
            try:
                for start in range(0, len(data), step):
                    handler.wfile.write(data[start : start + step])
                    handler.wfile.flush()
                    time.sleep(step / self.throttle)
            finally:
                with self._lock:
                    self.sending.remove(path)
        except OSError:
            handler.close_connection = True
