"""The content cache shared by several processes on one folder."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

from xnatfs.cache.content import CacheKey, ContentCache

SPAWN = multiprocessing.get_context("spawn")
SIZE = 200_000


def payload(uri: str) -> bytes:
    block = hashlib.sha256(uri.encode()).digest()
    return (block * (SIZE // len(block) + 1))[:SIZE]


def key_for(uri: str) -> CacheKey:
    return CacheKey(uri, SIZE, hashlib.md5(payload(uri)).hexdigest())


def slow_download(uri: str, log: Path, pause: float):
    """A download that records itself in ``log`` and takes a while."""

    def run(fileobj):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        data = payload(uri)
        for start in range(0, SIZE, 20_000):
            fileobj.write(data[start : start + 20_000])
            time.sleep(pause)

    return run


def fetch_in_child(cache_dir: str, uri: str, log: str, barrier, results) -> None:
    cache = ContentCache(cache_dir, 10_000_000)
    barrier.wait(20)
    with cache.fetch(key_for(uri), slow_download(uri, Path(log), 0.03)) as held:
        results.put(held.pread(0, SIZE) == payload(uri))


def pin_in_child(cache_dir: str, uri: str, pinned, release) -> None:
    cache = ContentCache(cache_dir, 10_000_000)
    held = cache.lookup(key_for(uri))
    pinned.set()
    release.wait(20)
    held.close()


def die_mid_download(cache_dir: str, uri: str, log: str, started) -> None:
    cache = ContentCache(cache_dir, 10_000_000)

    def hang(fileobj):
        fileobj.write(payload(uri)[:1000])
        started.set()
        time.sleep(60)

    cache.fetch(key_for(uri), hang)


def test_two_processes_share_one_download(tmp_path):
    uri = "/data/experiments/E1/scans/1/resources/DICOM/files/a.dcm"
    log = tmp_path / "downloads.log"
    barrier = SPAWN.Barrier(2)
    results = SPAWN.Queue()
    children = [
        SPAWN.Process(target=fetch_in_child, args=(str(tmp_path / "cache"), uri, str(log), barrier, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0]
    assert [results.get(timeout=5), results.get(timeout=5)] == [True, True]
    assert len(log.read_text().splitlines()) == 1


def test_entry_open_in_another_process_survives_eviction(tmp_path):
    cache_dir = tmp_path / "cache"
    cache = ContentCache(cache_dir, 2 * SIZE)
    first, second, third = (f"/f/{n}" for n in ("first", "second", "third"))
    log = tmp_path / "downloads.log"
    for uri in (first, second):
        cache.fetch(key_for(uri), slow_download(uri, log, 0)).close()
    pinned, release = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=pin_in_child, args=(str(cache_dir), first, pinned, release))
    child.start()
    try:
        assert pinned.wait(20)
        cache.fetch(key_for(third), slow_download(third, log, 0)).close()
        assert cache.contains(key_for(first))  # oldest, but open elsewhere
        assert not cache.contains(key_for(second))
        assert cache.contains(key_for(third))
    finally:
        release.set()
        child.join(20)
    assert child.exitcode == 0
    cache.clear()
    assert cache.info().entries == 0


def test_a_killed_downloader_neither_blocks_others_nor_leaves_a_complete_entry(tmp_path):
    cache_dir = tmp_path / "cache"
    uri = "/f/interrupted"
    log = tmp_path / "downloads.log"
    started = SPAWN.Event()
    child = SPAWN.Process(target=die_mid_download, args=(str(cache_dir), uri, str(log), started))
    child.start()
    assert started.wait(20)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert len(os.listdir(cache_dir / "tmp")) == 1  # the partial file
    cache = ContentCache(cache_dir, 10_000_000)  # cleans up what the dead left
    assert os.listdir(cache_dir / "tmp") == []
    assert not cache.contains(key_for(uri))
    with cache.fetch(key_for(uri), slow_download(uri, log, 0)) as held:
        assert held.pread(0, SIZE) == payload(uri)
