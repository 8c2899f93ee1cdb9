"""Who is asking: users, JSESSION sessions with an idle timeout, alias tokens.

Kept in memory only, so restarting the server logs everybody out, as
restarting a real XNAT does.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

TOKEN_LIFETIME = 48 * 3600.0


@dataclass
class Token:
    alias: str
    secret: str
    username: str
    created: float
    expires: float
    token_id: int


class Authenticator:
    """Checks passwords and tokens, and keeps track of live sessions."""

    def __init__(self, users: dict[str, str], session_timeout: float):
        self._users = dict(users)
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}
        self._tokens: dict[str, Token] = {}
        self.session_timeout = float(session_timeout)

    # ---- credentials ----------------------------------------------------

    def check_password(self, username: str, password: str) -> str | None:
        """The user a username/password (or token alias/secret) pair logs in as, else None."""
        expected = self._users.get(username)
        if expected is not None and secrets.compare_digest(expected, password):
            return username
        return self.token_user(username, password)

    def token_user(self, alias: str, secret: str) -> str | None:
        with self._lock:
            token = self._tokens.get(alias)
        if token is None or time.time() > token.expires:
            return None
        if not secrets.compare_digest(token.secret, secret):
            return None
        return token.username

    def issue_token(self, username: str) -> Token:
        now = time.time()
        token = Token(
            alias=str(uuid.uuid4()),
            secret=secrets.token_urlsafe(48),
            username=username,
            created=now,
            expires=now + TOKEN_LIFETIME,
            token_id=0,
        )
        with self._lock:
            token.token_id = len(self._tokens) + 1
            self._tokens[token.alias] = token
        return token

    # ---- sessions -------------------------------------------------------

    def new_session(self, username: str) -> str:
        session_id = secrets.token_hex(16).upper()
        with self._lock:
            self._sessions[session_id] = (username, time.monotonic())
        return session_id

    def session_user(self, session_id: str | None) -> str | None:
        """The user of a live session (touching it), or None if unknown or idle too long."""
        if not session_id:
            return None
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            username, last_used = entry
            now = time.monotonic()
            if now - last_used > self.session_timeout:
                del self._sessions[session_id]
                return None
            self._sessions[session_id] = (username, now)
            return username

    def end_session(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def end_all_sessions(self) -> None:
        """Forget every session (a test can simulate a server-side logout with it)."""
        with self._lock:
            self._sessions.clear()


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """The (user, password) of an HTTP Basic Authorization header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password
