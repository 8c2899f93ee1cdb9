"""The content cache names the downloads it is running, with their progress (for `xnatfs status`)."""

from __future__ import annotations

import threading

from xnatfs.cache.content import CacheKey, ContentCache


def test_running_download_is_listed_with_its_progress(tmp_path):
    cache = ContentCache(tmp_path / "cache", 1 << 20)
    data = bytes(range(256)) * 400
    key = CacheKey("http://x/data/files/big.bin", len(data))
    half_written, go_on = threading.Event(), threading.Event()

    def download(fileobj):
        fileobj.write(data[:40_000])
        half_written.set()
        assert go_on.wait(10)
        fileobj.write(data[40_000:])

    try:
        assert cache.downloads() == []
        pending = cache.start_fetch(key, download)
        assert half_written.wait(10)
        assert cache.downloads() == [(key.uri, 40_000, len(data))]
        go_on.set()
        with pending.result(timeout=10):
            pass
        pending.close()
        assert cache.downloads() == []
    finally:
        go_on.set()
        cache.close()
