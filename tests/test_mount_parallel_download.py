"""A large file fetched as several ranged streams at once, through a real mount.

Where the server honours Range, a file of ``parallel_download_size`` or
more is cut into parts that several streams fetch side by side (here: 6
parts of 1 MiB, 4 streams). The bytes must still be exactly the listed
version's: a wrong byte in one part, or a file changed on the server
between parts, is EIO, never mixed bytes, and nothing is cached. A part
cut short is asked for again on its own; a server that answers a ranged
request with the whole file is read as one stream. The mount also asks the
kernel to read further ahead, so that it sends fewer, larger reads.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from fakeutil import fault_seed
from mountutil import mounted, server_files
from test_reliability_common import check_cache, read_or_eio, write_config
from waiting import wait_until
from xnatfs.fs.readahead import mount_device

pytestmark = pytest.mark.mount

MIB = 1 << 20
SIZE = 6 * MIB
PARTS = 6
BIG = "STUDY01/SUB001/SUB001_MR1/RESOURCES/RAW/big.bin"


def config(tmp_path) -> tuple[str, str]:
    return write_config(
        tmp_path / "config.toml",
        large_file_size="1M",
        parallel_download_size="2M",
        download_part_size="1M",
        download_streams=4,
    )


def file_answers(server) -> list[int]:
    """The statuses of the answers to downloads of the big file, in order."""
    return [status for method, target, status in server.requests if method == "GET" and target.endswith("big.bin")]


def put_big(server, data: bytes, tmp_path, *, digest: str | None = None, mtime: float | None = None):
    """Store ``data`` as the big file, listed with ``digest`` (default: its own MD5)."""
    staged = tmp_path / f"staged-{time.monotonic_ns()}.bin"
    staged.write_bytes(data)
    return server.store.put_file(
        "XNAT_E00001",
        "RAW",
        "big.bin",
        staged,
        move=True,
        digest=digest or hashlib.md5(data).hexdigest(),
        mtime=mtime,
    )


def test_large_file_is_fetched_as_several_ranged_streams_and_checked(fake_xnat, tmp_path):
    data = os.urandom(SIZE)
    put_big(fake_xnat, data, tmp_path)
    fake_xnat.honour_range = True
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path)) as mount:
        big = mount.path / BIG
        assert big.stat().st_size == SIZE
        fake_xnat.reset_counts()
        assert read_or_eio(big) == data
        assert file_answers(fake_xnat) == [206] * PARTS, "not fetched as one ranged request per part"
    assert check_cache(mount.cache_dir, fake_xnat.url, [server_files(fake_xnat)[BIG]]) == 1


def test_wrong_byte_in_one_part_is_eio_and_not_cached(fake_xnat, tmp_path):
    good = os.urandom(SIZE)
    bad = bytearray(good)
    bad[4 * MIB + 12345] ^= 0xFF
    put_big(fake_xnat, bytes(bad), tmp_path, digest=hashlib.md5(good).hexdigest())
    fake_xnat.honour_range = True
    with mounted(
        fake_xnat.url,
        tmp_path,
        args=config(tmp_path),
        expected_errors=(r"does not match its MD5 digest",),
    ) as mount:
        big = mount.path / BIG
        assert big.stat().st_size == SIZE
        fake_xnat.reset_counts()
        assert read_or_eio(big) is None, "a file that fails its MD5 was served whole"
        assert len(file_answers(fake_xnat)) == PARTS
    check_cache(mount.cache_dir, fake_xnat.url, [])


def test_file_changed_between_parts_is_eio_never_mixed(fake_xnat, tmp_path):
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    put_big(fake_xnat, old, tmp_path, mtime=time.time() - 100)
    fake_xnat.honour_range = True
    with mounted(
        fake_xnat.url,
        tmp_path,
        args=config(tmp_path),
        expected_errors=(r"the file changed on the server while it was being downloaded",),
    ) as mount:
        big = mount.path / BIG
        assert big.stat().st_size == SIZE
        fake_xnat.reset_counts()
        # Each request now waits 100 ms before the server opens the file, so the
        # new version is in place before any part after the first is opened.
        fake_xnat.latency_ms = 100
        pieces: list[bytes | int] = []

        def read_in_pieces() -> None:
            with open(big, "rb") as handle:
                for offset in range(0, SIZE, 256 * 1024):
                    try:
                        pieces.append(os.pread(handle.fileno(), 256 * 1024, offset))
                    except OSError as exc:
                        pieces.append(exc.errno)
                        return

        reader = threading.Thread(target=read_in_pieces)
        reader.start()
        wait_until(lambda: file_answers(fake_xnat), "the first part's answer")
        put_big(fake_xnat, new, tmp_path, mtime=time.time() + 100)
        reader.join(60)
        assert not reader.is_alive(), "the reader did not finish"
        offset = 0
        for piece in pieces:
            if isinstance(piece, int):
                assert piece == errno.EIO
                break
            assert piece == old[offset : offset + len(piece)], f"bytes at {offset} are not the listed version's"
            offset += len(piece)
        assert pieces[-1] == errno.EIO, "a file changed between its parts was served whole"
    check_cache(mount.cache_dir, fake_xnat.url, [])


def test_part_cut_short_is_asked_for_again_on_its_own(fake_xnat, tmp_path):
    data = os.urandom(SIZE)
    put_big(fake_xnat, data, tmp_path)
    fake_xnat.honour_range = True
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path)) as mount:
        big = mount.path / BIG
        assert big.stat().st_size == SIZE
        fake_xnat.reset_counts()
        fake_xnat.set_faults(drop_rate=0.5, seed=fault_seed([None, None, "drop"] + [None] * PARTS, drop_rate=0.5))
        assert read_or_eio(big) == data
        fake_xnat.set_faults()
        # One more request than parts: only the cut part was asked for again.
        assert file_answers(fake_xnat) == [206] * (PARTS + 1)


def test_server_answering_ranges_with_the_whole_file_is_read_as_one_stream(fake_xnat, tmp_path):
    data = os.urandom(SIZE)
    put_big(fake_xnat, data, tmp_path)
    assert not fake_xnat.honour_range
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path)) as mount:
        big = mount.path / BIG
        assert big.stat().st_size == SIZE
        fake_xnat.reset_counts()
        assert read_or_eio(big) == data
        assert file_answers(fake_xnat) == [200]


def test_concurrent_readers_of_a_large_file_share_one_download(fake_xnat, tmp_path):
    data = os.urandom(SIZE)
    put_big(fake_xnat, data, tmp_path)
    fake_xnat.honour_range = True
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path)) as mount:
        big = mount.path / BIG
        assert big.stat().st_size == SIZE
        fake_xnat.reset_counts()
        fake_xnat.latency_ms = 50
        results: list[bytes | None] = []
        start = threading.Barrier(3)

        def read() -> None:
            start.wait()
            results.append(read_or_eio(big))

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(60)
        assert results == [data] * 3
        assert file_answers(fake_xnat) == [206] * PARTS


def test_mount_asks_the_kernel_to_read_further_ahead(fake_xnat, tmp_path):
    args = write_config(tmp_path / "config.toml", read_ahead="2M")
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        device = mount_device(str(mount.path))
        assert device is not None
        setting = Path("/sys/class/bdi") / device / "read_ahead_kb"
        # Set by the daemon once the kernel has its answer to INIT, just after the mount shows.
        wait_until(lambda: setting.read_text().strip() == "2048", "the read-ahead of 2 MiB", timeout=10)


def test_mount_device_is_found_under_an_escaped_mountpoint(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "48 27 0:43 / /tmp/with\\040space rw,nosuid - fuse.xnatfs xnatfs rw\n"
        "49 27 0:44 / /tmp/with\\040space rw,nosuid - fuse.xnatfs xnatfs rw\n"
    )
    assert mount_device("/tmp/with space", mountinfo) == "0:44"
    assert mount_device("/tmp/with space/", mountinfo) == "0:44"
    assert mount_device("/tmp/elsewhere", mountinfo) is None
