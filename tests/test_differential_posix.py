"""The same POSIX sequence on a local folder and on the mount must give the same results.

Hypothesis draws sequences of create / open (also for appending) / write
through a descriptor / truncate / fsync / close / rename / unlink / read by
name over a few names, one of them in a sub-folder that is made and
removed too, with descriptors held open across steps. Each sequence runs on a fresh folder of the local
disk and on a fresh resource of one mount; every step must return the same
value or fail with the same errno, and at the end (all descriptors closed)
both folders must list the same files with the same bytes, and the server
must hold exactly those files.

Left out on purpose, because XNAT differs there by design: empty files and
emptying files (see ``test_mount_empty_files.py``), and renaming a folder
inside a resource (EXDEV, docs/SEMANTICS.md).
"""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mountutil import mounted
from xnatfs.client.connection import XnatConnection

pytestmark = [pytest.mark.mount, pytest.mark.slow]

EXPERIMENT = "XNAT_E00001"
RESOURCES = ("STUDY01", "SUB001", "SUB001_MR1", "RESOURCES")
NAMES = ("a", "b", "d/a")  # few names: renames and opens meet often
FOLDERS = ("d", "e")
DATA = st.binary(min_size=1, max_size=64)

OPERATIONS = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES), DATA),
    st.tuples(st.just("open"), st.sampled_from(NAMES)),
    st.tuples(st.just("append"), st.sampled_from(NAMES)),
    st.tuples(st.just("ftruncate"), st.integers(0, 3), st.integers(1, 100)),
    st.tuples(st.just("fsync"), st.integers(0, 3)),
    st.tuples(st.just("mkdir"), st.sampled_from(FOLDERS)),
    st.tuples(st.just("rmdir"), st.sampled_from(FOLDERS)),
    st.tuples(st.just("pwrite"), st.integers(0, 3), st.integers(0, 80), DATA),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("unlink"), st.sampled_from(NAMES)),
    st.tuples(st.just("read"), st.sampled_from(NAMES)),
    st.tuples(st.just("fdread"), st.integers(0, 3)),
)


class Side:
    """One folder the sequence runs in, and the descriptors open in it."""

    def __init__(self, folder):
        self.folder = folder
        self.fds: list[int] = []

    def run(self, operation: tuple):
        try:
            return self._run(*operation)
        except OSError as exc:
            return ("error", exc.errno)

    def _run(self, what, *args):
        if what == "create":
            name, data = args
            fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.fds.append(fd)
            return os.write(fd, data)
        if what == "open":
            self.fds.append(os.open(self.folder / args[0], os.O_RDWR))
            return None
        if what == "append":
            self.fds.append(os.open(self.folder / args[0], os.O_WRONLY | os.O_APPEND))
            return None
        if what == "mkdir":
            return os.mkdir(self.folder / args[0])
        if what == "rmdir":
            return os.rmdir(self.folder / args[0])
        if what == "rename":
            return os.rename(self.folder / args[0], self.folder / args[1])
        if what == "unlink":
            return os.unlink(self.folder / args[0])
        if what == "read":
            return (self.folder / args[0]).read_bytes()
        if not self.fds:
            return "no descriptor"
        index = args[0] % len(self.fds)
        if what == "pwrite":
            offset = min(args[1], os.fstat(self.fds[index]).st_size)
            return os.pwrite(self.fds[index], args[2], offset)
        if what == "fdread":
            return os.pread(self.fds[index], 1000, 0)
        if what == "ftruncate":
            return os.ftruncate(self.fds[index], args[1])
        if what == "fsync":
            return os.fsync(self.fds[index])
        return os.close(self.fds.pop(index))

    def close_all(self) -> None:
        while self.fds:
            os.close(self.fds.pop())

    def contents(self) -> dict[str, bytes]:
        """Every file, by its path in the folder (XNAT keeps no empty folders, so none are compared)."""
        return {
            os.path.relpath(os.path.join(top, name), self.folder): (Path(top) / name).read_bytes()
            for top, _folders, files in os.walk(self.folder)
            for name in files
        }


# CI replays the same sequences every run, so a run's verdict is the code's;
# elsewhere every run explores new ones.
IN_CI = bool(os.environ.get("CI"))


def server_contents(server, label: str) -> dict[str, bytes]:
    found = {}
    with XnatConnection(server.url, "admin", "admin") as conn:
        for remote in conn.list_files(f"/data/experiments/{EXPERIMENT}/resources/{label}"):
            buffer = io.BytesIO()
            conn.download(remote.uri, buffer)
            found[remote.path] = buffer.getvalue()
    return found


def test_posix_sequences_agree_with_a_local_folder(fake_xnat, tmp_path):
    labels = (f"D{n}" for n in itertools.count(1))
    local_base = tmp_path / "local"
    local_base.mkdir()
    with mounted(fake_xnat.url, tmp_path, ttl=30) as mount:
        resources = mount.path.joinpath(*RESOURCES)

        @settings(
            max_examples=80,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
            derandomize=IN_CI,
        )
        @given(st.lists(OPERATIONS, min_size=1, max_size=20))
        @example([("create", "a", b"first"), ("rename", "a", "b"), ("pwrite", 0, 5, b"+more")])
        def same_results(operations):
            label = next(labels)
            local = Side(local_base / label)
            local.folder.mkdir()
            remote = Side(resources / label)
            remote.folder.mkdir()
            try:
                for step, operation in enumerate(operations):
                    expected = local.run(operation)
                    assert remote.run(operation) == expected, f"step {step}: {operation}"
            finally:
                local.close_all()
                remote.close_all()
            expected = local.contents()
            assert remote.contents() == expected
            assert server_contents(fake_xnat, label) == expected

        same_results()
