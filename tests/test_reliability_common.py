"""Shared checks for the reliability, security and hostile-input tests (no tests here).

The checks compare what a mount serves and what its cache folder holds with
what the server has, file by file, by MD5:

- :func:`server_files` lists every file the mount should show, with the
  size, digest and address the server reports;
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
import os
from dataclasses import dataclass
from pathlib import Path

from xnatfs.cache.content import CacheKey, entry_name
from xnatfs.client.connection import XnatConnection
from xnatfs.fs.names import scan_dir_name


@dataclass(frozen=True)
class ServerFile:
    size: int
    digest: str
    uri: str


def server_files(server, *, projects: tuple[str, ...] | None = None) -> dict[str, ServerFile]:
    """Mount-relative path → what the server says about that file."""
    files: dict[str, ServerFile] = {}
    with XnatConnection(server.url, server.username, server.password) as conn:
        for project in conn.list_projects():
            if projects is not None and project.id not in projects:
                continue
            subjects = {s.id: s for s in conn.list_subjects(project.id)}
            for resource in conn.list_resources(f"/data/projects/{project.id}"):
                for remote in conn.list_files(resource.uri):
                    files[f"{project.id}/RESOURCES/{resource.label}/{remote.path}"] = ServerFile(
                        remote.size, remote.digest, remote.uri)
            for experiment in conn.list_experiments(project.id):
                subject = subjects[experiment.subject_id]
                base = f"{project.id}/{subject.label}/{experiment.label}"
                contents = conn.get_experiment_contents(experiment.id)
                where = {}
                for scan in contents.scans:
                    for resource in scan.resources:
                        where[resource.uri] = f"{base}/SCANS/{scan_dir_name(scan.id, scan.type)}/{resource.label}"
                for resource in contents.resources:
                    where[resource.uri] = f"{base}/RESOURCES/{resource.label}"
                for remote in conn.list_files(f"/data/experiments/{experiment.id}", all_levels=True):
                    files[f"{where[remote.resource_uri]}/{remote.path}"] = ServerFile(
                        remote.size, remote.digest, remote.uri)
            for subject in subjects.values():
                if subject.project != project.id:
                    continue
                for resource in conn.list_resources(f"/data/projects/{project.id}/subjects/{subject.id}"):
                    for remote in conn.list_files(resource.uri):
                        files[f"{project.id}/{subject.label}/RESOURCES/{resource.label}/{remote.path}"] = (
                            ServerFile(remote.size, remote.digest, remote.uri))
    return files


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
