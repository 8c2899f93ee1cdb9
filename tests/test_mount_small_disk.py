"""A cache folder on a disk smaller than ``--cache-size`` (docs/SEMANTICS.md, "Contents are cached on disk").

The default bound is 10 GiB whatever the disk holds, so on a fuller disk the
disk is the real bound: the cache evicts its least recently used files to
keep 128 MiB free there, writes through the mount take room from the cached
files before they are refused, and a file the disk cannot hold even then is
refused at open (ENOSPC) with a log line that says where and why, before any
of it is downloaded. The disk here is a tmpfs of 256 MiB: mounting one needs
root, as FUSE does in these tests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from mountutil import mounted
from test_reliability_common import md5
from xnatfs.cache.content import CacheKey, ContentCache
from xnatfs.cache.files import disk_free

pytestmark = pytest.mark.mount

QC_PATH = ("STUDY01", "SUB001", "SUB001_MR1", "RESOURCES", "QC")
DISK_MB = 256
FILE_BYTES = 50_000_000


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def put_server_files(server, count: int, size: int) -> dict[str, str]:
    digests = {}
    for index in range(count):
        data = os.urandom(size)
        name = f"big{index}.bin"
        server.store.put_file("XNAT_E00001", "QC", name, data)
        digests[name] = md5(data)
    return digests


def read_digest(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_reads_past_the_disks_size_evict_the_oldest_cached_files(fake_xnat, tmp_path, small_disk):
    # Six files of 50 MB through a 256 MiB disk: the fourth no longer fits beside the first three.
    digests = put_server_files(fake_xnat, 6, FILE_BYTES)
    with mounted(fake_xnat.url, tmp_path, cache_dir=small_disk / "cache") as mount:
        qc = mount.path.joinpath(*QC_PATH)
        for name, digest in digests.items():
            assert read_digest(qc / name) == digest, name
            assert disk_free(small_disk) >= 128 << 20
        # The most recent ones stayed: read again, they come from the cache.
        assert read_digest(qc / "big5.bin") == digests["big5.bin"]
        log = mount.log()
    assert "to make room on the disk of" in log


def test_a_file_the_disk_cannot_hold_is_refused_at_open_before_it_is_fetched(fake_xnat, tmp_path, small_disk):
    size = 200_000_000  # fits the disk, not with 128 MiB to spare
    fake_xnat.store.put_file("XNAT_E00001", "QC", "huge.bin", b"\0" * size)
    with mounted(fake_xnat.url, tmp_path, cache_dir=small_disk / "cache") as mount:
        qc = mount.path.joinpath(*QC_PATH)
        assert (qc / "huge.bin").stat().st_size == size
        with pytest.raises(OSError) as refused:
            read_digest(qc / "huge.bin")
        assert refused.value.errno == errno.ENOSPC
        assert list((small_disk / "cache" / "tmp").iterdir()) == []
        log = mount.log()
    assert f"huge.bin ({size} bytes) does not fit on the disk of the cache folder {small_disk / 'cache'}" in log


def test_a_write_takes_room_from_cached_files_before_it_is_refused(fake_xnat, tmp_path, small_disk):
    digests = put_server_files(fake_xnat, 2, FILE_BYTES)
    written = os.urandom(120_000_000)
    with mounted(fake_xnat.url, tmp_path, cache_dir=small_disk / "cache") as mount:
        qc = mount.path.joinpath(*QC_PATH)
        for name, digest in digests.items():
            assert read_digest(qc / name) == digest
        # About 168 MB free, 101 MB of it the spool's to fill: the write needs the cache's room.
        assert disk_free(small_disk) - (64 << 20) < len(written)
        (qc / "written.bin").write_bytes(written)
        assert read_digest(qc / "written.bin") == md5(written)
    resource = fake_xnat.store.find_resource("experiment", "XNAT_E00001", "QC")
    assert md5(fake_xnat.store.file_path(resource["id"], "written.bin").read_bytes()) == md5(written)


def test_a_download_under_way_counts_only_what_it_has_still_to_write(small_disk):
    # 90 of a 100 MB download are on the disk when a 30 MB one starts: 178 MB free, of which
    # the first still needs 10 and the reserve 134; counting the whole 100 again would refuse it.
    cache = ContentCache(small_disk / "cache", 10 << 30)
    big, small = os.urandom(100_000_000), os.urandom(30_000_000)
    halfway, finish = threading.Event(), threading.Event()

    def slow(fileobj) -> None:
        fileobj.write(big[:90_000_000])
        halfway.set()
        assert finish.wait(30)
        fileobj.write(big[90_000_000:])

    try:
        pending = cache.start_fetch(CacheKey("http://x/big", len(big), md5(big)), slow)
        assert halfway.wait(30)
        with cache.fetch(CacheKey("http://x/small", len(small), md5(small)), lambda f: f.write(small)) as entry:
            assert entry.size == len(small)
        finish.set()
        with pending.result() as entry:
            assert entry.size == len(big)
    finally:
        finish.set()
        cache.close()
