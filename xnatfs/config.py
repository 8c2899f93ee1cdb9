"""The configuration file, read in one place.

The file is ``$XNATFS_CONFIG``, else ``$XDG_CONFIG_HOME/xnatfs/config.toml``
(``~/.config/xnatfs/config.toml``). One TOML document holds every table, and
each reader takes its own from :func:`read_config`'s answer:

- ``[defaults]`` and ``[servers."<URL>"]``: options of ``xnatfs mount``
  (:func:`xnatfs.fs.settings.load_config`);
- ``[xnat]``, ``[naming]`` and ``[sites.<name>]``: the Python client
  (:class:`xnatfs.client.config.ClientConfig`).

A file that cannot be read or parsed is a :class:`ConfigError` whose message
names the file and, for a syntax error, the line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xnatfs.errors import XnatError


class ConfigError(XnatError):
    """The configuration file cannot be read, or holds something that cannot be used."""


def user_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/xnatfs`` (``~/.config/xnatfs``): the user's settings and tokens."""
    env = os.environ if environ is None else environ
    config_home = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config_home) / "xnatfs"


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("XNATFS_CONFIG"):
        return Path(env["XNATFS_CONFIG"]).expanduser()
    return user_config_dir(env) / "config.toml"


_WHERE = re.compile(r"^(?P<what>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def read_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The parsed file at ``path``; without ``path`` the default file, which may be absent.

    An explicit ``path`` that does not exist raises ``FileNotFoundError``.
    """
    explicit = path is not None
    where = Path(path).expanduser() if path is not None else default_config_path()
    try:
        with open(where, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            raise
        return {}
    except tomllib.TOMLDecodeError as exc:
        match = _WHERE.match(str(exc))
        if match is None:
            raise ConfigError(f"config file {where}: {exc}") from None
        raise ConfigError(f"config file {where}, line {match['line']}: {match['what']}") from None
    except OSError as exc:
        raise ConfigError(f"config file {where}: {exc.strerror or exc}") from None


def mount_tables(document: Mapping[str, Any], url: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The tables that set ``xnatfs mount``'s options for ``url``, weakest first, each with its name."""
    tables: list[tuple[str, Mapping[str, Any]]] = []
    defaults = document.get("defaults")
    if defaults:
        tables.append(("[defaults]", defaults))
    servers = document.get("servers") or {}
    table = servers.get(url) or servers.get(url.rstrip("/"))
    if table:
        tables.append((f"[servers.{url!r}]", table))
    return tables
