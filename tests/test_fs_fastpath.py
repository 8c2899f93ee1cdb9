"""The cheap paths of warm requests: lent cache entries, remembered xattrs, a real mount using them."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import subprocess

import pytest
import trio

from mountutil import mounted
from xnatfs.cache.content import CacheKey, ContentCache
from xnatfs.cache.spool import UploadTarget
from xnatfs.client.connection import XnatConnection
from xnatfs.client.models import RemoteFile
from xnatfs.fs.inodes import InodeEntry, InodeTable
from xnatfs.fs.local import LocalFile, LocalFileNode
from xnatfs.fs.mount import build_operations
from xnatfs.fs.nodes import FileNode, RootDir
from xnatfs.fs.reading import HotFiles, ReadHandle
from xnatfs.fs.settings import MountSettings
from xnatfs.fs.xattrs import encoded_xattrs


def key_for(uri: str, data: bytes) -> CacheKey:
    return CacheKey(uri, len(data), hashlib.md5(data).hexdigest())


@pytest.fixture
def cache(tmp_path):
    content = ContentCache(tmp_path / "cache", 1 << 20)
    yield content
    content.close()


def test_an_entry_evicted_while_lent_stays_open_until_given_back(cache):
    hot = HotFiles(max_files=1, max_bytes=1 << 20)
    first, second = key_for("/a", b"first"), key_for("/b", b"second")
    held = cache.insert_bytes(first, b"first")
    assert hot.keep(first, held) == []
    lent = hot.borrow(first)
    assert lent is held
    assert hot.keep(second, cache.insert_bytes(second, b"second")) == []  # evicts the lent one
    assert lent.pread(0, 5) == b"first"
    assert hot.borrow(first) is None
    assert hot.give_back(lent) == [lent]
    lent.close()
    assert lent.closed
    for entry in hot.clear():
        entry.close()


def test_a_held_entry_is_lent_to_many_and_closed_only_when_dropped(cache):
    hot = HotFiles(max_files=4, max_bytes=1 << 20)
    key = key_for("/a", b"bytes")
    held = cache.insert_bytes(key, b"bytes")
    hot.keep(key, held)
    readers = [hot.borrow(key) for _ in range(3)]
    assert all(reader is held for reader in readers)
    assert hot.give_back(held) == []
    assert hot.drop_uri("/a") == []  # two readers still have it
    assert hot.give_back(held) == []
    assert hot.give_back(held) == [held]
    assert not held.closed  # closing is the caller's job
    held.close()


def test_an_entry_given_back_after_clear_is_left_to_the_clear(cache):
    hot = HotFiles(max_files=4, max_bytes=1 << 20)
    key = key_for("/a", b"bytes")
    held = cache.insert_bytes(key, b"bytes")
    hot.keep(key, held)
    lent = hot.borrow(key)
    assert hot.clear() == [held]
    assert hot.give_back(lent) == []
    held.close()


def test_open_and_close_of_a_recent_file_need_no_worker_thread(cache):
    hot = HotFiles(max_files=4, max_bytes=1 << 20)
    key = key_for("/a", b"some bytes")
    hot.keep(key, cache.insert_bytes(key, b"some bytes"))

    async def reopen() -> list[bytes]:
        # A capacity of zero: any worker thread asked for would wait forever.
        no_threads = trio.CapacityLimiter(1)
        await no_threads.acquire_on_behalf_of("test")
        seen = []
        for _ in range(3):
            with trio.fail_after(5):
                handle = await ReadHandle.from_cache(cache, key, no_threads, hot)
                seen.append(await handle.read(0, 100, no_threads))
                await handle.close(no_threads)
        return seen

    assert trio.run(reopen) == [b"some bytes"] * 3
    assert hot.borrow(key) is not None


def remote_file(digest: str) -> RemoteFile:
    return RemoteFile(
        path="a.dcm",
        size=10,
        uri="/data/experiments/E1/scans/1/resources/DICOM/files/a.dcm",
        resource_label="DICOM",
        digest=digest,
        format="DICOM",
    )


def test_xattrs_are_worked_out_once_per_snapshot():
    entry = InodeEntry(("P", "a.dcm"), FileNode(mtime=0.0, file=remote_file("d1")))
    first = encoded_xattrs(entry)
    assert first[b"user.xnat.digest"] == b"d1"
    assert encoded_xattrs(entry) is first
    entry.node = FileNode(mtime=0.0, file=remote_file("d2"))
    assert encoded_xattrs(entry)[b"user.xnat.digest"] == b"d2"


def test_a_local_file_shows_its_current_upload_state():
    target = UploadTarget(
        kind="file", resource_uri="/data/experiments/E1/resources/QC", relpath="n.txt", server="http://127.0.0.1"
    )
    local = LocalFile(target=target, container=target.resource_uri, relpath="n.txt", fd=-1, entry=None)
    entry = InodeEntry(("P", "n.txt"), LocalFileNode(mtime=0.0, local=local))
    assert encoded_xattrs(entry)[b"user.xnat.upload"] == b"writing"
    local.state = "failed"
    local.error = "refused"
    assert encoded_xattrs(entry)[b"user.xnat.upload"] == b"failed"
    assert encoded_xattrs(entry)[b"user.xnat.upload_error"] == b"refused"


def test_known_gives_the_number_and_entry_the_kernel_holds():
    root = RootDir(mtime=0.0)
    table = InodeTable(root)
    assert table.known(("P",)) is None
    number = table.remember(("P",), root)
    assert table.known(("P",)) == (number, table.get(number))
    table.forget(number, 1)
    assert table.known(("P",)) is None


def test_attributes_are_reused_per_snapshot_with_a_current_link_count(fake_xnat, tmp_path):
    settings = MountSettings(url=fake_xnat.url, mountpoint=tmp_path / "mnt", cache_dir=tmp_path / "cache")
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as connection:
        ops = build_operations(settings, connection)

        async def check() -> None:
            project = (await ops._listing(ops.tree.root)).get("STUDY01")
            inode = ops.inodes.remember(("STUDY01",), project)
            entry = ops.inodes.get(inode)
            before = ops._attributes_of(inode, entry, project)
            hinted = before.st_nlink
            assert ops._attributes_of(inode, entry, project) is before
            await ops._listing(project)  # its folders are known now: a real link count
            after = ops._attributes_of(inode, entry, project)
            assert after.st_nlink == ops.attributes(inode, project).st_nlink > hinted
            snapshot = dataclasses.replace(project, mtime=project.mtime + 60)
            fresh = ops._attributes_of(inode, entry, snapshot)
            assert fresh is not before
            assert fresh.st_mtime_ns == int(snapshot.mtime * 1e9)

        try:
            trio.run(check)
        finally:
            ops.cache.close()


@pytest.mark.mount
def test_warm_requests_answer_as_before(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        scans = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "SCANS"
        dicom = next(p for p in scans.iterdir() if p.name.startswith("2-")) / "DICOM"
        files = sorted(dicom.iterdir())
        first = {path.name: path.read_bytes() for path in files}
        fake_xnat.reset_counts()
        for _ in range(3):
            assert {path.name: path.read_bytes() for path in files} == first
            assert sorted(p.name for p in dicom.iterdir()) == sorted(first)
        assert fake_xnat.count(method="GET") == 0
        for path in files[:3]:
            digest = os.getxattr(path, "user.xnat.digest")
            assert digest == hashlib.md5(first[path.name]).hexdigest().encode()
            assert os.getxattr(path, "user.xnat.digest") == digest
            assert "user.xnat.uri" in os.listxattr(path)
            for foreign, code in (
                ("security.selinux", errno.ENOTSUP),
                ("system.posix_acl_access", errno.ENOTSUP),
                ("trusted.x", errno.ENOTSUP),
                ("user.other", errno.ENODATA),
            ):
                with pytest.raises(OSError) as caught:
                    os.getxattr(path, foreign)
                assert caught.value.errno == code, foreign
        stats = {p.name: p.stat() for p in dicom.iterdir()}
        assert {name: s.st_size for name, s in stats.items()} == {name: len(b) for name, b in first.items()}
        assert len({s.st_ino for s in stats.values()}) == len(stats)
        assert dicom.stat().st_nlink == 2


@pytest.mark.mount
@pytest.mark.skipif(not (shutil.which("strace") and shutil.which("getfattr")), reason="needs strace and getfattr")
def test_ls_asks_for_labels_and_acls_once_and_tools_still_copy_user_attributes(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1"
        trace = tmp_path / "ls.trace"
        listing = subprocess.run(
            ["strace", "-f", "-o", str(trace), "-e", "trace=getxattr,lgetxattr", "ls", "-lR", str(session)],
            capture_output=True,
            text=True,
            check=True,
        )
        entries = [line for line in listing.stdout.splitlines() if line[:1] in ("-", "d")]
        assert len(entries) > 20
        asked = [line for line in trace.read_text().splitlines() if "xattr(" in line]
        # Once ENOTSUP, coreutils' ls asks that device no more: one label, one ACL for the whole tree.
        assert 1 <= len(asked) <= 2, asked
        assert all("EOPNOTSUPP" in line for line in asked), asked
        one = next(session.rglob("*.dcm"))
        dump = subprocess.run(["getfattr", "-d", str(one)], capture_output=True, text=True, check=True).stdout
        assert 'user.xnat.digest="' in dump and 'user.xnat.uri="' in dump
        copy = tmp_path / "copy"
        subprocess.run(["cp", "-a", str(one.parent), str(copy)], check=True)
        assert os.getxattr(copy / one.name, "user.xnat.digest") == os.getxattr(one, "user.xnat.digest")
        assert (copy / one.name).read_bytes() == one.read_bytes()
