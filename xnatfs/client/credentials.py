"""Where the user name and password for an XNAT server come from.

In this order, the first that gives a complete pair wins:

1. explicit arguments (the command line, or ``XnatConnection(url, user, password)``);
2. the environment variables ``XNAT_USER`` and ``XNAT_PASS`` (datman's names);
3. ``~/.netrc`` (or the file named by ``NETRC``), the entry for the server's
   host, as curl and xnatpy read it;
4. an alias token stored earlier with :func:`store_alias_token` (XNAT
   accepts ``alias:secret`` wherever it accepts ``user:password``).

A user name given without a password narrows the later sources to entries
for that user. No source at all means guest access.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xnatfs.config import user_config_dir

logger = logging.getLogger(__name__)


class Credentials:
    """A user name and password that never show the password when printed.

    Unpacks like datman's ``(username, password)`` tuple.
    """

    __slots__ = ("password", "source", "username")

    def __init__(self, username: str, password: str, source: str = "arguments"):
        self.username = username
        self.password = password
        self.source = source

    def __iter__(self) -> Iterator[str]:
        return iter((self.username, self.password))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> str:
        return (self.username, self.password)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Credentials):
            return (self.username, self.password) == (other.username, other.password)
        if isinstance(other, tuple):
            return (self.username, self.password) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.username, self.password))

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>, source={self.source!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class AliasToken:
    """An XNAT alias token: usable as ``alias:secret`` Basic credentials."""

    alias: str
    secret: str
    expires: float | None = None  # seconds since the epoch, None if unknown

    def __repr__(self) -> str:
        return f"AliasToken(alias={self.alias!r}, secret=<hidden>, expires={self.expires!r})"

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now if now is not None else time.time()) >= self.expires


def resolve_credentials(
    url: str,
    username: str | None = None,
    password: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials for ``url``, looked up in the documented order."""
    env = os.environ if environ is None else environ
    if username and password is not None:
        return Credentials(username, password, "arguments")

    env_user, env_pass = env.get("XNAT_USER"), env.get("XNAT_PASS")
    if env_user and env_pass is not None and (not username or username == env_user):
        return Credentials(env_user, env_pass, "XNAT_USER/XNAT_PASS")
    wanted = username or env_user

    found = _from_netrc(url, wanted, env)
    if found:
        return found

    token = load_alias_token(url, environ=env)
    if token and not wanted:
        return Credentials(token.alias, token.secret, "alias token")

    if wanted:
        logger.warning("no password found for XNAT user %s at %s", wanted, _host_key(url))
    return None


def netrc_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("NETRC"):
        return Path(env["NETRC"]).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".netrc"


def _from_netrc(url: str, wanted: str | None, env: Mapping[str, str]) -> Credentials | None:
    path = netrc_path(env)
    if not path.is_file():
        return None
    try:
        entries = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError) as exc:
        # The parse error text can quote the file's lines; keep it out of logs.
        logger.warning("cannot read %s (%s); skipping it", path, type(exc).__name__)
        return None
    parts = urlsplit(url)
    for host in dict.fromkeys(filter(None, (parts.netloc.rsplit("@", 1)[-1], parts.hostname))):
        entry = entries.authenticators(host)
        if entry is None:
            continue
        login, _account, secret = entry
        if login and secret is not None and (not wanted or login == wanted):
            return Credentials(login, secret, str(path))
    return None


# -- alias tokens ------------------------------------------------------------


def token_store_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XNATFS_TOKENS``, else ``tokens.json`` in :func:`user_config_dir`."""
    env = os.environ if environ is None else environ
    if env.get("XNATFS_TOKENS"):
        return Path(env["XNATFS_TOKENS"]).expanduser()
    return user_config_dir(env) / "tokens.json"


def _host_key(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1].lower() + parts.path.rstrip("/")


def _read_tokens(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            tokens = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("cannot read alias tokens from %s (%s)", path, type(exc).__name__)
        return {}
    return tokens if isinstance(tokens, dict) else {}


def load_alias_token(url: str, *, environ: Mapping[str, str] | None = None) -> AliasToken | None:
    """The stored, unexpired alias token for ``url``'s server, if any."""
    record = _read_tokens(token_store_path(environ)).get(_host_key(url))
    if not isinstance(record, dict) or not record.get("alias") or not record.get("secret"):
        return None
    token = AliasToken(str(record["alias"]), str(record["secret"]), record.get("expires"))
    if token.expired():
        logger.info("the stored alias token for %s has expired", _host_key(url))
        return None
    return token


def store_alias_token(url: str, token: AliasToken, *, environ: Mapping[str, str] | None = None) -> Path:
    """Keep ``token`` for ``url``'s server in the token file (mode 0600)."""
    path = token_store_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = _read_tokens(path)
    tokens[_host_key(url)] = {"alias": token.alias, "secret": token.secret, "expires": token.expires}
    # A temp file of its own (mode 0600), so that writers at the same time
    # never write into one file: the last one wins, whole.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(tokens, handle, indent=2)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return path
