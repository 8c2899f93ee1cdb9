"""What a mount is asked to do: the options of ``xnatfs mount`` in one record.

Values come, from weakest to strongest, from built-in defaults, the config
file (:mod:`xnatfs.config`: a ``[defaults]`` table and one
``[servers."<URL>"]`` table per server) and the command line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xnatfs.config import ConfigError, mount_tables, read_config

DEFAULT_CACHE_SIZE = 10 << 30
DEFAULT_TTL = 60.0
DEFAULT_EXPERIMENT_TYPE = "xnat:mrSessionData"
DEFAULT_MAX_FILE_SIZE = 1 << 40
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xnatfs"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "xnatfs"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``10G``, ``512M``, ``1.5T``, ``4096`` → bytes (binary units)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 10G, 512M)")
    number, unit = float(match.group(1)), match.group(2).lower()
    power = "kmgtp".index(unit) + 1 if unit else 0
    return int(number * (1024**power))


@dataclass(frozen=True)
class MountSettings:
    url: str = ""
    mountpoint: Path = Path()
    user: str | None = None
    password_file: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = DEFAULT_CACHE_SIZE
    ttl: float = DEFAULT_TTL
    read_only: bool = False
    allow_delete: bool = False
    experiment_type: str = DEFAULT_EXPERIMENT_TYPE
    fuse_options: tuple[str, ...] = ()
    foreground: bool = False
    log_level: str = "WARNING"
    log_file: Path | None = None
    verify_tls: bool = True
    workers: int = 32
    retries: int = 5  # for each failed idempotent request, with backoff
    large_file_size: int = 64 << 20  # files this big are served while they download
    parallel_download_size: int = 64 << 20  # files this big are fetched as several ranged streams, if allowed
    download_part_size: int = 16 << 20  # the smallest part one such stream asks for
    download_streams: int = 4  # streams at once for one file
    read_ahead: int = 4 << 20  # how far the kernel reads ahead in a file (0: its default); needs root
    series_zip_size: int = 1 << 30  # scan resources up to this size are fetched as one zip
    series_early_size: int = 64 << 20  # a zip started before an open stops past this size; 0: never early
    series_early_wait: float = 3.0  # seconds an early zip waits for a file of it to be opened
    timeout: float = 30.0  # seconds a request may wait without progress, then EIO
    max_answer_size: int = 64 << 20  # the largest listing, search or item JSON held in memory
    max_file_size: int = DEFAULT_MAX_FILE_SIZE  # a file written through the mount may grow to this (else EFBIG)
    bids: bool = True  # every project shows a BIDS/ view
    bids_config: Path | None = None  # a dcm2bids config replacing the built-in naming rules

    def __post_init__(self) -> None:
        # Whatever set them (defaults, config file, command line): a value out of range would
        # not fail at once but later and obscurely (no worker: every request waits for ever).
        problem = _problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def negative_ttl(self) -> float:
        """How long the kernel may remember that a name does not exist."""
        return min(self.ttl, 5.0)

    @property
    def spool_dir(self) -> Path:
        return self.cache_dir / "spool"


# Setting → whether 0 is a value it may take.
_SECONDS = {"ttl": True, "series_early_wait": True, "timeout": False}
_SIZES = {
    "cache_size": False,
    "download_part_size": False,
    "max_answer_size": False,
    "max_file_size": False,
    "large_file_size": True,
    "parallel_download_size": True,
    "read_ahead": True,
    "series_zip_size": True,
    "series_early_size": True,
}
_COUNTS_AT_LEAST = {"workers": 1, "download_streams": 1, "retries": 0}
_SWITCHES = ("read_only", "allow_delete", "foreground", "verify_tls", "bids")


def _problem(settings: MountSettings) -> str:
    """Why ``settings`` cannot be mounted with, or "" when they can."""
    for name in _SWITCHES:
        if not isinstance(getattr(settings, name), bool):
            return f"{name} must be true or false, not {getattr(settings, name)!r}"
    for name, zero_ok in _SECONDS.items():
        seconds = getattr(settings, name)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
            return f"{name} must be a number of seconds {_lowest(zero_ok)}, not {seconds!r}"
    for name, lowest in _COUNTS_AT_LEAST.items():
        count = getattr(settings, name)
        if isinstance(count, bool) or count < lowest:
            return f"{name} must be a whole number, {lowest} or more, not {count!r}"
    for name, zero_ok in _SIZES.items():
        size = getattr(settings, name)
        if size < 0 or (size == 0 and not zero_ok):
            return f"{name} must be a size {_lowest(zero_ok)} (e.g. 10G, 512M), not {size!r}"
    if settings.log_level not in LOG_LEVELS:
        return f"log_level must be one of {', '.join(LOG_LEVELS)}, not {settings.log_level!r}"
    return ""


def _lowest(zero_ok: bool) -> str:
    return "0 or more" if zero_ok else "above 0"


def _as_written(value: object) -> object:
    """A switch as TOML gives it: ``bool()`` would read the text "no" as true, and
    :class:`MountSettings` refuses anything but true or false."""
    return value


_CONFIG_KEYS: dict[str, Callable[[Any], object]] = {
    "user": str,
    "password_file": Path,
    "cache_dir": Path,
    "cache_size": parse_size,
    "ttl": float,
    "read_only": _as_written,
    "allow_delete": _as_written,
    "experiment_type": str,
    "log_level": lambda value: str(value).upper(),
    "log_file": Path,
    "verify_tls": _as_written,
    "workers": int,
    "retries": int,
    "large_file_size": parse_size,
    "parallel_download_size": parse_size,
    "download_part_size": parse_size,
    "download_streams": int,
    "read_ahead": parse_size,
    "series_zip_size": parse_size,
    "series_early_size": parse_size,
    "series_early_wait": float,
    "timeout": float,
    "max_answer_size": parse_size,
    "max_file_size": parse_size,
    "bids": _as_written,
    "bids_config": Path,
}


def _apply_table(settings: MountSettings, table: Mapping[str, Any]) -> MountSettings:
    changes: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name == "options":
            extra = value.split(",") if isinstance(value, str) else list(value)
            changes["fuse_options"] = tuple(o.strip() for o in extra if o.strip())
            continue
        convert = _CONFIG_KEYS.get(name)
        if convert is None:
            raise ValueError(f"unknown setting {key!r}")
        try:
            changes[name] = Path(value).expanduser() if convert is Path else convert(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from None
    return replace(settings, **changes)


def load_config(path: Path, url: str) -> MountSettings:
    """Defaults overlaid with the config file's ``[defaults]`` and the table for ``url``.

    Raises :class:`xnatfs.config.ConfigError` (naming the file, and the line
    of a syntax error) for a file that cannot be used.
    """
    settings = MountSettings()
    try:
        document = read_config(path)
    except FileNotFoundError:
        return settings
    for name, table in mount_tables(document, url):
        try:
            settings = _apply_table(settings, table)
        except ValueError as exc:
            raise ConfigError(f"config file {path} {name}: {exc}") from None
    return settings
