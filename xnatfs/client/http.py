"""One authenticated HTTP session with an XNAT server.

``XnatSession`` owns a single ``requests.Session`` and everything about
talking HTTP to XNAT that is not specific to one endpoint:

* login with ``POST /data/JSESSION`` and HTTP Basic, then the JSESSIONID
  cookie on every request; a 401 triggers a fresh login (only one thread
  logs in, the others wait for it and use its session) and a retry. The
  server may end a session at any moment, even one opened a moment ago, so
  a 401 to a cookie is never final: when the renewals run out, the request
  is sent once more carrying the credentials themselves, and only a 401 to
  that (or a refused login) is a refusal;
* timeouts on every request: each wait for the server is at most
  ``timeout`` seconds, and no longer than what is left of the caller's
  :class:`~xnatfs.client.budget.Budget`, which also ends the retries;
* retries with exponential backoff and jitter for idempotent requests that
  failed on the network, got 502/503/504, or whose body was cut short, and
  for GET and HEAD a few more on a 500 (XNAT answers 500 on transient
  database errors);
* a circuit breaker that fails fast while the server is silent;
* answers held in memory bounded by ``max_answer_bytes``;
* the mapping of HTTP answers to the ``XnatError`` family;
* streaming downloads that never hold a file in memory.

It is safe to share one instance between many threads.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import io
import json
import logging
import os
import random
import re
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from xnatfs import __version__
from xnatfs.client.activity import RequestActivity
from xnatfs.client.breaker import CircuitBreaker
from xnatfs.client.budget import current_budget, note_progress
from xnatfs.client.changes import note_change_sent
from xnatfs.client.credentials import Credentials
from xnatfs.errors import (
    XnatAnswerTooLarge,
    XnatAuthError,
    XnatConflict,
    XnatError,
    XnatInvalidLabel,
    XnatNotFound,
    XnatPasswordExpired,
    XnatPermissionError,
    XnatServerError,
    XnatTimeout,
    XnatUnsupported,
    redact_url,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
# An answer held in memory (a listing) is read in pieces this small, each noted as
# progress: a large listing coming slowly is not given up while it comes.
ANSWER_PIECE = 64 << 10
# Bodies at least this big are read from the socket into one reused buffer of DIRECT_READ_BUFFER bytes.
DIRECT_READ_BYTES = 4 << 20
DIRECT_READ_BUFFER = 1 << 20
RETRYABLE_STATUSES = frozenset({502, 503, 504})
# A 500 may be a transient database error on a read, so a read gets a few
# more tries; a change is never repeated on a 500 (it may have been done).
RETRIES_ON_500 = 2
SAFE_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_TIMEOUT = 30.0
# A wait that timed out is doubled for the retry, up to this many timeouts.
MAX_WAIT_GROWTH = 4
# An answer held in memory (a listing, a search, an item's JSON) may be at
# most this big: far more than a project of 10 000 sessions lists, and a
# bound on what a broken server or proxy can make the process hold.
MAX_ANSWER_BYTES = 64 << 20
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# A session can expire again while one request waits out its retries; each
# time a new login is worth trying, but not without end.
MAX_RENEWALS_PER_REQUEST = 3
# Error bodies are read only this far: they are for a one-line message.
ERROR_BODY_LIMIT = 64 * 1024

_H3 = re.compile(r"<h3[^>]*>(.*?)</h3>", re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_SESSION_ID = re.compile(r"^[0-9A-Fa-f]{16,64}$")

# A network failure during a request, including a body cut short.
_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class _TruncatedBody(Exception):
    """The server sent fewer bytes than its Content-Length promised."""


class _ProgressingBody:
    """A file sent as a request body that tells the caller's budget each time a block goes out,
    so an upload that keeps moving is never given up."""

    def __init__(self, file: BinaryIO):
        self._file = file

    def read(self, size: int = -1) -> bytes:
        block = self._file.read(size)
        note_progress()
        return block

    def __getattr__(self, name: str) -> Any:
        # tell, seek, seekable, fileno, name: what requests and the retries ask of a file.
        return getattr(self._file, name)


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    # The JSESSIONID is managed by XnatSession itself and sent explicitly,
    # so a cookie set by an answer (for example a fresh anonymous session
    # after an expiry) can never replace the logged-in one under other threads.
    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False


def looks_like_html(text: str) -> bool:
    head = text.lstrip()[:15].lower()
    return head.startswith("<!doctype") or head.startswith("<html")


def server_message(text: str) -> str:
    """The human message inside an XNAT error body (HTML or plain text)."""
    match = _H3.search(text) or _TITLE.search(text)
    if match:
        text = match.group(1)
    elif looks_like_html(text):
        text = _TAG.sub(" ", text)
    text = " ".join(text.split())
    return text[:300]


def _nothing_was_sent(exc: BaseException) -> bool:
    """True when the request failed before any byte reached the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _timed_out(exc: BaseException) -> bool:
    """True when the server did not answer in time (connecting, or sending the answer)."""
    if isinstance(exc, requests.exceptions.Timeout):
        return True
    # A body that stops coming is reported by requests as a ConnectionError.
    reason = exc.args[0] if isinstance(exc, requests.exceptions.ConnectionError) and exc.args else None
    return isinstance(reason, urllib3.exceptions.ReadTimeoutError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _TruncatedBody):
        return str(exc)
    if _timed_out(exc):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection closed before the whole answer arrived"
    return "connection failed"


