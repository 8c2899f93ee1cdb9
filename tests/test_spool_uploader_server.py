"""The cache layer against the fake XNAT through the real client: uploads
from the spool, a DICOM import sent once, downloads into the content cache."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import zipfile

import pytest
import trio

from xnatfs.cache import CacheKey, ContentCache, Uploader, UploadSpool, UploadTarget
from xnatfs.cache.uploader import HashedBody, UploadRetries
from xnatfs.client.connection import XnatConnection
from xnatfs.errors import XnatError, XnatNotFound, XnatServerError, is_permanent_refusal
from xnatfs.fake.dicomgen import SeriesSpec, write_session


@pytest.fixture
def conn(fake_xnat):
    connection = XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password, retries=0)
    yield connection
    connection.close()


def qc_resource(conn) -> str:
    experiment = next(e for e in conn.list_experiments("STUDY01") if e.label == "SUB002_MR1")
    contents = conn.get_experiment_contents(experiment.id)
    return next(r.uri for r in contents.resources if r.label == "QC")


def stage(spool: UploadSpool, target: UploadTarget, data: bytes):
    entry = spool.create(target)
    entry.data_path.write_bytes(data)
    spool.commit(entry)
    return entry


def test_spooled_file_reaches_the_server_and_can_be_cached_as_sent(fake_xnat, conn, tmp_path):
    resource = qc_resource(conn)
    spool = UploadSpool(tmp_path / "spool")
    body = b"subject,snr\nSUB002,41.5\n" * 100
    entry = stage(
        spool, UploadTarget(kind="file", resource_uri=resource, relpath="derived/snr.csv", server=fake_xnat.url), body
    )
    Uploader(spool, conn).push(entry)
    assert spool.pending() == []

    remote = next(f for f in conn.list_files(resource) if f.path == "derived/snr.csv")
    assert remote.size == len(body)
    key = CacheKey(remote.uri, remote.size, remote.digest)
    cache = ContentCache(tmp_path / "cache", 1 << 20)
    cache.insert(key, io.BytesIO(body))  # what the mount does after an upload
    fake_xnat.reset_counts()
    with cache.fetch(key, lambda f: conn.download(remote.uri, f)) as held:
        assert held.pread(0, len(body)) == body
    assert fake_xnat.count(method="GET") == 0


def test_a_refused_upload_stays_in_the_spool_until_the_server_takes_it(fake_xnat, conn, tmp_path):
    resource = qc_resource(conn)
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(
        spool,
        UploadTarget(kind="file", resource_uri=resource, relpath="late.txt", server=fake_xnat.url),
        b"written while the server was down",
    )
    uploader = Uploader(spool, conn)
    fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
    with pytest.raises(XnatServerError):
        uploader.push(entry)
    fake_xnat.set_faults()
    [waiting] = UploadSpool(tmp_path / "spool").pending(fake_xnat.url)
    assert (waiting.state, waiting.attempts) == ("failed", 1)
    assert "503" in waiting.last_error
    assert "late.txt" not in [f.path for f in conn.list_files(resource)]

    report = uploader.push_pending(fake_xnat.url)
    assert (report.ok, report.failed) == (1, 0)
    assert "late.txt" in [f.path for f in conn.list_files(resource)]


def test_a_spooled_dicom_zip_is_imported_once(fake_xnat, conn, tmp_path):
    files = write_session(
        tmp_path / "dicom",
        patient_id="SUB003",
        patient_name="SUB003",
        study_date="20240301",
        series=[SeriesSpec(1, "Localizer", "localizer")],
        seed=7,
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in files[1]:
            archive.write(path, f"1/{path.name}")
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(
        spool,
        UploadTarget(
            kind="dicom-import", project="STUDY01", subject="SUB003", experiment="SUB003_MR2", server=fake_xnat.url
        ),
        buffer.getvalue(),
    )
    fake_xnat.reset_counts()
    uploaders = [Uploader(UploadSpool(tmp_path / "spool"), conn) for _ in range(2)]
    threads = [threading.Thread(target=u.push, args=(entry,)) for u in uploaders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fake_xnat.count(method="POST", path_prefix="/data/services/import") == 1
    assert spool.pending() == []
    experiment = next(e for e in conn.list_experiments("STUDY01", "SUB003") if e.label == "SUB003_MR2")
    imported = conn.list_files(f"/data/experiments/{experiment.id}", all_levels=True)
    assert len(imported) == len(files[1])


def test_concurrent_readers_cause_one_download_from_the_server(fake_xnat, conn, tmp_path):
    resource = qc_resource(conn)
    remote = next(f for f in conn.list_files(resource) if f.path.endswith(".pdf"))
    key = CacheKey(remote.uri, remote.size, remote.digest)
    assert key.digest  # so the MD5 check is exercised
    cache = ContentCache(tmp_path / "cache", 1 << 20)
    fake_xnat.reset_counts()
    results = []

    def read():
        with cache.fetch(key, lambda f: conn.download(remote.uri, f)) as held:
            results.append(held.pread(0, held.size))

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and len(set(results)) == 1
    assert results[0].startswith(b"%PDF")
    assert fake_xnat.count(method="GET", path_prefix=remote.uri) == 1


@pytest.mark.parametrize("limit", [0, 1 << 20], ids=["streamed", "from memory"])
def test_a_file_is_sent_whole_whether_streamed_or_from_memory(fake_xnat, conn, tmp_path, monkeypatch, limit):
    monkeypatch.setattr("xnatfs.cache.uploader.SEND_FROM_MEMORY_LIMIT", limit)
    resource = qc_resource(conn)
    spool = UploadSpool(tmp_path / "spool")
    body = bytes(range(256)) * 1000
    entry = stage(
        spool, UploadTarget(kind="file", resource_uri=resource, relpath="both/ways.bin", server=fake_xnat.url), body
    )
    digest = Uploader(spool, conn).push(entry)
    remote = next(f for f in conn.list_files(resource) if f.path == "both/ways.bin")
    landed = io.BytesIO()
    conn.download(remote.uri, landed)
    assert landed.getvalue() == body
    # What the mount lends a written file's time by (docs/LAYOUT.md, "Times").
    assert digest == remote.digest == hashlib.md5(body).hexdigest()


def test_a_body_sent_again_from_the_start_is_hashed_once_and_one_resumed_elsewhere_not_at_all(tmp_path):
    staged = tmp_path / "staged.bin"
    staged.write_bytes(b"0123456789" * 10)
    with open(staged, "rb") as source:
        body = HashedBody(source)
        body.read(40)
        body.seek(0)  # the request sent again
        while body.read(16):
            pass
        assert body.hexdigest() == hashlib.md5(staged.read_bytes()).hexdigest()
        body.seek(50)
        body.read()
        assert body.hexdigest() == ""


def test_a_client_error_leaves_the_upload_refused_and_it_is_not_sent_again(fake_xnat, conn, tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    gone = "/data/experiments/XNAT_E99999/resources/QC"  # no such experiment: 404
    entry = stage(
        spool,
        UploadTarget(kind="file", resource_uri=gone, relpath="lost.txt", server=fake_xnat.url),
        b"for a session deleted meanwhile",
    )
    uploader = Uploader(spool, conn)
    with pytest.raises(XnatNotFound):
        uploader.push(entry)
    assert entry.state == "refused"
    reopened = UploadSpool(tmp_path / "spool")
    assert reopened.pending(fake_xnat.url) == []
    [refused] = reopened.refused(fake_xnat.url)
    assert (refused.id, refused.attempts, refused.sealed) == (entry.id, 1, True)
    assert "404" in refused.last_error

    fake_xnat.reset_counts()
    report = uploader.push_pending(fake_xnat.url)
    assert (report.ok, report.failed, report.skipped) == (0, 0, 0)
    assert fake_xnat.count(method="PUT") == 0
    # A user's release makes it an ordinary pending upload again.
    assert reopened.release(refused)
    assert [e.id for e in reopened.pending(fake_xnat.url)] == [entry.id]


@pytest.mark.parametrize("status", [401, 408, 409, 423, 429, 500, 503])
def test_passing_errors_are_not_permanent(status):
    assert not is_permanent_refusal(XnatError("x", status=status))


@pytest.mark.parametrize("status", [400, 403, 404, 405, 413, 417, 422])
def test_other_client_errors_are_permanent(status):
    assert is_permanent_refusal(XnatError("x", status=status))
    assert not is_permanent_refusal(XnatError("unreachable"))


@pytest.mark.parametrize("failures", [0, 3], ids=["new", "inside its back-off"])
def test_the_retry_service_sends_what_is_pending_on_its_own_and_reports_each_round(fake_xnat, conn, tmp_path, failures):
    """Its first round sends every pending upload, even one inside the back-off earlier failures
    left (8 s and more after three): a new mount is what a user starts to have them sent."""
    resource = qc_resource(conn)
    spool = UploadSpool(tmp_path / "spool")
    body = b"retried in the background\n"
    target = UploadTarget(kind="file", resource_uri=resource, relpath="retried.txt", server=fake_xnat.url)
    entry = stage(spool, target, body)
    for _ in range(failures):
        spool.record_failure(entry, "server error (HTTP 503)")
    uploader = Uploader(spool, conn)
    if failures:
        assert uploader.retry_at(spool.pending()[0]) > time.time() + 5
    rounds = []

    async def after_round() -> None:
        rounds.append(len(spool.pending(fake_xnat.url)))

    async def main() -> None:
        retries = UploadRetries(
            uploader, fake_xnat.url, timeout=10.0, limiter=trio.CapacityLimiter(2), after_round=after_round
        )
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(retries.run)
                while not rounds:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert rounds == [0]
    assert spool.pending() == []
    remote = next(f for f in conn.list_files(resource) if f.path == "retried.txt")
    assert remote.size == len(body)
