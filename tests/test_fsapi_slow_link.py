"""A slow link that keeps moving: a request waiting for a slow answer is not given up while it comes.

Every request is answered within ``timeout`` seconds of the server making
no progress (docs/SEMANTICS.md, section 4). A request may wait for bytes a
transfer it did not start brings: a large file another reader is
downloading, a file of a series zip under way. Here the fake server sends
bodies slowly, so those transfers take several times the timeout while
bytes keep coming; the waiting reader must get its bytes, not EIO. So must
a listing that takes several timeouts to arrive. The
mount talks to the fake server through a relay that throttles answers.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile

import requests

from fsapi import context
from test_reliability_common import Relay

SESSION = "STUDY01/SUB001/SUB001_MR1"
TIMEOUT = 1.5
# Each transfer below takes about this many times the timeout, and the
# client sees its bytes a MiB at a time: 8 MiB make each MiB take a
# fraction of the timeout.
SLOWNESS = 3
SIZE = 8 << 20


def throttled(server, transfer_bytes: int, rewrite=None) -> Relay:
    """A relay to ``server`` slow enough that ``transfer_bytes`` take SLOWNESS timeouts."""
    relay = Relay(server.url, throttle=int(transfer_bytes / (SLOWNESS * TIMEOUT)), rewrite=rewrite)
    relay.username, relay.password = server.username, server.password
    return relay


def test_a_reader_waiting_for_the_end_of_a_download_another_started_waits_while_it_moves(fake_xnat, run_fs):
    data = os.urandom(SIZE)
    staged = io.BytesIO(data)
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", staged, digest=hashlib.md5(data).hexdigest())
    path = f"{SESSION}/RESOURCES/RAW/big.bin"
    tail = 64 << 10

    async def body(fs):
        first = await fs.ops.open(await fs.inode(path), os.O_RDONLY, context())
        second = await fs.ops.open(await fs.inode(path), os.O_RDONLY, context())
        try:
            # The first reader starts the download; the second waits for its last bytes and their check.
            assert await fs.ops.read(first.fh, 0, 4096) == data[:4096]
            started = time.monotonic()
            assert await fs.ops.read(second.fh, len(data) - tail, tail) == data[-tail:]
            assert time.monotonic() - started > TIMEOUT, "the wait was not longer than the timeout: nothing tested"
        finally:
            await fs.ops.release(first.fh)
            await fs.ops.release(second.fh)

    with throttled(fake_xnat, len(data)) as relay:
        run_fs(body, server=relay, timeout=TIMEOUT, large_file_size=256 << 10)


def test_a_reader_waiting_for_a_file_late_in_a_series_zip_waits_while_the_zip_moves(fake_xnat, run_fs):
    for number in range(SIZE >> 20):
        fake_xnat.store.put_file("XNAT_E00001", "DICOM", f"extra-{number}.dcm", os.urandom(1 << 20), scan_id="2")
    scan_files = "/data/experiments/XNAT_E00001/scans/2/resources/DICOM/files"
    answer = requests.get(
        f"{fake_xnat.url}{scan_files}", params={"format": "zip"}, auth=(fake_xnat.username, fake_xnat.password)
    )
    answer.raise_for_status()
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        last = archive.infolist()[-1]
        expected = archive.read(last)
    name = last.filename.rsplit("/", 1)[-1]

    async def body(fs):
        folder = f"{SESSION}/SCANS/2/DICOM"
        assert name in await fs.listdir(folder)
        started = time.monotonic()
        assert await fs.read(f"{folder}/{name}") == expected
        assert time.monotonic() - started > TIMEOUT, "the wait was not longer than the timeout: nothing tested"

    with throttled(fake_xnat, len(answer.content)) as relay:
        run_fs(body, server=relay, timeout=TIMEOUT)
    alone = [target for method, target, _ in fake_xnat.requests if method == "GET" and f"/files/{name}" in target]
    assert alone == [], "the file was fetched by itself, not from the series zip"


def test_a_listing_that_takes_several_timeouts_to_arrive_is_read_while_it_comes(fake_xnat, run_fs):
    padding = 512 << 10

    def padded(method, path, status, headers, body):
        # Whitespace after the JSON: a projects listing as large as a big site's.
        if method == "GET" and path.split("?")[0] == "/data/projects":
            body += b" " * padding
        return status, headers, body

    async def body(fs):
        started = time.monotonic()
        assert "STUDY01" in await fs.listdir("")
        assert time.monotonic() - started > TIMEOUT, "the listing came faster than the timeout: nothing tested"

    with throttled(fake_xnat, padding, rewrite=padded) as relay:
        run_fs(body, server=relay, timeout=TIMEOUT)
