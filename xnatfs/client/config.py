"""Client settings from a TOML file, and datman's ``get_connection``/``get_port_str``.

The file is the one :mod:`xnatfs.config` reads (``~/.config/xnatfs/config.toml``);
these are its client tables, every one optional::

    [xnat]
    server = "https://xnat.example.org"     # datman's XNATSERVER
    port = 8443                             # datman's XNATPORT
    verify = true                           # false, or the path of a CA bundle
    timeout = 60                            # seconds
    retries = 5
    import_overwrite = "append"             # none | append | delete
    event_reason = "changed through xnatfs" # for sites that require one
    credentials = "~/.xnat-login"           # datman's XNAT_CREDENTIALS: user on line 1, password on line 2

    [naming]                                # tags for assign_scan_names (see xnatfs.client.naming)
    T1 = { SeriesDescription = ["T1w", "MPRAGE"] }
    DTI = { SeriesDescription = "DWI|DTI", ImageType = "ORIGINAL" }

    [sites.CMH.xnat]                        # per-site values override [xnat]
    server = "https://xnat-cmh.example.org"

    [sites.CMH.naming]                      # replaces [naming] for that site
    T1 = { SeriesDescription = "BRAVO" }

A plain mapping with datman's keys (``{"XNATSERVER": ..., "XNATPORT": ...}``)
or the same structure as the file works too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from xnatfs.client.datman_api import DatmanConnection
from xnatfs.config import default_config_path, read_config
from xnatfs.errors import XnatError

logger = logging.getLogger(__name__)

# datman's setting names and ours.
KEY_ALIASES = {"xnatserver": "server", "xnatport": "port", "xnat_credentials": "credentials"}
CONNECTION_OPTIONS = ("verify", "timeout", "retries", "import_overwrite", "event_reason")


def _key(name: str) -> str:
    lowered = name.lower()
    return KEY_ALIASES.get(lowered, lowered)


def _normalised(table: Mapping[str, Any] | None) -> dict[str, Any]:
    return {_key(str(name)): value for name, value in (table or {}).items()}


class ClientConfig:
    """XNAT client settings, global and per site.

    ``get_key(name, site=None)`` answers datman's names (``XNATSERVER``,
    ``XNATPORT``, ``XNAT_CREDENTIALS``) and ours, preferring the site's
    value; ``get_tags(site=None)`` gives the naming configuration.
    """

    def __init__(self, document: Mapping[str, Any] | None = None, path: Path | None = None):
        document = document or {}
        structured = any(name in document for name in ("xnat", "naming", "sites"))
        self.path = path
        self._settings = _normalised(document.get("xnat") if structured else document)
        self._naming = dict(document.get("naming") or {}) if structured else {}
        self._sites = (
            {str(name): table for name, table in (document.get("sites") or {}).items() if isinstance(table, Mapping)}
            if structured
            else {}
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ClientConfig:
        """Read a TOML file; without ``path`` the default file, which may be absent."""
        where = Path(path).expanduser() if path is not None else default_config_path()
        return cls(read_config(path), path=where)

    def get_key(self, name: str, site: str | None = None) -> Any:
        key = _key(name)
        if site is not None:
            site_values = _normalised((self._sites.get(site) or {}).get("xnat"))
            if key in site_values:
                return site_values[key]
        if key in self._settings:
            return self._settings[key]
        raise KeyError(name)

    def get_tags(self, site: str | None = None) -> dict[str, Mapping[str, Any]]:
        if site is not None:
            site_naming = (self._sites.get(site) or {}).get("naming")
            if site_naming:
                return dict(site_naming)
        return dict(self._naming)

    def connection_options(self, site: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``XnatConnection`` set in this configuration."""
        options = {}
        for name in CONNECTION_OPTIONS:
            try:
                options[name] = self.get_key(name, site)
            except KeyError:
                continue
        if isinstance(options.get("verify"), str):
            options["verify"] = str(Path(options["verify"]).expanduser())
        return options

    def __repr__(self) -> str:
        return f"<ClientConfig {self.path or '(in memory)'}>"


def _as_config(config: Any) -> Any:
    if config is None:
        return ClientConfig.load()
    if hasattr(config, "get_key"):
        return config
    if isinstance(config, Mapping):
        return ClientConfig(config)
    raise TypeError("config must be a ClientConfig, an object with get_key(), or a mapping")


def _optional(config: Any, name: str, site: str | None) -> Any:
    """A setting, or None when it is not defined.

    Missing settings raise KeyError here and datman's own UndefinedSetting
    in a datman config; both mean "not set".
    """
    try:
        return config.get_key(name, site=site)
    except Exception:
        return None


def get_port_str(config: Any = None, port: int | str | None = None) -> str:
    """``":<port>"`` from ``port`` or the configuration's XNATPORT.

    Raises ``KeyError`` when no port is given and there is no configuration
    or it has none, as datman documents.
    """
    if port is None:
        if config is None:
            raise KeyError("XNATPORT")
        port = _as_config(config).get_key("XNATPORT")
    port = str(port)
    return port if port.startswith(":") else f":{port}"


def server_url(url: str, port: str = "") -> str:
    """``url`` with ``https://`` when it has no scheme, and ``port`` when it has none."""
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    parts = urlsplit(url.rstrip("/"))
    netloc = parts.netloc
    if port and parts.port is None:
        netloc += port
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _read_credentials_file(path: str) -> tuple[str, str]:
    try:
        with open(Path(path).expanduser(), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise XnatError(f"cannot read the credentials file {path}: {exc.strerror}") from exc
    if len(lines) < 2 or not lines[0].strip():
        raise XnatError(f"the credentials file {path} must hold a user name and a password on two lines")
    return lines[0].strip(), lines[1].strip()


def get_connection(
    config: Any = None,
    site: str | None = None,
    url: str | None = None,
    auth: tuple[str, str] | None = None,
    server_cache: MutableMapping[str, DatmanConnection] | None = None,
) -> DatmanConnection:
    """Open (or reuse from ``server_cache``) a connection, as datman's ``get_connection``.

    ``url`` overrides the configured server (and then no configured port is
    added); ``auth`` overrides every other source of credentials; without
    it the configuration's ``credentials`` file is read, else the usual
    order applies (``XNAT_USER``/``XNAT_PASS``, ``~/.netrc``, alias tokens).
    """
    settings = _as_config(config) if config is not None or url is None else None
    if url:
        server = server_url(url)
    else:
        configured = _optional(settings, "XNATSERVER", site)
        if not configured:
            raise XnatError("no XNAT server given and none configured (XNATSERVER / [xnat] server)")
        port = _optional(settings, "XNATPORT", site)
        server = server_url(str(configured), get_port_str(port=port) if port else "")

    if server_cache is not None and server in server_cache:
        return server_cache[server]

    username = password = None
    if auth:
        username, password = auth
    elif settings is not None and _optional(settings, "XNAT_CREDENTIALS", site):
        username, password = _read_credentials_file(_optional(settings, "XNAT_CREDENTIALS", site))
    options = settings.connection_options(site) if isinstance(settings, ClientConfig) else {}
    connection = DatmanConnection(server, username, password, **options)
    if server_cache is not None:
        server_cache[server] = connection
    return connection
