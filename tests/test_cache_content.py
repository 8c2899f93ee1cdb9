"""The on-disk content cache: filling, verification, LRU eviction, pins, restarts."""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import io
import os
import secrets
import stat
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mountutil import removed_files_open
from waiting import wait_until
from xnatfs.cache import content
from xnatfs.cache.content import HASH_THREAD_BYTES, CacheKey, ContentCache, entry_name
from xnatfs.errors import XnatNotFound, XnatServerError


def body(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


class Server:
    """Bodies by URI, and how often each was asked for."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, uri: str, size: int, *, digest: bool = False) -> CacheKey:
        data = body(uri, size)
        self.files[uri] = data
        return CacheKey(uri, size, hashlib.md5(data).hexdigest() if digest else "")

    def download(self, uri: str, *, delay: float = 0.0, chunk: int = 4096):
        def run(fileobj):
            with self._lock:
                self.calls[uri] = self.calls.get(uri, 0) + 1
            data = self.files[uri]
            for start in range(0, len(data), chunk):
                fileobj.write(data[start : start + chunk])
                if delay:
                    time.sleep(delay)

        return run


@pytest.fixture
def server():
    return Server()


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def read_all(cached) -> bytes:
    return cached.pread(0, cached.size)


def tmp_files(cache_dir: Path) -> list[str]:
    return os.listdir(cache_dir / "tmp")


def test_fetch_then_lookup_serves_from_disk(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/data/a.dcm", 1000)
    with cache.fetch(key, server.download(key.uri)) as first:
        assert read_all(first) == server.files[key.uri]
        assert first.pread(990, 100) == server.files[key.uri][990:]
        assert first.pread(1000, 10) == b""
    with cache.fetch(key, server.download(key.uri)) as second:
        assert second.pread(10, 20) == server.files[key.uri][10:30]
    with cache.lookup(key) as third:
        assert third.size == 1000
    assert server.calls[key.uri] == 1
    assert cache.contains(key)
    assert cache.lookup(key._replace(size=999)) is None
    assert tmp_files(cache_dir) == []


def test_lru_evicts_least_recently_used(cache_dir, server):
    cache = ContentCache(cache_dir, 300)
    a, b, c, d = (server.add(f"/f/{n}", 100) for n in "abcd")
    for key in (a, b, c):
        cache.fetch(key, server.download(key.uri)).close()
    cache.lookup(a).close()  # a is now newer than b and c
    cache.fetch(d, server.download(d.uri)).close()
    assert [cache.contains(k) for k in (a, b, c, d)] == [True, False, True, True]
    cache.fetch(b, server.download(b.uri)).close()
    assert [cache.contains(k) for k in (a, b, c, d)] == [True, True, False, True]
    assert cache.info().bytes_used == 300


def test_pinned_entries_are_never_evicted(cache_dir, server):
    cache = ContentCache(cache_dir, 200)
    a, b, c, d = (server.add(f"/f/{n}", 100) for n in "abcd")
    held_a = cache.fetch(a, server.download(a.uri))
    cache.fetch(b, server.download(b.uri)).close()
    held_c = cache.fetch(c, server.download(c.uri))  # evicts b, the oldest unpinned
    assert cache.contains(a) and cache.contains(c) and not cache.contains(b)
    # Everything is pinned: d is served, but not kept beyond its use.
    with cache.fetch(d, server.download(d.uri)) as held_d:
        assert read_all(held_d) == server.files[d.uri]
        assert cache.info().bytes_used <= 200
    assert not cache.contains(d)
    assert tmp_files(cache_dir) == []
    assert read_all(held_a) == server.files[a.uri]
    held_a.close()
    held_c.close()
    assert cache.info().pinned == 0


def test_size_bound_holds_under_churn(cache_dir, server):
    cache = ContentCache(cache_dir, 5_000)
    for i in range(60):
        key = server.add(f"/f/{i}", 300 + (i * 137) % 1500)
        cache.fetch(key, server.download(key.uri)).close()
        assert cache.info().bytes_used <= 5_000
    on_disk = sum(f.stat().st_size for f in (cache_dir / "data").rglob("*") if f.is_file())
    assert on_disk <= 5_000
    assert on_disk == cache.info().bytes_used


def test_entry_larger_than_the_cache_is_served_then_dropped(cache_dir, server):
    cache = ContentCache(cache_dir, 1000)
    big = server.add("/f/big", 5000)
    with cache.fetch(big, server.download(big.uri)) as held:
        assert read_all(held) == server.files[big.uri]
        assert held.path.exists()
    assert not cache.contains(big)
    assert tmp_files(cache_dir) == []
    assert cache.info().bytes_used == 0


def test_concurrent_threads_share_one_download(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/shared", 64 * 1024)
    results, errors = [], []
    start = threading.Barrier(8)

    def reader():
        try:
            start.wait()
            with cache.fetch(key, server.download(key.uri, delay=0.01, chunk=8192)) as held:
                results.append(read_all(held))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert results == [server.files[key.uri]] * 8
    assert server.calls[key.uri] == 1


def test_a_reader_that_finds_the_entry_before_the_waiters_are_served_strands_nobody(cache_dir, server, monkeypatch):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/raced", 20_000, digest=True)
    release = threading.Event()

    def gated(fileobj):
        assert release.wait(10)
        server.download(key.uri)(fileobj)

    complete = cache._complete

    def reader_comes_first(fill, entry, error):
        # A reader that looks the entry up between its adoption and its hand-out to the waiters.
        if entry is not None:
            early = threading.Thread(target=lambda: cache.lookup(key).close())
            early.start()
            early.join(10)
        complete(fill, entry, error)

    monkeypatch.setattr(cache, "_complete", reader_comes_first)
    errors = []

    def fill():
        try:
            with cache.fetch(key, gated) as held:
                assert read_all(held) == server.files[key.uri]
        except BaseException as exc:
            errors.append(exc)

    filler = threading.Thread(target=fill)
    filler.start()
    deadline = time.monotonic() + 10
    while not cache.downloads() and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = cache.start_fetch(key, gated)
    release.set()
    with waiting.result(timeout=5) as held:
        assert read_all(held) == server.files[key.uri]
    waiting.close()
    filler.join(10)
    assert errors == []
    assert server.calls[key.uri] == 1
    with cache.lookup(key) as again:
        assert read_all(again) == server.files[key.uri]
    assert cache.info().pinned == 0


def test_a_filler_stopped_by_an_unexpected_error_wakes_its_waiters(cache_dir, server, monkeypatch):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/broken", 1000)
    release = threading.Event()

    def gated(fileobj):
        assert release.wait(10)
        server.download(key.uri)(fileobj)

    def making_room_fails(*args):
        # What an evictor meets when a network file system refuses locks.
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cache, "_reserve", making_room_fails)
    pending = cache.start_fetch(key, gated)
    deadline = time.monotonic() + 10
    while not cache.downloads() and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = cache.start_fetch(key, gated)
    release.set()
    for view in (pending, waiting):
        with pytest.raises(OSError, match="No locks"):
            view.result(timeout=5)
        view.close()
    assert tmp_files(cache_dir) == []


def test_failing_download_caches_nothing(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/x", 1000)

    def broken(fileobj):
        fileobj.write(b"x" * 500)
        raise XnatNotFound("gone", status=404)

    with pytest.raises(XnatNotFound):
        cache.fetch(key, broken)
    assert not cache.contains(key)
    assert tmp_files(cache_dir) == []
    assert cache.info().bytes_used == 0
    with cache.fetch(key, server.download(key.uri)) as held:
        assert read_all(held) == server.files[key.uri]


def test_short_and_long_bodies_are_rejected(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/x", 1000)
    with pytest.raises(XnatServerError, match="after 999 of 1000"):
        cache.fetch(key, lambda f: f.write(server.files[key.uri][:999]))
    with pytest.raises(XnatServerError, match="more than"):
        cache.fetch(key, lambda f: f.write(server.files[key.uri] + b"!"))
    assert not cache.contains(key)
    assert tmp_files(cache_dir) == []
    assert list((cache_dir / "data").rglob("*.part")) == []


def test_digest_is_checked(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/x", 1000, digest=True)
    wrong = key._replace(digest="0" * 32)
    with pytest.raises(XnatServerError, match="MD5"):
        cache.fetch(wrong, server.download(key.uri))
    assert not cache.contains(wrong)
    upper = key._replace(digest=key.digest.upper())
    with cache.fetch(upper, server.download(key.uri)) as held:
        assert read_all(held) == server.files[key.uri]
    assert cache.contains(key)  # digests compare without regard to case


def test_digest_of_a_large_file_is_checked_beside_the_download(cache_dir, server):
    cache = ContentCache(cache_dir, 4 * HASH_THREAD_BYTES)
    key = server.add("/f/large", HASH_THREAD_BYTES + 12345, digest=True)
    wrong = key._replace(digest="0" * 32)
    with pytest.raises(XnatServerError, match="MD5"):
        cache.fetch(wrong, server.download(key.uri, chunk=1 << 20))
    assert not cache.contains(wrong) and tmp_files(cache_dir) == []
    # A writer that reuses its buffer must not change what was hashed.
    buffer = bytearray(1 << 20)

    def reusing_buffer(fileobj):
        data = server.files[key.uri]
        for start in range(0, len(data), len(buffer)):
            piece = data[start : start + len(buffer)]
            buffer[: len(piece)] = piece
            fileobj.write(memoryview(buffer)[: len(piece)])
            buffer[:] = bytes(len(buffer))

    with cache.fetch(key, reusing_buffer) as held:
        assert read_all(held) == server.files[key.uri]


def test_a_changed_server_file_is_a_new_entry(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    old = server.add("/f/x", 100)
    cache.fetch(old, server.download(old.uri)).close()
    new = server.add("/f/x", 120)
    with cache.fetch(new, server.download(new.uri)) as held:
        assert read_all(held) == server.files[new.uri]
    assert server.calls["/f/x"] == 2
    assert entry_name(old) != entry_name(new)


def test_entries_survive_a_restart(cache_dir, server):
    first = ContentCache(cache_dir, 10_000)
    keys = [server.add(f"/f/{i}", 500 + i) for i in range(4)]
    for key in keys:
        first.fetch(key, server.download(key.uri)).close()
    first.close()
    second = ContentCache(cache_dir, 10_000)
    info = second.info()
    assert (info.entries, info.bytes_used) == (4, sum(k.size for k in keys))

    def must_not_download(fileobj):
        raise AssertionError("served from the network")

    with second.fetch(keys[2], must_not_download) as held:
        assert read_all(held) == server.files[keys[2].uri]


def test_restart_with_a_smaller_bound_evicts_oldest_on_next_fill(cache_dir, server):
    first = ContentCache(cache_dir, 10_000)
    keys = [server.add(f"/f/{i}", 400) for i in range(5)]
    for key in keys:
        first.fetch(key, server.download(key.uri)).close()
    second = ContentCache(cache_dir, 1_000)
    extra = server.add("/f/extra", 400)
    second.fetch(extra, server.download(extra.uri)).close()
    assert second.info().bytes_used <= 1_000
    assert [second.contains(k) for k in keys] == [False, False, False, False, True]
    assert second.contains(extra)


def test_permissions(tmp_path, server):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o755)
    os.chmod(cache_dir, 0o755)
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/x", 100)
    with cache.fetch(key, server.download(key.uri)) as held:
        assert stat.S_IMODE(held.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(held.path.parent.stat().st_mode) == 0o700
    for folder in (cache_dir, cache_dir / "data", cache_dir / "tmp", cache_dir / "locks"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def paused_halfway(data: bytes, at: int):
    """A download that writes ``data[:at]``, sets ``half_written`` and waits for ``go_on`` to write the rest."""
    half_written, go_on = threading.Event(), threading.Event()

    def download(fileobj):
        fileobj.write(data[:at])
        half_written.set()
        assert go_on.wait(10)
        fileobj.write(data[at:])

    return download, half_written, go_on


def test_progressive_reads_while_downloading(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/large", 200_000)
    data = server.files[key.uri]
    download, half_written, go_on = paused_halfway(data, 100_000)
    pending = cache.start_fetch(key, download)
    assert half_written.wait(10)
    pending.wait_for(100_000, timeout=5)
    assert pending.pread(1000, 5000) == data[1000:6000]
    assert pending.pread(99_000, 5000) == data[99_000:100_000]  # only what has arrived
    assert not pending.done()
    with pytest.raises(TimeoutError):
        pending.wait_for(150_000, timeout=0.05)
    go_on.set()
    pending.wait_for(200_000, timeout=5)
    assert pending.pread(150_000, 100) == data[150_000:150_100]
    with pending.result(timeout=5) as held:
        assert read_all(held) == data
    pending.close()
    assert cache.contains(key)
    assert tmp_files(cache_dir) == []


def test_reads_that_need_no_waiting(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/nowait", 200_000, digest=True)
    data = server.files[key.uri]
    download, half_written, go_on = paused_halfway(data, 100_000)
    pending = cache.start_fetch(key, download)
    assert half_written.wait(10)
    assert pending.pread_nowait(1000, 50_000) == data[1000:51_000]
    assert pending.pread_nowait(90_000, 20_000) is None  # not downloaded yet
    go_on.set()
    pending.wait_for(key.size, timeout=10)
    assert pending.pread_nowait(150_000, 100_000) == data[150_000:]
    with pending.result() as held:
        assert held.pread_nowait(0, key.size) == data
        assert held.pread_nowait(key.size, 10) == b""
    pending.close()
    assert pending.pread_nowait(0, 10) is None


def test_progressive_reader_sees_the_download_error(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/x", 10_000)

    def download(fileobj):
        fileobj.write(server.files[key.uri][:100])
        time.sleep(0.05)
        raise XnatServerError("connection reset", status=None)

    with cache.start_fetch(key, download) as pending:
        with pytest.raises(XnatServerError, match="connection reset"):
            pending.wait_for(5000, timeout=5)
        with pytest.raises(XnatServerError):
            pending.result()
    assert not cache.contains(key)
    assert tmp_files(cache_dir) == []


def test_a_read_up_to_the_end_waits_for_the_digest_check(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/checked", 10_000, digest=True)
    wrong = body("another version", 10_000)
    all_written, go_on = threading.Event(), threading.Event()

    def download(fileobj):
        fileobj.write(wrong)
        all_written.set()
        assert go_on.wait(10)

    with cache.start_fetch(key, download) as pending:
        assert all_written.wait(10)
        pending.wait_for(5000, timeout=5)  # the middle is served as it arrives
        with pytest.raises(TimeoutError):
            pending.wait_for(10_000, timeout=0.1)
        go_on.set()
        with pytest.raises(XnatServerError, match="MD5"):
            pending.wait_for(10_000, timeout=5)
    assert not cache.contains(key)


def test_background_and_foreground_fetches_share_one_download(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000)
    key = server.add("/f/x", 50_000)
    pendings = [cache.start_fetch(key, server.download(key.uri, delay=0.005)) for _ in range(3)]
    with cache.fetch(key, server.download(key.uri)) as held:
        assert read_all(held) == server.files[key.uri]
    for pending in pendings:
        with pending.result(timeout=5) as held:
            assert held.pread(0, 10) == server.files[key.uri][:10]
        pending.close()
    assert server.calls[key.uri] == 1
    with cache.start_fetch(key, server.download(key.uri)) as cached:
        assert cached.done()
        assert cached.pread(0, 5) == server.files[key.uri][:5]


def test_foreground_fetch_does_not_wait_behind_queued_prefetches(cache_dir, server):
    cache = ContentCache(cache_dir, 1_000_000, fetch_workers=1)
    slow = server.add("/f/slow", 1000)
    wanted = server.add("/f/wanted", 1000)
    release = threading.Event()

    def stuck(fileobj):
        assert release.wait(10)
        fileobj.write(server.files[slow.uri])

    blocking = cache.start_fetch(slow, stuck)
    queued = cache.start_fetch(wanted, server.download(wanted.uri))
    started = time.monotonic()
    with cache.fetch(wanted, server.download(wanted.uri)) as held:
        assert read_all(held) == server.files[wanted.uri]
    assert time.monotonic() - started < 2
    with queued.result(timeout=1) as joined:
        assert joined.pread(0, 3) == server.files[wanted.uri][:3]
    release.set()
    blocking.result(timeout=5).close()
    assert server.calls[wanted.uri] == 1


def test_discard_uri_forgets_every_version_but_open_readers_keep_reading(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    v1 = server.add("/f/x", 100)
    cache.fetch(v1, server.download(v1.uri)).close()
    v2 = server.add("/f/x", 150)
    held = cache.fetch(v2, server.download(v2.uri))
    other = server.add("/f/y", 100)
    cache.fetch(other, server.download(other.uri)).close()
    cache.discard_uri("/f/x")
    assert not cache.contains(v1) and not cache.contains(v2)
    assert cache.contains(other)
    assert read_all(held) == server.files[v2.uri]
    held.close()
    assert cache.lookup(v2) is None
    assert cache.info().bytes_used == 100


def test_discard_during_download_serves_but_does_not_keep(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/x", 1000)
    started, go_on = threading.Event(), threading.Event()

    def download(fileobj):
        started.set()
        assert go_on.wait(10)
        fileobj.write(server.files[key.uri])

    pending = cache.start_fetch(key, download)
    assert started.wait(10)
    cache.discard_uri(key.uri)
    go_on.set()
    with pending.result(timeout=5) as held:
        assert read_all(held) == server.files[key.uri]
    pending.close()
    assert not cache.contains(key)
    assert tmp_files(cache_dir) == []


def test_insert_adopts_local_bytes(cache_dir, server, tmp_path):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/uploaded", 700, digest=True)
    source = tmp_path / "local.bin"
    source.write_bytes(server.files[key.uri])
    cache.insert(key, source)
    assert source.exists()
    with cache.lookup(key) as held:
        assert read_all(held) == server.files[key.uri]
    other = server.add("/f/from-zip", 300)
    cache.insert(other, io.BytesIO(server.files[other.uri]))
    assert cache.contains(other)
    with pytest.raises(XnatServerError):
        cache.insert(CacheKey("/f/bad", 10), io.BytesIO(b"short"))
    assert not cache.contains(CacheKey("/f/bad", 10))


def test_insert_bytes_checks_keeps_open_and_leaves_no_temp(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/member", 900, digest=True)
    with cache.insert_bytes(key, server.files[key.uri]) as held:
        assert read_all(held) == server.files[key.uri]
        assert cache.info().pinned == 1
    again = cache.insert_bytes(key, server.files[key.uri])
    assert read_all(again) == server.files[key.uri]
    again.close()
    wrong = bytearray(server.files[key.uri])
    wrong[0] ^= 1
    bad_key = CacheKey("/f/bad-member", 900, key.digest)
    with pytest.raises(XnatServerError):
        cache.insert_bytes(bad_key, bytes(wrong))
    with pytest.raises(XnatServerError):
        cache.insert_bytes(CacheKey("/f/short", 10), b"short")
    assert not cache.contains(bad_key) and not cache.contains(CacheKey("/f/short", 10))
    assert tmp_files(cache_dir) == []
    assert cache.insert_bytes(server.add("/f/huge", 20_000), server.files["/f/huge"]) is None


def test_two_caches_on_one_folder_inserting_the_same_file_both_serve_it(cache_dir, server):
    """Two processes sharing the folder insert the same series file: the second does not look
    on disk for an entry its index does not know, and renames identical bytes over the first's
    while the first holds it open. Both serve the right bytes, neither evicts what either holds
    open, and once both let go it can be evicted."""
    first, second = ContentCache(cache_dir, 10_000), ContentCache(cache_dir, 10_000)
    key = server.add("/f/shared", 900, digest=True)
    held_first = first.insert_bytes(key, server.files[key.uri])
    held_second = second.insert_bytes(key, server.files[key.uri])
    assert held_first is not None and held_second is not None
    assert read_all(held_first) == read_all(held_second) == server.files[key.uri]
    first.clear()
    second.clear()
    assert first.contains(key) and second.contains(key)
    held_second.close()
    first.clear()
    assert first.contains(key)
    assert read_all(held_first) == server.files[key.uri]
    held_first.close()
    second.clear()
    assert not first.contains(key)
    assert tmp_files(cache_dir) == []


def test_an_entry_cut_short_on_disk_is_dropped_and_fetched_again(cache_dir, server):
    # Entries are not fsynced; after a power loss one may come back short.
    key = server.add("/f/lost", 5000, digest=True)
    ContentCache(cache_dir, 100_000).fetch(key, server.download(key.uri)).close()
    path = cache_dir / "data" / entry_name(key)[:2] / entry_name(key)
    os.truncate(path, 0)
    cache = ContentCache(cache_dir, 100_000)
    assert cache.lookup(key) is None
    with cache.fetch(key, server.download(key.uri)) as held:
        assert read_all(held) == server.files[key.uri]
    assert server.calls[key.uri] == 2


def test_clear_keeps_only_open_entries(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    keys = [server.add(f"/f/{i}", 100) for i in range(3)]
    for key in keys:
        cache.fetch(key, server.download(key.uri)).close()
    held = cache.lookup(keys[1])
    cache.clear()
    assert [cache.contains(k) for k in keys] == [False, True, False]
    held.close()
    cache.clear()
    assert cache.info().entries == 0


def test_leftovers_of_a_crash_are_removed_unless_in_use(cache_dir, server):
    ContentCache(cache_dir, 10_000)
    stale = cache_dir / "tmp" / "deadbeef.123.abcd.part"
    stale.write_bytes(b"half a file")
    busy = cache_dir / "tmp" / "cafe.456.abcd.part"
    busy.write_bytes(b"being written")
    fd = os.open(busy, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process still downloading
    try:
        cache = ContentCache(cache_dir, 10_000)
        assert not stale.exists()
        assert busy.exists()
        assert cache.info().entries == 0
    finally:
        os.close(fd)


def test_a_use_by_another_cache_instance_counts_for_lru(cache_dir, server):
    mine = ContentCache(cache_dir, 300, rescan_interval=3600)
    theirs = ContentCache(cache_dir, 300, rescan_interval=3600)
    a, b, c, d = (server.add(f"/f/{n}", 100) for n in "abcd")
    for key in (a, b, c):
        mine.fetch(key, server.download(key.uri)).close()
    theirs.lookup(a).close()  # mine's index still thinks a is the oldest
    mine.fetch(d, server.download(d.uri)).close()
    assert [mine.contains(k) for k in (a, b, c, d)] == [True, False, True, True]


def test_an_entry_open_in_another_instance_is_not_evicted(cache_dir, server):
    mine = ContentCache(cache_dir, 200)
    theirs = ContentCache(cache_dir, 200)
    a, b, c = (server.add(f"/f/{n}", 100) for n in "abc")
    for key in (a, b):
        mine.fetch(key, server.download(key.uri)).close()
    held = theirs.lookup(a)
    mine.fetch(c, server.download(c.uri)).close()
    assert mine.contains(a) and not mine.contains(b) and mine.contains(c)
    held.close()


def test_closed_cache_fails_queued_downloads(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000, fetch_workers=1)
    slow, queued_key = server.add("/f/slow", 100), server.add("/f/queued", 100)
    release = threading.Event()

    def stuck(fileobj):
        assert release.wait(10)
        fileobj.write(server.files[slow.uri])

    running = cache.start_fetch(slow, stuck)
    queued = cache.start_fetch(queued_key, server.download(queued_key.uri))
    cache.close()
    with pytest.raises(XnatServerError, match="closed"):
        queued.result(timeout=5)
    release.set()
    running.result(timeout=5).close()
    assert queued_key.uri not in server.calls


def test_memory_stays_flat_for_a_large_file(cache_dir):
    size = 48 * 1024 * 1024
    chunk = bytes(range(256)) * 256  # 64 KiB
    key = CacheKey("/f/huge", size, hashlib.md5(chunk * (size // len(chunk))).hexdigest())
    cache = ContentCache(cache_dir, 2 * size)

    def download(fileobj):
        for _ in range(size // len(chunk)):
            fileobj.write(chunk)

    tracemalloc.start()
    try:
        with cache.fetch(key, download) as held:
            assert held.pread(size - 10, 100) == chunk[-10:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


class LruModel:
    """What the cache should hold, in the simplest terms: entries in order of
    use, a count of open handles per entry, and room for ``slots`` entries."""

    def __init__(self, slots: int):
        self.slots = slots
        self.order: list[str] = []
        self.open_count: dict[str, int] = {}

    def use(self, name: str) -> bool:
        """Fetch ``name``; True when it ends up kept in the cache."""
        if name in self.order:
            self.order.remove(name)
            self.order.append(name)
            return True
        while len(self.order) >= self.slots:
            victims = [n for n in self.order if not self.open_count.get(n)]
            if not victims:
                return False
            self.order.remove(victims[0])
        self.order.append(name)
        return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("abcdefg"), st.booleans(), st.booleans()), max_size=25))
def test_eviction_matches_an_lru_model(tmp_path, steps):
    """Each step fetches an entry, maybe keeps it open, maybe closes the oldest open handle."""
    cache_dir = tmp_path / secrets.token_hex(4)
    cache = ContentCache(cache_dir, 400)
    server = Server()
    keys = {n: server.add(f"/f/{n}", 100) for n in "abcdefg"}
    model = LruModel(slots=4)
    handles: list[tuple[str, object]] = []
    for name, keep_open, close_one in steps:
        kept = model.use(name)
        held = cache.fetch(keys[name], server.download(keys[name].uri))
        if keep_open and kept:
            handles.append((name, held))
            model.open_count[name] = model.open_count.get(name, 0) + 1
        else:
            held.close()
        if close_one and handles:
            old_name, old = handles.pop(0)
            old.close()
            model.open_count[old_name] -= 1
        assert sorted(n for n in keys if cache.contains(keys[n])) == sorted(model.order)
        assert cache.info().bytes_used <= 400
    for _, held in handles:
        held.close()
    cache.close()


def test_a_forgotten_handle_is_unpinned_when_collected(cache_dir, server):
    cache = ContentCache(cache_dir, 10_000)
    key = server.add("/f/x", 100)
    held = cache.fetch(key, server.download(key.uri))
    assert cache.info().pinned == 1
    del held
    gc.collect()
    assert cache.info().pinned == 0
    cache.clear()
    assert not cache.contains(key)


def test_parked_bytes_read_back_as_they_were_and_their_file_goes_with_the_last_piece(cache_dir):
    cache = ContentCache(cache_dir, 10_000)
    pieces = {size: body(f"piece {size}", size) for size in (1, 5000, 70_000, 3)}
    with cache.parking() as parking:
        parked = {size: parking.park(data) for size, data in pieces.items()}
        # Nameless: nothing for a crash to leave behind, nothing in the cache's listing.
        assert tmp_files(cache_dir) == []
        assert cache.info().entries == 0
    for size, piece in parked.items():
        assert piece is not None and piece.size == size
        assert read_all(piece) == pieces[size]
        assert piece.pread(size - 1, 100) == pieces[size][-1:]
        assert piece.pread(size, 10) == b"" and piece.pread(-1, 10) == b""
        assert piece.pread_nowait(0, size) == pieces[size]
    assert len(removed_files_open(cache_dir)) == 1
    shared = parked[5000].share()
    for piece in parked.values():
        assert piece is not None
        piece.close()
    assert read_all(shared) == pieces[5000]
    shared.close()
    wait_until(lambda: not removed_files_open(cache_dir), "the parked file to go", timeout=5.0)
    cache.close()


def test_nothing_is_parked_where_the_disk_has_no_room_to_spare(cache_dir, monkeypatch):
    cache = ContentCache(cache_dir, 10_000)
    monkeypatch.setattr(content, "disk_free", lambda _path: content.DISK_RESERVE + 1000)
    with cache.parking() as parking:
        assert parking.park(b"x" * 1001) is None
        piece = parking.park(b"x" * 1000)
        assert piece is not None
        piece.close()
    cache.close()


def test_where_files_cannot_be_made_nameless_parked_bytes_lose_their_name_at_once(cache_dir, monkeypatch):
    cache = ContentCache(cache_dir, 10_000)
    # Without the flag, opening the folder for writing fails as a file system without
    # nameless files answers.
    monkeypatch.setattr(os, "O_TMPFILE", 0)
    with cache.parking() as parking:
        piece = parking.park(b"parked bytes")
        assert piece is not None
        assert tmp_files(cache_dir) == []
        assert len(removed_files_open(cache_dir)) == 1
    assert read_all(piece) == b"parked bytes"
    piece.close()
    wait_until(lambda: not removed_files_open(cache_dir), "the parked file to go", timeout=5.0)
    cache.close()
