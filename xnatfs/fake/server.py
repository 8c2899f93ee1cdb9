"""The fake XNAT server: a threaded HTTP/1.1 server over a :class:`Store`.

Every request goes through :meth:`FakeXnat._handle`: added latency, fault
injection, the authentication gate, routing, and accounting. Switches are
plain attributes and can be changed while the server runs.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .archive_api import ArchiveApi
from .auth import Authenticator
from .http import BadRequest, Request, Response, StreamBody, error_page, send
from .services import authenticate, data_service, public_answer, session_cookies, xapi
from .store import Store, StoreError

logger = logging.getLogger(__name__)

IDLE_CONNECTION_TIMEOUT = 300.0
# An "endless" answer ends here all the same (well above the client's bound),
# so a client without a bound cannot take a test machine down with it.
ENDLESS_ANSWER_LIMIT = 256 << 20
_ENDLESS_ROW = b'{"ID": "XNAT_S99999", "label": "ENDLESS", "project": "STUDY01", "URI": "/data/subjects/XNAT_S99999"},'


@dataclass
class Fault:
    error_status: int | None = None
    cut: str | None = None  # "drop" or "truncate"
    stall: float = 0.0
    stall_first: bool = False  # the stall comes before the request is carried out, not after


class FaultInjector:
    """Decides, per answer, whether to fail it and how (rates are fractions of answers)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.configure()

    def configure(
        self,
        error_rate: float = 0.0,
        error_statuses=(500, 503),
        drop_rate: float = 0.0,
        truncate_rate: float = 0.0,
        stall_ms: float = 0,
        stall_rate: float = 0.0,
        seed: int | None = None,
        methods: Collection[str] = (),
        stall_first: bool = False,
    ) -> None:
        for name, rate in (
            ("error_rate", error_rate),
            ("drop_rate", drop_rate),
            ("truncate_rate", truncate_rate),
            ("stall_rate", stall_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        with self._lock:
            self.error_rate = error_rate
            self.error_statuses = tuple(error_statuses) or (500,)
            self.drop_rate = drop_rate
            self.truncate_rate = truncate_rate
            self.stall_seconds = stall_ms / 1000.0
            self.stall_rate = stall_rate
            self.stall_first = stall_first
            self._random = random.Random(seed)
            self.methods = frozenset(m.upper() for m in methods)

    def pick(self, method: str) -> Fault:
        with self._lock:
            fault = Fault()
            if self.methods and method not in self.methods:
                return fault
            if self.stall_rate and self._random.random() < self.stall_rate:
                fault.stall = self.stall_seconds
                fault.stall_first = self.stall_first
            roll = self._random.random()
            if roll < self.error_rate:
                fault.error_status = self._random.choice(self.error_statuses)
            elif roll < self.error_rate + self.drop_rate:
                fault.cut = "drop"
            elif roll < self.error_rate + self.drop_rate + self.truncate_rate:
                fault.cut = "truncate"
            return fault


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT
    server_version = "Apache-Coyote/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def _dispatch(self) -> None:
        self.server.fake._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _dispatch

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class _HttpServer(ThreadingHTTPServer):
    fake: FakeXnat
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            # A client hanging up mid-request (a zip abandoned at unmount, say): nothing went wrong here.
            logger.debug("connection from %s closed by the client: %s", client_address, error)
            return
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class FakeXnat:
    """An XNAT look-alike serving ``data_dir`` on 127.0.0.1.

    ``sample`` ("small", "bids" or "large") fills an empty data directory with a
    sample study (see :mod:`xnatfs.fake.sample`). Use as a context manager,
    or call :meth:`start` and :meth:`stop`.

    Switches, settable at any time: ``latency_ms``, ``honour_range``,
    ``session_timeout``, ``expired_password``, ``autorun_on_import``,
    ``slow_answers`` (request target prefix → seconds more its answers wait),
    ``child_searches`` (False: listings refuse ``columns=`` that reach into
    child tables with 400), ``readonly_users`` (a set of user names whose writes are refused with
    403), ``endless_answers`` (a path prefix: GETs below it are answered with a JSON listing
    that never ends, until the client hangs up) and :meth:`set_faults`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        port: int = 0,
        sample: str | None = None,
        users: dict[str, str] | None = None,
        session_timeout: float = 900.0,
        latency_ms: float = 0,
        honour_range: bool = False,
        *,
        host: str = "127.0.0.1",
        autorun_on_import: bool = False,
        expired_password: bool = False,
        readonly_users: tuple[str, ...] = (),
        site_id: str = "XNAT",
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir)
        if sample and self.store.is_empty():
            from .sample import fill_sample

            fill_sample(self.store, sample)
        self.users = dict(users) if users is not None else {"admin": "admin"}
        self.auth = Authenticator(self.users, session_timeout)
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.honour_range = honour_range
        self.autorun_on_import = autorun_on_import
        self.expired_password = expired_password
        self.readonly_users = set(readonly_users)
        self.child_searches = True
        self.endless_answers: str | None = None
        self.slow_answers: dict[str, float] = {}
        self.site_id = site_id
        self.started_at = time.monotonic()
        self._faults = FaultInjector()
        self._log_lock = threading.Lock()
        self._requests: list[tuple[str, str, int]] = []
        self._connections: set[socket.socket] = set()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.archive = ArchiveApi(self)

    # ---- switches and accounting -------------------------------------------

    @property
    def session_timeout(self) -> float:
        return self.auth.session_timeout

    @session_timeout.setter
    def session_timeout(self, seconds: float) -> None:
        self.auth.session_timeout = float(seconds)

    @property
    def username(self) -> str:
        """The first configured user (the one tests log in as)."""
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    def set_faults(
        self,
        error_rate: float = 0.0,
        error_statuses=(500, 503),
        drop_rate: float = 0.0,
        truncate_rate: float = 0.0,
        stall_ms: float = 0,
        stall_rate: float = 0.0,
        seed: int | None = None,
        methods: Collection[str] = (),
        stall_first: bool = False,
    ) -> None:
        """Make a fraction of answers fail; call with no arguments to switch faults off.

        ``error_rate``: answered with a status from ``error_statuses``
        instead of being carried out. ``drop_rate``: carried out, but the
        connection is reset in the middle of the answer. ``truncate_rate``:
        carried out, but the connection closes before the whole answer
        (Content-Length promises more than is sent). ``stall_rate``: the answer
        waits ``stall_ms`` first; with ``stall_first`` the request waits before
        it is carried out, as one queued behind a lock does, and is carried out
        even if the client gave up meanwhile. ``methods``: only requests of these
        methods (``("PUT",)``, say) get faults; all of them when empty.
        """
        self._faults.configure(
            error_rate, error_statuses, drop_rate, truncate_rate, stall_ms, stall_rate, seed, methods, stall_first
        )

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, request target with its query string, status) of every answer so far."""
        with self._log_lock:
            return list(self._requests)

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        with self._log_lock:
            return sum(
                1
                for m, p, _s in self._requests
                if (method is None or m == method.upper()) and (path_prefix is None or p.startswith(path_prefix))
            )

    def reset_counts(self) -> None:
        with self._log_lock:
            self._requests.clear()

    # ---- life cycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeXnat:
        if self._httpd is not None:
            return self
        self._httpd = _HttpServer((self.host, self.port), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=f"fake-xnat-{self.port}", daemon=True
        )
        self._thread.start()
        logger.info("fake XNAT serving %s from %s", self.url, self.data_dir)
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._log_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.info("fake XNAT on port %s stopped", self.port)

    def close(self) -> None:
        """Stop, and release the metadata database."""
        self.stop()
        self.store.close()

    def __enter__(self) -> FakeXnat:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _track(self, connection: socket.socket, active: bool) -> None:
        with self._log_lock:
            if active:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # ---- one request ------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        request = Request(handler)
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        for prefix, seconds in list(self.slow_answers.items()):
            if request.target.startswith(prefix):
                time.sleep(seconds)
        fault = self._faults.pick(request.method)
        if fault.stall and fault.stall_first:
            time.sleep(fault.stall)
        try:
            if fault.error_status:
                response = error_page(fault.error_status, "The server could not complete the request.")
            elif self._endless(request):
                response = Response(200, StreamBody(_endless_listing), "application/json;charset=UTF-8")
            else:
                response = self._respond(request)
        except BadRequest as exc:
            response = error_page(400, str(exc))
        except StoreError as exc:
            response = error_page(exc.status, str(exc))
        except Exception:
            logger.exception("fake XNAT failed on %s %s", request.method, _loggable(request.path))
            response = error_page(500, "Internal server error.")
        try:
            if not request.finish_body():
                handler.close_connection = True
        except (BadRequest, OSError):
            handler.close_connection = True
        if request.new_session:
            response.headers += session_cookies(request.new_session, self.auth.session_timeout)
        if fault.stall and not fault.stall_first:
            time.sleep(fault.stall)
        with self._log_lock:
            self._requests.append((request.method, request.target, response.status))
        try:
            send(handler, request.method, response, cut=fault.cut)
        except OSError:
            handler.close_connection = True
        except Exception:
            logger.exception("fake XNAT failed while sending %s", _loggable(request.path))
            handler.close_connection = True

    def _endless(self, request: Request) -> bool:
        prefix = self.endless_answers
        return prefix is not None and request.method == "GET" and request.path.startswith(prefix)

    def _respond(self, request: Request) -> Response:
        segments = request.segments
        if not segments:
            refusal = authenticate(request, self)
            if refusal is not None:
                return refusal
            return Response(200, b"<html><body><h1>XNAT</h1></body></html>", "text/html;charset=UTF-8")
        head = segments[0]
        if head == "xapi":
            refusal = authenticate(request, self)
            return refusal or xapi(request, self, segments[1:])
        if head not in ("data", "REST"):
            return error_page(404, "Unknown address.")
        rest = segments[1:]
        if rest and rest[0] == "archive":
            rest = rest[1:]
        if not rest:
            return error_page(404, "Unknown address.")
        answer = public_answer(request, self, rest)
        if answer is not None:
            return answer
        refusal = authenticate(request, self)
        if refusal is not None:
            return refusal
        if request.user in self.readonly_users and _is_write(request, rest):
            return error_page(403, f"User {request.user} does not have permission to change this.")
        answer = data_service(request, self, rest)
        if answer is not None:
            return answer
        if rest[0] in ("projects", "subjects", "experiments"):
            return self.archive.route(request, rest)
        return error_page(404, "Unknown address.")


def _endless_listing(out) -> None:
    out.write(b'{"ResultSet": {"Result": [')
    block = _ENDLESS_ROW * 1000
    sent = 0
    while sent < ENDLESS_ANSWER_LIMIT:
        out.write(block)
        sent += len(block)


def _is_write(request: Request, rest: list[str]) -> bool:
    """Whether a request changes archive data (searching by POST does not)."""
    if request.method not in ("PUT", "POST", "DELETE", "PATCH"):
        return False
    return rest[0] in ("projects", "subjects", "experiments", "workflows") or rest[:2] == ["services", "import"]


def _loggable(path: str) -> str:
    """A request path safe for logs: token secrets in validation addresses are hidden."""
    marker = "/tokens/validate/"
    if marker in path:
        return path.split(marker, 1)[0] + marker + "..."
    return path