class XnatSession:
    """Authenticated, retrying HTTP access to one XNAT server.

    ``url`` is the server root (``https://host`` or ``https://host/xnat``).
    ``credentials`` may be None for servers that allow guest access.
    ``verify`` is True (system CAs), False, or the path of a CA bundle.
    ``timeout`` is the longest wait in seconds for the server to send
    anything (connecting gets at most 10 s); a download that keeps
    receiving bytes is never cut. ``retries`` is how many times a failed
    idempotent request is repeated; ``backoff`` the first delay in seconds
    (doubling, with jitter, up to ``max_backoff``). ``max_answer_bytes``
    bounds every answer read into memory.
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        *,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        pool_size: int = 32,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server address: {parts.scheme}://{parts.hostname or ''}")
        if parts.username or parts.password:
            raise ValueError("put credentials in the credentials argument, not in the URL")
        self.base_url = url.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}".lower()
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_answer_bytes = max_answer_bytes
        self.breaker = CircuitBreaker(redact_url(self.base_url))
        self._http = requests.Session()
        # Without trust_env, requests would add Basic auth from ~/.netrc to
        # every request; proxies and a CA bundle from the environment are
        # still honoured, set here explicitly.
        self._http.trust_env = False
        self._http.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._http.verify = verify
        self._http.cookies.set_policy(_NoCookies())
        self._http.headers["User-Agent"] = f"xnatfs/{__version__} python-requests/{requests.__version__}"
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        self._login_lock = threading.Lock()
        self._jsession: str | None = None
        self._supports_range: bool | None = None
        self._closed = False
        self.activity = RequestActivity()

    # -- addresses ---------------------------------------------------------

    def url_for(self, path: str) -> str:
        """The full URL of a server path such as ``/data/projects``.

        Full URLs are accepted only for this server, so credentials and
        session cookies are never sent anywhere else.
        """
        if path.startswith(("http://", "https://")):
            parts = urlsplit(path)
            if f"{parts.scheme}://{parts.netloc}".lower() != self._origin:
                raise ValueError(f"address on another server: {parts.scheme}://{parts.hostname}")
            return path
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    @property
    def username(self) -> str | None:
        return self.credentials.username if self.credentials else None

    @property
    def headers(self) -> dict[str, str | bytes]:
        """The headers sent with every request (never cookies or credentials)."""
        return dict(self._http.headers)

    @property
    def supports_range(self) -> bool | None:
        """Whether the server answered a ranged GET with 206; None until known."""
        return self._supports_range

    def __repr__(self) -> str:
        return f"<XnatSession {self.base_url} user={self.username or '(guest)'}>"

    # -- login -------------------------------------------------------------

    def login(self) -> None:
        """Open a new JSESSION with the stored credentials."""
        with self._login_lock:
            self._login_locked()

    def _login_locked(self) -> None:
        if self.credentials is None:
            return
        url = self.url_for("/data/JSESSION")
        response, _repeated = self._send_with_retries(
            "POST",
            url,
            auth=(self.credentials.username, self.credentials.password),
            idempotent=True,
            retries=self.retries,
            session_id=None,
        )
        with response:
            text = response.text
            if response.status_code == 401:
                raise XnatAuthError(f"login refused for user {self.credentials.username}", url=url, status=401)
            if response.status_code != 200:
                raise self.error_for("POST", url, response.status_code, text)
            if looks_like_html(text):
                if "expired" in text.lower():
                    raise XnatPasswordExpired(
                        f"the password of user {self.credentials.username} has expired", url=url, status=200
                    )
                raise XnatAuthError("login answered with a web page instead of a session ID", url=url, status=200)
            session_id = response.cookies.get("JSESSIONID") or text.strip()
            if not _SESSION_ID.match(session_id):
                raise XnatAuthError("login did not return a session ID", url=url, status=200)
        self._jsession = session_id
        logger.debug("logged in to %s as %s", self.base_url, self.credentials.username)

    def _renew(self, ended_session: str | None) -> None:
        # Threads that sent the same ended session wait here; the first one
        # logs in, the others find a session opened since and just retry.
        with self._login_lock:
            if self._jsession == ended_session:
                logger.info("XNAT session at %s expired; logging in again", self.base_url)
                self._login_locked()

    def _adopt_session(self, response: requests.Response, sent_session: str | None) -> None:
        """Keep the session the server opened for a request that carried the
        credentials, unless another thread has logged in since it was sent."""
        session_id = response.cookies.get("JSESSIONID")
        if not session_id or not _SESSION_ID.match(session_id):
            return
        with self._login_lock:
            if self._jsession == sent_session:
                self._jsession = session_id

    def recent_activity(self) -> dict[str, Any]:
        """Requests and errors of the last minutes, and the server's health: ``stalled``
        too while the breaker fails requests fast (see :mod:`xnatfs.client.activity`)."""
        summary = self.activity.summary()
        if self.breaker.is_open:
            summary["health"] = "stalled"
        return summary

    def close(self) -> None:
        """Log out (``DELETE /data/JSESSION``) and release connections."""
        if self._closed:
            return
        self._closed = True
        try:
            # A server that left the last request unanswered would most likely hold
            # the exit up for a whole timeout more (an unmount while it is stopped).
            if self._jsession is not None and not self.breaker.silent:
                response = self._http.delete(
                    self.url_for("/data/JSESSION"),
                    cookies={"JSESSIONID": self._jsession},
                    timeout=(min(10.0, self.timeout), self.timeout),
                )
                response.close()
        except requests.exceptions.RequestException as exc:
            logger.debug("logout from %s failed: %s", self.base_url, _describe(exc))
        finally:
            self._jsession = None
            self._http.close()

    # -- requests ----------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        ok: Iterable[int] = (200,),
        idempotent: bool | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        repeat_after_500: bool = False,
    ) -> requests.Response:
        """Send one request; return the answer if its status is in ``ok``.

        Any other status raises the matching ``XnatError``. ``idempotent``
        defaults to the HTTP method's nature; a request that is not
        idempotent is repeated only when it provably never reached the
        server (or the server refused it with 401 before acting). A body
        given as a file object is rewound for a repeat; one that cannot be
        rewound is never repeated. With ``stream=True`` the caller must
        close the answer. A read is repeated after a 500 too; a change only
        with ``repeat_after_500``, when its caller can tell from the repeat's
        answer whether the first attempt was carried out.

        The answer's ``repeated`` attribute is True when the request had to
        be sent more than once, so an earlier attempt may have been carried
        out (a create repeated that way can find its own object).
        """
        if self._closed:
            raise XnatError("the connection has been closed", url=self.url_for(path))
        method = method.upper()
        url = self.url_for(path)
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        retries = self.retries if retries is None else retries
        ok = frozenset(ok)
        if _is_file(data):
            data = _ProgressingBody(data)
        start = _position(data)
        renewals = 0
        repeated_before = False
        while True:
            session_id = self._jsession
            # Out of renewals, the request carries the credentials: a 401 to
            # that cannot be a session ended under it, so it is a refusal.
            credentials = self.credentials
            with_credentials = renewals >= MAX_RENEWALS_PER_REQUEST and credentials is not None
            auth = (credentials.username, credentials.password) if credentials and with_credentials else None
            response, repeated = self._send_with_retries(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                stream=stream,
                idempotent=idempotent,
                retries=retries,
                timeout=timeout,
                session_id=session_id,
                auth=auth,
                repeat_after_500=repeat_after_500,
                changes=method not in SAFE_METHODS,
            )
            repeated_before = repeated_before or repeated
            status = response.status_code
            if status == 401 and self.credentials is not None and not with_credentials:
                response.close()
                if not _rewind(data, start):
                    raise XnatPermissionError(
                        "session expired during an upload that cannot be replayed", url=url, status=401
                    )
                self._renew(session_id)
                renewals += 1
                continue
            if with_credentials and status != 401:
                self._adopt_session(response, session_id)
            if status in ok:
                response.repeated = repeated_before  # type: ignore[attr-defined]
                return response
            try:
                text = _bounded_text(response) if stream else response.text
            finally:
                response.close()
            raise self.error_for(method, url, status, text)

    def _send_with_retries(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        retries: int,
        session_id: str | None,
        timeout: float | None = None,
        stream: bool = False,
        repeat_after_500: bool = False,
        changes: bool = False,
        **kwargs: Any,
    ) -> tuple[requests.Response, bool]:
        """Send, repeating what may be repeated; the answer, and whether it took more than one attempt.

        ``changes``: the request may change the server, and each attempt that may
        have reached it is noted (:mod:`xnatfs.client.changes`)."""
        data = kwargs.get("data")
        start = _position(data)
        longest_wait = self.timeout if timeout is None else timeout
        attempt = 0
        server_errors = 0
        while True:
            wait = self._wait_allowed(longest_wait, method, url)
            self.breaker.before_request(url)
            try:
                # Always streamed, so that an answer kept in memory is read with a bound.
                response = self._send(method, url, stream=True, timeout=wait, session_id=session_id, **kwargs)
                if changes:
                    note_change_sent()
                if not stream:
                    self._load_body(response, method, url)
            except requests.exceptions.SSLError as exc:
                raise XnatServerError(f"{method} failed: TLS handshake or certificate check failed", url=url) from exc
            except (*_TRANSIENT, _TruncatedBody) as exc:
                self._note_failure(exc)
                if changes and not _nothing_was_sent(exc):
                    note_change_sent()
                may_repeat = idempotent or _nothing_was_sent(exc)
                if may_repeat and attempt < retries and _rewind(data, start):
                    if isinstance(exc, requests.exceptions.ReadTimeout):
                        # A busy server may just need longer (datman's remedy too), within
                        # bounds: the caller's budget still caps each wait.
                        longest_wait = min(2 * longest_wait, MAX_WAIT_GROWTH * self.timeout)
                    if self._pause(attempt, method, url, _describe(exc)):
                        attempt += 1
                        continue
                kind = XnatTimeout if _timed_out(exc) else XnatServerError
                raise kind(f"{method} failed: {_describe(exc)}", url=url) from exc
            self.breaker.answered()
            status = response.status_code
            repeat_500 = (
                status == 500 and (method in SAFE_METHODS or repeat_after_500) and server_errors < RETRIES_ON_500
            )
            if (
                ((status in RETRYABLE_STATUSES and idempotent) or repeat_500)
                and attempt < retries
                and _rewind(data, start)
            ):
                retry_after = _retry_after(response)
                if self._pause(attempt, method, url, f"HTTP {status}", retry_after):
                    response.close()
                    server_errors += status == 500
                    attempt += 1
                    continue
            return response, attempt > 0

    def _wait_allowed(self, longest: float, method: str, url: str) -> float:
        """The longest wait for the next attempt: ``longest``, or less if the caller's budget is nearly spent."""
        budget = current_budget()
        if budget is None:
            return longest
        left = budget.remaining()
        if left <= 0:
            raise XnatTimeout(f"{method} gave up: no answer within {budget.seconds:g} s", url=url)
        return min(longest, left)

    def _note_failure(self, exc: BaseException) -> None:
        # Only silence counts: a refused connection fails at once anyway, and
        # its retries ride out a server restart.
        if _timed_out(exc):
            self.breaker.failed(_describe(exc))

    def _load_body(self, response: requests.Response, method: str, url: str) -> None:
        """Read the answer's body into memory, refusing one larger than ``max_answer_bytes``."""
        body = bytearray()
        for chunk in response.iter_content(ANSWER_PIECE):
            note_progress()
            body += chunk
            if len(body) > self.max_answer_bytes:
                response.close()
                logger.error(
                    "%s %s: answer larger than %d bytes, refused", method, urlsplit(url).path, self.max_answer_bytes
                )
                raise XnatAnswerTooLarge(
                    f"answer larger than {self.max_answer_bytes} bytes", url=url, status=response.status_code
                )
        # What requests itself does once it has read a body: later reads of
        # .content and .text see these bytes.
        response._content = bytes(body)
        response._content_consumed = True  # type: ignore[attr-defined]
        _check_length(response)

    def _send(
        self, method: str, url: str, *, timeout: float, session_id: str | None, **kwargs: Any
    ) -> requests.Response:
        cookies = {"JSESSIONID": session_id} if session_id else None
        ticket = self.activity.started()
        try:
            response = self._http.request(
                method,
                url,
                cookies=cookies,
                timeout=(min(10.0, timeout), timeout),
                allow_redirects=False,
                **kwargs,
            )
        except BaseException as exc:
            self.activity.finished(ticket, exc)
            raise
        self.activity.finished(ticket, response.status_code)
        logger.debug("%s %s -> %s", method, urlsplit(url).path, response.status_code)
        return response

    def _pause(self, attempt: int, method: str, url: str, why: str, at_least: float = 0.0) -> bool:
        """Wait before retry ``attempt``; False (without waiting) when the caller's budget would run out first."""
        delay = min(self.max_backoff, self.backoff * (2**attempt)) * random.uniform(0.5, 1.5)
        delay = max(delay, min(at_least, self.max_backoff))
        budget = current_budget()
        if budget is not None and delay >= budget.remaining():
            return False
        logger.warning("%s %s: %s; retrying in %.1f s", method, urlsplit(url).path, why, delay)
        time.sleep(delay)
        return True

    def error_for(self, method: str, url: str, status: int, text: str) -> XnatError:
        """The ``XnatError`` for an answer with status ``status`` and body ``text``."""
        detail = server_message(text) if text else ""
        what = f"{method} refused" + (f": {detail}" if detail else "")
        if status == 404:
            return XnatNotFound("not found" + (f": {detail}" if detail else ""), url=url, status=status)
        if status == 401:
            if self.credentials is None:
                return XnatAuthError(
                    "the server requires a login and no credentials were found", url=url, status=status
                )
            return XnatPermissionError("not authorised even after a fresh login", url=url, status=status)
        if status == 403:
            return XnatPermissionError(what, url=url, status=status)
        if status == 409:
            return XnatConflict(what, url=url, status=status)
        if status == 417:
            return XnatInvalidLabel(what, url=url, status=status)
        if status in (405, 501):
            return XnatUnsupported(what, url=url, status=status)
        if status >= 500:
            return XnatServerError("server error" + (f": {detail}" if detail else ""), url=url, status=status)
        return XnatError(what, url=url, status=status)

    # -- convenience -------------------------------------------------------

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a JSON document (``format=json`` is added)."""
        query = dict(params or {})
        query["format"] = "json"
        response = self.request("GET", path, params=query)
        return parse_json(response)

    # -- downloads ---------------------------------------------------------

    def download(
        self,
        path: str,
        fileobj: BinaryIO,
        *,
        offset: int = 0,
        length: int | None = None,
        retries: int | None = None,
        to_end_if_unranged: bool = False,
        same_as: FileVersion | None = None,
    ) -> int:
        """Write bytes ``[offset, offset+length)`` of a file to ``fileobj``.

        Sends a Range header when a part is asked for and accepts either a
        206 (checked against Content-Range) or a 200 with the whole file
        (the leading bytes are skipped here). Returns the number of bytes
        written, fewer than ``length`` only at the end of the file.

        A body cut short is resumed from where it stopped, so on success
        ``fileobj`` holds exactly the asked-for bytes. The resumed answer
        must describe the same file (ETag, Last-Modified, total size) as the
        one it continues; a file changed in between is ``XnatServerError``
        rather than two versions spliced together; ``same_as`` extends that
        check to other downloads of the same file (the other parts of one
        file fetched side by side). If the retries run out,
        ``XnatServerError`` is raised too; either way ``fileobj`` may hold a
        partial prefix: the caller must discard it.

        With ``to_end_if_unranged``, a server that answers a ranged request
        with the whole file has the rest of the file from ``offset`` on
        written, not just ``length`` bytes (the caller learns it from the
        count returned and :attr:`supports_range`).
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return 0
        url = self.url_for(path)
        retries = self.retries if retries is None else retries
        written = 0
        attempt = 0
        version = same_as or FileVersion()
        while True:
            start = offset + written
            remaining = None if length is None else length - written
            headers = {"Accept-Encoding": "identity"}
            ranged = (start > 0 or remaining is not None) and self._supports_range is not False
            if ranged:
                end = "" if remaining is None else str(start + remaining - 1)
                headers["Range"] = f"bytes={start}-{end}"
            response = self.request("GET", url, headers=headers, stream=True, ok=(200, 206, 416), retries=retries)
            try:
                version.check(response, url)
                if response.status_code == 416:
                    return written
                if response.status_code == 200 and ranged and to_end_if_unranged:
                    length = remaining = None
                skip, expected = self._plan_body(response, url, ranged, start, remaining)
                try:
                    received = 0
                    for piece in _body_pieces(response, skip, remaining, url):
                        note_progress()
                        fileobj.write(piece)
                        written += len(piece)
                        received += len(piece)
                    if length is not None and written >= length:
                        return written
                    if expected is not None and received < expected:
                        expected -= received
                        raise _TruncatedBody(f"answer ended {expected} bytes short of its Content-Length")
                    return written
                except (*_TRANSIENT, _TruncatedBody, urllib3.exceptions.HTTPError) as exc:
                    self._note_failure(exc)
                    if attempt >= retries or not self._pause(attempt, "GET", url, _describe(exc)):
                        kind = XnatTimeout if _timed_out(exc) else XnatServerError
                        raise kind(
                            f"download incomplete after {attempt + 1} attempts: {_describe(exc)}",
                            url=url,
                            status=response.status_code,
                        ) from exc
                    attempt += 1
            finally:
                response.close()

    def _plan_body(
        self, response: requests.Response, url: str, ranged: bool, start: int, remaining: int | None
    ) -> tuple[int, int | None]:
        """How many leading bytes to skip, and how many the body should hold."""
        declared = _content_length(response)
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start:
                raise XnatServerError(
                    "206 answer with a Content-Range that does not match the request", url=url, status=206
                )
            self._supports_range = True
            first, last = int(match.group(1)), int(match.group(2))
            return 0, last - first + 1 if declared is None else declared
        if ranged:
            if self._supports_range is None:
                logger.info("%s ignores Range requests; reading from the start", self.base_url)
            self._supports_range = False
        if declared is None:
            return start, None
        return start, max(0, declared - start) if remaining is None else min(remaining, max(0, declared - start))

    def download_whole(
        self, path: str, fileobj: BinaryIO, *, params: Mapping[str, Any] | None = None, retries: int | None = None
    ) -> int:
        """Stream a whole answer (e.g. a zip, which has no Content-Length) to ``fileobj``.

        If the body is cut short and ``fileobj`` can seek, it is rewound and
        truncated and the download starts over; otherwise the failure is
        raised and the partial bytes stay in ``fileobj``.
        """
        url = self.url_for(path)
        retries = self.retries if retries is None else retries
        start = _position(fileobj)
        attempt = 0
        while True:
            response = self.request(
                "GET", url, params=params, headers={"Accept-Encoding": "identity"}, stream=True, retries=retries
            )
            written = 0
            try:
                declared = _content_length(response)
                for chunk in response.iter_content(CHUNK_SIZE):
                    note_progress()
                    fileobj.write(chunk)
                    written += len(chunk)
                if declared is not None and written < declared:
                    raise _TruncatedBody(f"answer ended {declared - written} bytes short of its Content-Length")
                return written
            except (*_TRANSIENT, _TruncatedBody, urllib3.exceptions.HTTPError) as exc:
                self._note_failure(exc)
                if (
                    attempt >= retries
                    or start is None
                    or not _truncate_to(fileobj, start)
                    or not self._pause(attempt, "GET", url, _describe(exc))
                ):
                    kind = XnatTimeout if _timed_out(exc) else XnatServerError
                    raise kind(f"download incomplete: {_describe(exc)}", url=url, status=response.status_code) from exc
                attempt += 1
            finally:
                response.close()


