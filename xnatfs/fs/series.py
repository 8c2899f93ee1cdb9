"""Fetching a whole scan resource (a DICOM series) in one request.

Tools that read one file of a series nearly always read them all, and a
series is often hundreds of small files: one request each costs a round
trip each. On the first cache miss in a scan resource, the whole resource is
fetched as one zip (XNAT's ``?format=zip``) in the background and every file
in it is put into the content cache, checked against the listing's size and
digest. The file that was asked for is fetched on its own meanwhile, so the
first read is not held up; later opens of the series wait for the zip
instead of sending requests of their own.

Each resource is zipped at most once per mount (until we change it
ourselves), so a cache too small for the series cannot make it loop.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from xnatfs.cache.content import CacheKey, ContentCache
from xnatfs.client.models import RemoteFile
from xnatfs.errors import XnatError

logger = logging.getLogger(__name__)


class SeriesFetcher:
    """One zip download per scan resource, shared by every reader of the series."""

    def __init__(self, connection, cache: ContentCache, key_for: Callable[[RemoteFile], CacheKey],
                 limiter: trio.CapacityLimiter, *, work_dir: Path, max_bytes: int, large_file_bytes: int):
        self.connection = connection
        self.cache = cache
        self.key_for = key_for
        self.limiter = limiter
        self.work_dir = work_dir
        self.max_bytes = max_bytes
        self.large_file_bytes = large_file_bytes
        self._running: dict[str, trio.Event] = {}
        self._done: set[str] = set()

    def eligible(self, files: Sequence[RemoteFile]) -> bool:
        """A scan resource of several files that together fit comfortably in the cache."""
        if len(files) < 2 or "/scans/" not in files[0].resource_uri:
            return False
        total = sum(f.size for f in files)
        return total <= self.max_bytes and all(f.size < self.large_file_bytes for f in files)

    def running(self, resource_uri: str) -> trio.Event | None:
        return self._running.get(resource_uri)

    def start(self, nursery: trio.Nursery, resource_uri: str, files: Sequence[RemoteFile],
              *, fetched_alone: RemoteFile) -> bool:
        """Start zipping ``resource_uri`` unless it is running or done; True if started now.

        ``fetched_alone`` is the file the caller downloads by itself meanwhile;
        the zip leaves it to that download.
        """
        if resource_uri in self._running or resource_uri in self._done:
            return False
        self._running[resource_uri] = trio.Event()
        nursery.start_soon(self._fetch, resource_uri, [f for f in files if f.uri != fetched_alone.uri])
        return True

    def forget(self, resource_uri: str) -> None:
        """Allow a new zip of a resource whose files we changed."""
        self._done.discard(resource_uri)

    async def _fetch(self, resource_uri: str, files: list[RemoteFile]) -> None:
        try:
            stored = await trio.to_thread.run_sync(self._fetch_blocking, resource_uri, files,
                                                   limiter=self.limiter)
            logger.debug("series %s: %d of %d files cached from one zip", resource_uri, stored, len(files))
        except (XnatError, OSError, zipfile.BadZipFile) as exc:
            logger.warning("fetching series %s as a zip failed, reading its files one by one: %s",
                           resource_uri, exc)
        except Exception:
            logger.exception("fetching series %s as a zip failed", resource_uri)
        finally:
            self._done.add(resource_uri)
            self._running.pop(resource_uri).set()

    def _fetch_blocking(self, resource_uri: str, files: list[RemoteFile]) -> int:
        wanted = [f for f in files if not self.cache.contains(self.key_for(f))]
        if not wanted:
            return 0
        stored = 0
        with tempfile.TemporaryFile(dir=self.work_dir) as archive:
            self.connection.download_zip(resource_uri, archive)
            archive.seek(0)
            with zipfile.ZipFile(archive) as bundle:
                entries = _entries_by_path(bundle.infolist(), [f.path for f in wanted])
                for remote in wanted:
                    entry = entries.get(remote.path)
                    if entry is None or entry.file_size != remote.size:
                        continue
                    try:
                        with bundle.open(entry) as source:
                            self.cache.insert(self.key_for(remote), source)
                        stored += 1
                    except XnatError as exc:
                        logger.warning("zip entry for %s does not match the listing: %s", remote.uri, exc)
        return stored


def _entries_by_path(entries: Sequence[zipfile.ZipInfo], paths: Sequence[str]) -> dict[str, zipfile.ZipInfo]:
    """Match zip entries to file paths in the resource.

    XNAT names entries ``<session>/scans/<id>-<type>/resources/<label>/files/<path>``
    (other layouts drop parts of that prefix), so an entry belongs to the
    path it ends with, preferably after ``/files/``; a path that still fits
    several entries is left out and downloaded on its own.
    """
    by_suffix: dict[str, list[zipfile.ZipInfo]] = defaultdict(list)
    for entry in entries:
        if entry.is_dir():
            continue
        name = entry.filename
        by_suffix[name].append(entry)
        position = name.find("/")
        while position != -1:
            by_suffix[name[position + 1:]].append(entry)
            position = name.find("/", position + 1)
    matched: dict[str, zipfile.ZipInfo] = {}
    for path in paths:
        candidates = by_suffix.get(path, [])
        preferred = [e for e in candidates if e.filename.endswith("/files/" + path)] or candidates
        if len(preferred) == 1:
            matched[path] = preferred[0]
    return matched
