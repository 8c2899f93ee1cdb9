"""The content cache filled by several streams at once, each writing its own part.

A reader waits only for the bytes it asks for, wherever they are in the
file; the MD5 is taken over the bytes in file order; the last bytes are
handed out only once the whole file matches it.
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from waiting import wait_until
from xnatfs.cache.content import HASH_THREAD_BYTES, CacheKey, ContentCache, _hash_mapped
from xnatfs.errors import XnatServerError

PART = 64 * 1024


def key_for(data: bytes, digest: str | None = None) -> CacheKey:
    return CacheKey("http://x/data/files/parts.bin", len(data), digest or hashlib.md5(data).hexdigest())


def test_reader_of_a_later_part_waits_only_for_that_part(tmp_path):
    data = os.urandom(4 * PART)
    cache = ContentCache(tmp_path / "cache", 1 << 30)
    third_written, go_on = threading.Event(), threading.Event()

    def download(target) -> None:
        parts = [target.part(start, start + PART) for start in range(0, len(data), PART)]
        parts[2].write(data[2 * PART : 3 * PART])
        third_written.set()
        assert go_on.wait(10)
        for index in (0, 1, 3):
            parts[index].write(data[index * PART : (index + 1) * PART])

    try:
        with cache.start_fetch(key_for(data), download) as pending:
            assert third_written.wait(10)
            pending.wait_for(3 * PART, timeout=10, start=2 * PART)
            assert pending.pread(2 * PART, PART) == data[2 * PART : 3 * PART]
            with pytest.raises(TimeoutError):
                pending.wait_for(PART, timeout=0.05)
            go_on.set()
            pending.wait_for(len(data), timeout=10)
            assert pending.pread(0, len(data)) == data
            with pending.result(timeout=10) as cached:
                assert cached.pread(0, len(data)) == data
    finally:
        go_on.set()
        cache.close()


@pytest.mark.parametrize("size", [4 * PART, HASH_THREAD_BYTES + PART], ids=["hashed-inline", "hash-thread"])
def test_parts_written_out_of_order_are_hashed_in_file_order(tmp_path, size):
    data = os.urandom(size)
    cache = ContentCache(tmp_path / "cache", 1 << 30)
    bounds = [(start, min(start + PART * 16, size)) for start in range(0, size, PART * 16)]

    def download(target) -> None:
        for start, end in reversed(bounds):
            target.part(start, end).write(data[start:end])

    try:
        with cache.fetch(key_for(data), download) as cached:
            assert cached.pread(0, size) == data
    finally:
        cache.close()


def test_last_bytes_wait_for_the_md5_and_a_mismatch_caches_nothing(tmp_path):
    good = os.urandom(4 * PART)
    bad = bytearray(good)
    bad[PART + 7] ^= 1
    cache = ContentCache(tmp_path / "cache", 1 << 30)
    key = key_for(good)
    all_written, go_on = threading.Event(), threading.Event()

    def download(target) -> None:
        parts = [target.part(start, start + PART) for start in range(0, len(bad), PART)]
        for index, part in enumerate(parts):
            part.write(bad[index * PART : (index + 1) * PART])
        all_written.set()
        assert go_on.wait(10)

    try:
        with cache.start_fetch(key, download) as pending:
            assert all_written.wait(10)
            pending.wait_for(len(bad) - 1, timeout=10)
            with pytest.raises(TimeoutError):
                pending.wait_for(len(bad), timeout=0.05)
            assert pending.pread_nowait(len(bad) - 10, 10) is None
            go_on.set()
            with pytest.raises(XnatServerError, match="MD5"):
                pending.wait_for(len(bad), timeout=10)
        assert cache.lookup(key) is None
        assert os.listdir(tmp_path / "cache" / "tmp") == []
    finally:
        go_on.set()
        cache.close()


def test_part_refuses_bytes_beyond_its_end(tmp_path):
    data = os.urandom(2 * PART)
    cache = ContentCache(tmp_path / "cache", 1 << 30)

    def download(target) -> None:
        target.part(0, PART).write(data)

    try:
        with pytest.raises(XnatServerError, match="more than"):
            cache.fetch(key_for(data), download)
        assert cache.lookup(key_for(data)) is None
    finally:
        cache.close()


def test_readers_waiting_at_once_are_each_woken_once_their_own_bytes_are_written(tmp_path):
    data = os.urandom(4 * PART)
    cache = ContentCache(tmp_path / "cache", 1 << 30)
    go = [threading.Event() for _ in range(4)]
    order = (2, 0, 1, 3)

    def download(target) -> None:
        parts = [target.part(start, start + PART) for start in range(0, len(data), PART)]
        for index in order:
            assert go[index].wait(10)
            parts[index].write(data[index * PART : (index + 1) * PART])

    got: dict[str, bytes | BaseException] = {}

    def reader(name: str, start: int, end: int) -> threading.Thread:
        def run() -> None:
            try:
                pending.wait_for(end, timeout=10, start=start)
                got[name] = pending.pread(start, end - start)
            except BaseException as exc:
                got[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        with cache.start_fetch(key_for(data), download) as pending:
            # One reader per part but the last, and one up to the end of the file (it waits for the MD5).
            readers = {f"part{i}": reader(f"part{i}", i * PART, (i + 1) * PART) for i in range(3)}
            readers["whole"] = reader("whole", 0, len(data))
            wait_until(lambda: len(pending._fill.waiting) == 4, "the four readers to wait")
            for step, index in enumerate(order):
                go[index].set()
                woken = f"part{index}" if index < 3 else "whole"
                readers[woken].join(10)
                assert got[woken] == (data[index * PART : (index + 1) * PART] if index < 3 else data)
                for later in order[step + 1 :]:
                    assert readers[f"part{later}" if later < 3 else "whole"].is_alive()
            assert pending._fill is None or pending._fill.waiting == []
    finally:
        for event in go:
            event.set()
        cache.close()


def test_the_md5_maps_any_span_of_the_file_and_a_file_cut_short_is_an_error(tmp_path):
    data = os.urandom(3 * PART + 123)
    path = tmp_path / "entry.part"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Spans that start and end off the page size, as the bytes written without a gap do.
        md5 = hashlib.md5()
        for start, end in ((0, 4097), (4097, PART + 1), (PART + 1, len(data))):
            assert _hash_mapped(md5, fd, start, end) == end
        assert md5.hexdigest() == hashlib.md5(data).hexdigest()
        with pytest.raises(OSError, match="shorter"):
            _hash_mapped(hashlib.md5(), fd, PART, len(data) + 1)
    finally:
        os.close(fd)