def parse_json(response: requests.Response) -> Any:
    """The JSON document of an answer; a web page or garbage is an error."""
    text = response.text
    if looks_like_html(text):
        raise XnatServerError(
            "server answered with a web page where JSON was expected", url=response.url, status=response.status_code
        )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise XnatServerError("server answer is not valid JSON", url=response.url, status=response.status_code) from exc


def _body_pieces(response: requests.Response, skip: int, limit: int | None, url: str) -> Iterator[memoryview | bytes]:
    """The body's bytes after ``skip``, at most ``limit`` of them, in large pieces.

    A piece is valid only until the next one is asked for: a large body is
    read straight from the socket into one buffer, without a bytes object per piece.
    """
    if (limit is None or limit >= DIRECT_READ_BYTES) and _content_length(response) is not None:
        raw = getattr(response.raw, "_fp", None)
        if isinstance(raw, http.client.HTTPResponse):
            yield from _read_direct(raw, skip, limit, url)
            return
    yield from _chunks(response, skip, limit)


def _read_direct(raw: http.client.HTTPResponse, skip: int, limit: int | None, url: str) -> Iterator[memoryview]:
    buffer = memoryview(bytearray(DIRECT_READ_BUFFER))
    while limit is None or limit > 0:
        want = DIRECT_READ_BUFFER if limit is None else min(DIRECT_READ_BUFFER, limit + skip)
        try:
            count = raw.readinto(buffer[:want])
        except TimeoutError as exc:
            raise requests.exceptions.ConnectionError(
                urllib3.exceptions.ReadTimeoutError(None, url, "read timed out")  # type: ignore[arg-type]
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
        if not count:
            return
        piece = buffer[:count]
        if skip:
            dropped = min(skip, count)
            skip -= dropped
            piece = piece[dropped:]
        if limit is not None:
            limit -= len(piece)
        if piece:
            yield piece


def _chunks(response: requests.Response, skip: int, limit: int | None) -> Iterator[bytes]:
    """The body's bytes after ``skip``, at most ``limit`` of them, in large pieces."""
    for chunk in response.iter_content(CHUNK_SIZE):
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk = chunk[skip:]
            skip = 0
        if limit is not None:
            if len(chunk) >= limit:
                yield chunk[:limit]
                return
            limit -= len(chunk)
        yield chunk


def _content_length(response: requests.Response) -> int | None:
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _version_of(response: requests.Response) -> tuple[str | None, ...]:
    """What tells one version of a file from another in a download answer:
    ETag, Last-Modified and the file's total size (None where not sent)."""
    total = None
    if response.status_code in (206, 416):
        total = response.headers.get("Content-Range", "").rpartition("/")[2].strip() or None
        total = None if total == "*" else total
    elif response.status_code == 200:
        length = _content_length(response)
        total = None if length is None else str(length)
    return response.headers.get("ETag"), response.headers.get("Last-Modified"), total


def _changed(before: tuple[str | None, ...], after: tuple[str | None, ...]) -> bool:
    return any(a is not None and b is not None and a != b for a, b in zip(before, after))


class FileVersion:
    """The version of a file that its download answers must all describe
    (ETag, Last-Modified, total size: see :func:`_version_of`), so that
    pieces of two versions are never joined. Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: tuple[str | None, ...] = ()

    def check(self, response: requests.Response, url: str) -> None:
        """Remember the first answer's version; raise XnatServerError for an answer of another."""
        version = _version_of(response)
        with self._lock:
            if _changed(self._seen, version):
                raise XnatServerError(
                    "the file changed on the server while it was being downloaded",
                    url=url,
                    status=response.status_code,
                )
            if not self._seen:
                self._seen = version


def _check_length(response: requests.Response) -> None:
    if response.request.method == "HEAD":
        return
    declared = _content_length(response)
    if declared is not None and len(response.content) < declared:
        raise _TruncatedBody(f"answer ended {declared - len(response.content)} bytes short of its Content-Length")


def _bounded_text(response: requests.Response) -> str:
    try:
        raw = response.raw.read(ERROR_BODY_LIMIT, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError):
        return ""
    return raw.decode(response.encoding or "utf-8", errors="replace")


def _retry_after(response: requests.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0


def _is_file(data: Any) -> bool:
    return hasattr(data, "read") and not isinstance(data, (bytes, bytearray, str))


def _position(data: Any) -> int | None:
    if not _is_file(data):
        return None
    try:
        return data.tell() if data.seekable() else None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def _rewind(data: Any, position: int | None = None) -> bool:
    """Whether the body can be sent again (bytes can; a seekable file can)."""
    if not _is_file(data):
        return True
    if position is None:
        return False
    try:
        data.seek(position)
    except (OSError, io.UnsupportedOperation):
        return False
    return True


def _truncate_to(fileobj: Any, position: int) -> bool:
    try:
        fileobj.seek(position)
        fileobj.truncate()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True
