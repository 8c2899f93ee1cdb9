"""The uploader's bookkeeping: success, failure, retries, never twice.

A small in-process stand-in for the connection records what it is sent.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from xnatfs.cache.spool import UploadSpool, UploadTarget
from xnatfs.cache.uploader import MAX_RETRY_DELAY, Uploader
from xnatfs.errors import XnatServerError

SERVER = "https://xnat.example.org"


class RecordingConnection:
    """Takes uploads like XnatConnection does, remembering the bodies; can be told to fail."""

    def __init__(self, *, delay: float = 0.0):
        self.files: dict[tuple[str, str], bytes] = {}
        self.imports: list[tuple[str, str, str, bytes]] = []
        self.fail_with: Exception | None = None
        self.delay = delay
        self._lock = threading.Lock()

    def upload_file(self, resource_uri, relpath, fileobj, *, overwrite=True):
        body = fileobj if isinstance(fileobj, bytes) else fileobj.read()
        time.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.files[(resource_uri, relpath)] = body

    def import_dicom_zip(self, project, subject, experiment, fileobj):
        body = fileobj.read()
        time.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.imports.append((project, subject, experiment, body))
        return [f"/data/projects/{project}/subjects/{subject}/experiments/{experiment}"]


def staged(spool: UploadSpool, data: bytes, relpath: str = "a.txt", server: str = SERVER):
    entry = spool.create(
        UploadTarget(kind="file", resource_uri="/data/projects/P/resources/R", relpath=relpath, server=server)
    )
    entry.data_path.write_bytes(data)
    spool.commit(entry)
    return entry


def staged_import(spool: UploadSpool, data: bytes):
    entry = spool.create(UploadTarget(kind="dicom-import", project="P", subject="S", experiment="E", server=SERVER))
    entry.data_path.write_bytes(data)
    spool.commit(entry)
    return entry


def test_push_sends_and_removes(tmp_path):
    spool = UploadSpool(tmp_path)
    conn = RecordingConnection()
    entry = staged(spool, b"hello", "sub/hello.txt")
    Uploader(spool, conn).push(entry)
    assert conn.files == {("/data/projects/P/resources/R", "sub/hello.txt"): b"hello"}
    assert spool.pending() == []
    assert not entry.data_path.exists()


def test_failed_push_keeps_the_data_and_counts_the_attempt(tmp_path):
    spool = UploadSpool(tmp_path)
    conn = RecordingConnection()
    conn.fail_with = XnatServerError("service unavailable", status=503, url=SERVER + "/data/x")
    entry = staged(spool, b"precious")
    uploader = Uploader(spool, conn)
    with pytest.raises(XnatServerError):
        uploader.push(entry)
    assert (entry.state, entry.attempts) == ("failed", 1)
    assert "HTTP 503" in entry.last_error
    [waiting] = UploadSpool(tmp_path).pending()
    assert waiting.data_path.read_bytes() == b"precious"
    conn.fail_with = None
    uploader.push(waiting)
    assert conn.files[("/data/projects/P/resources/R", "a.txt")] == b"precious"
    assert spool.pending() == []


def test_push_pending_goes_oldest_first_and_reports(tmp_path):
    spool = UploadSpool(tmp_path)
    order = []

    class Flaky(RecordingConnection):
        def upload_file(self, resource_uri, relpath, fileobj, *, overwrite=True):
            order.append(relpath)
            if relpath == "bad.txt":
                raise XnatServerError("broken", status=500)
            super().upload_file(resource_uri, relpath, fileobj, overwrite=overwrite)

    for name in ("1.txt", "bad.txt", "3.txt"):
        staged(spool, name.encode(), name)
    staged(spool, b"elsewhere", "other-server.txt", server="https://other.example.org")
    report = Uploader(spool, Flaky()).push_pending(SERVER)
    assert order == ["1.txt", "bad.txt", "3.txt"]
    assert (report.ok, report.failed, report.skipped) == (2, 1, 0)
    assert "broken" in report.errors[0][1]
    assert sorted(e.target.relpath for e in spool.pending()) == ["bad.txt", "other-server.txt"]


def test_push_pending_skips_entries_busy_elsewhere_or_not_due(tmp_path):
    spool = UploadSpool(tmp_path)
    conn = RecordingConnection()
    busy = staged(spool, b"busy", "busy.txt")
    failed = staged(spool, b"failed", "failed.txt")
    spool.record_failure(failed, "earlier failure")
    uploader = Uploader(spool, conn)
    with UploadSpool(tmp_path).claim(busy):
        report = uploader.push_pending(due_only=True)
    assert (report.ok, report.failed, report.skipped) == (0, 0, 2)
    report = uploader.push_pending()
    assert (report.ok, report.skipped) == (2, 0)
    assert spool.pending() == []


def test_a_dicom_import_is_sent_once_even_when_pushed_twice_at_once(tmp_path):
    spool = UploadSpool(tmp_path)
    conn = RecordingConnection(delay=0.2)
    entry = staged_import(spool, b"PK zip")
    uploaders = [Uploader(UploadSpool(tmp_path), conn) for _ in range(2)]
    threads = [threading.Thread(target=u.push, args=(entry,)) for u in uploaders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert conn.imports == [("P", "S", "E", b"PK zip")]
    assert spool.pending() == []


def test_retry_delay_backs_off_with_jitter_and_a_cap(tmp_path):
    spool = UploadSpool(tmp_path)
    uploader = Uploader(spool, RecordingConnection())
    entries = [staged(spool, b"x", f"{i}.txt") for i in range(20)]
    assert uploader.next_retry_delay(entries[0]) == 0.0
    for entry in entries:
        spool.record_failure(entry, "down")
    first = [uploader.next_retry_delay(e) for e in entries]
    assert all(2.0 <= d <= 3.0 for d in first)
    assert len(set(first)) > 10  # spread, not in lock-step
    assert uploader.next_retry_delay(entries[0]) == first[0]
    for _ in range(3):
        spool.record_failure(entries[0], "down")
    assert 16.0 <= uploader.next_retry_delay(entries[0]) <= 24.0
    for _ in range(20):
        spool.record_failure(entries[0], "down")
    assert uploader.next_retry_delay(entries[0]) == MAX_RETRY_DELAY
    assert uploader.retry_at(entries[1]) == entries[1].updated + first[1]


def test_an_entry_discarded_while_its_upload_fails_stays_gone(tmp_path):
    spool = UploadSpool(tmp_path)
    entry = staged(spool, b"removed by rm meanwhile")

    class DiscardedMeanwhile(RecordingConnection):
        def upload_file(self, resource_uri, relpath, fileobj, *, overwrite=True):
            spool.remove(entry)  # what the file system does for rm during the upload
            raise XnatServerError("connection reset")

    with pytest.raises(XnatServerError):
        Uploader(spool, DiscardedMeanwhile()).push(entry)
    assert spool.get(entry.id) is None
    assert os.listdir(tmp_path / "records") == [] and os.listdir(tmp_path / "data") == []
