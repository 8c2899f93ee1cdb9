"""When spooled uploads are made durable, and why a power loss never causes a wrong upload.

An upload on its way is not fsynced (close waits for it); one that failed is
sealed with the size and MD5 of its bytes. A power loss is played here by
editing what a restarted machine could find on disk: a sealed record beside
bytes that were lost or cut short, or an unsealed record from an earlier boot.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from xnatfs.cache.spool import UploadSpool, UploadTarget, current_boot_id
from xnatfs.cache.uploader import Uploader
from xnatfs.client.connection import XnatConnection
from xnatfs.errors import XnatError, XnatServerError
from xnatfs.fs.writing import Writer

EARLIER_BOOT = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def conn(fake_xnat):
    connection = XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password, retries=0)
    yield connection
    connection.close()


@pytest.fixture
def target(fake_xnat, conn) -> UploadTarget:
    experiment = next(e for e in conn.list_experiments("STUDY01") if e.label == "SUB002_MR1")
    resource = next(r.uri for r in conn.get_experiment_contents(experiment.id).resources if r.label == "QC")
    return UploadTarget(kind="file", resource_uri=resource, relpath="derived/durable.bin", server=fake_xnat.url)


def stage(spool: UploadSpool, target: UploadTarget, data: bytes):
    entry = spool.create(target)
    entry.data_path.write_bytes(data)
    spool.commit(entry)
    return entry


def record_of(spool_dir: Path, entry_id: str) -> dict:
    return json.loads((spool_dir / "records" / f"{entry_id}.json").read_text())


def rewrite_record(spool_dir: Path, entry_id: str, change) -> None:
    path = spool_dir / "records" / f"{entry_id}.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def on_server(conn, target: UploadTarget) -> bytes | None:
    for remote in conn.list_files(target.resource_uri):
        if remote.path == target.relpath:
            sink = io.BytesIO()
            conn.download(remote.uri, sink)
            return sink.getvalue()
    return None


@contextmanager
def every_answer_503(fake_xnat):
    fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
    try:
        yield
    finally:
        fake_xnat.set_faults()


def fail_once(fake_xnat, uploader: Uploader, entry) -> None:
    with every_answer_503(fake_xnat), pytest.raises(XnatServerError):
        uploader.push(entry)


def test_an_upload_on_its_way_is_not_sealed(fake_xnat, conn, target, tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(spool, target, b"on its way")
    record = record_of(tmp_path / "spool", entry.id)
    assert (record["state"], record["data_md5"], record["boot_id"]) == ("pending", "", current_boot_id())
    fake_xnat.reset_counts()
    Uploader(spool, conn).push(entry)
    assert fake_xnat.count(method="PUT") == 1
    assert on_server(conn, target) == b"on its way"
    assert os.listdir(tmp_path / "spool" / "records") == [] and os.listdir(tmp_path / "spool" / "data") == []


def test_a_failed_upload_is_sealed_with_the_size_and_md5_of_its_bytes(fake_xnat, conn, target, tmp_path):
    body = os.urandom(300_000)
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(spool, target, body)
    fail_once(fake_xnat, Uploader(spool, conn), entry)
    record = record_of(tmp_path / "spool", entry.id)
    assert record["state"] == "failed" and record["attempts"] == 1
    assert (record["data_size"], record["data_md5"]) == (len(body), hashlib.md5(body).hexdigest())
    [waiting] = UploadSpool(tmp_path / "spool").pending()
    assert waiting.sealed
    assert Uploader(spool, conn).push_pending().ok == 1
    assert on_server(conn, target) == body


@pytest.mark.parametrize("damage", ["cut short", "overwritten", "grown"])
def test_bytes_that_changed_after_sealing_are_never_sent(fake_xnat, conn, target, tmp_path, caplog, damage):
    body = os.urandom(200_000)
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(spool, target, body)
    fail_once(fake_xnat, Uploader(spool, conn), entry)
    # What a power loss can leave behind: the sealed record, bytes that are not the ones it describes.
    if damage == "cut short":
        os.truncate(entry.data_path, 4096)
    elif damage == "overwritten":
        entry.data_path.write_bytes(bytes(len(body)))
    else:
        with open(entry.data_path, "ab") as data:
            data.write(b"tail")
    damaged = entry.data_path.read_bytes()
    fake_xnat.reset_counts()
    restarted = UploadSpool(tmp_path / "spool")
    uploader = Uploader(restarted, conn)
    report = uploader.push_pending()
    assert (report.ok, report.failed) == (0, 1)
    with pytest.raises(XnatError, match="not the ones recorded"):
        uploader.push(restarted.get(entry.id))
    assert fake_xnat.count(method="PUT") == 0
    assert on_server(conn, target) is None
    [kept] = restarted.pending()
    assert kept.state == "failed" and "not the ones recorded" in kept.last_error
    assert kept.data_path.read_bytes() == damaged
    assert any("not sent" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_an_unsealed_record_from_an_earlier_boot_is_set_aside(fake_xnat, conn, target, tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(spool, target, b"maybe lost in a power cut")
    rewrite_record(tmp_path / "spool", entry.id, lambda r: r.update(boot_id=EARLIER_BOOT))
    fake_xnat.reset_counts()
    restarted = UploadSpool(tmp_path / "spool")
    assert Uploader(restarted, conn).push_pending().ok == 0
    assert fake_xnat.count(method="PUT") == 0
    [aside] = restarted.unclosed()
    assert aside.id == entry.id and aside.sealed
    # The user may still send it (`xnatfs uploads retry --include-unclosed`).
    assert restarted.release(aside)
    assert Uploader(restarted, conn).push_pending().ok == 1
    assert on_server(conn, target) == b"maybe lost in a power cut"


def test_an_unsealed_record_from_an_earlier_boot_pushed_directly_is_refused(fake_xnat, conn, target, tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = stage(spool, target, b"unvouched")
    rewrite_record(tmp_path / "spool", entry.id, lambda r: r.update(boot_id=EARLIER_BOOT))
    fake_xnat.reset_counts()
    restarted = UploadSpool(tmp_path / "spool")
    with pytest.raises(XnatError, match="machine restarted"):
        Uploader(restarted, conn).push(restarted.get(entry.id))
    restarted.seal(restarted.get(entry.id))  # nobody can vouch for them by sealing either
    assert fake_xnat.count(method="PUT") == 0
    assert not restarted.get(entry.id).sealed
    assert [e.id for e in restarted.unclosed()] == [entry.id]


def test_an_unsealed_record_of_this_boot_is_sent_after_its_process_stopped(fake_xnat, conn, target, tmp_path):
    # A process killed during the upload: the kernel still holds its bytes.
    stage(UploadSpool(tmp_path / "spool"), target, b"killed mid-upload")
    restarted = UploadSpool(tmp_path / "spool")
    assert Uploader(restarted, conn).push_pending().ok == 1
    assert on_server(conn, target) == b"killed mid-upload"


def test_records_written_before_sealing_existed_are_still_sent(fake_xnat, conn, target, tmp_path):
    entry = stage(UploadSpool(tmp_path / "spool"), target, b"from an older version")

    def older_format(record: dict) -> None:
        for key in ("boot_id", "data_size", "data_md5"):
            del record[key]

    rewrite_record(tmp_path / "spool", entry.id, older_format)
    restarted = UploadSpool(tmp_path / "spool")
    assert [e.id for e in restarted.pending()] == [entry.id]
    assert Uploader(restarted, conn).push_pending().ok == 1
    assert on_server(conn, target) == b"from an older version"


def test_a_failed_upload_through_the_writer_is_sealed_before_it_returns(fake_xnat, conn, target, tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    writer = Writer(spool, Uploader(spool, conn))
    local = writer.stage(target, target.resource_uri, target.relpath)
    body = os.urandom(150_000)
    for offset in range(0, len(body), 65536):
        writer.write(local, offset, body[offset : offset + 65536])
    with every_answer_503(fake_xnat), pytest.raises(XnatServerError):
        writer.upload(local)
    assert local.state == "failed"
    record = record_of(tmp_path / "spool", local.entry.id)
    assert (record["data_size"], record["data_md5"]) == (len(body), hashlib.md5(body).hexdigest())
    assert writer.upload(local) is True
    assert on_server(conn, target) == body
    local.close()


def test_a_version_whose_upload_may_have_been_carried_out_is_remembered(fake_xnat, conn, target, tmp_path):
    # A 5xx may come after the change was made; a 4xx refusal, or no server at all, made none.
    spool = UploadSpool(tmp_path / "spool")
    writer = Writer(spool, Uploader(spool, conn))
    local = writer.stage(target, target.resource_uri, target.relpath)
    writer.write(local, 0, b"version one")
    with every_answer_503(fake_xnat), pytest.raises(XnatServerError):
        writer.upload(local)
    assert local.doubted == {hashlib.md5(b"version one").hexdigest()}
    writer.write(local, 0, b"version two")
    fake_xnat.set_faults(error_rate=1.0, error_statuses=(400,), methods=("PUT",))
    try:
        with pytest.raises(XnatError):
            writer.upload(local)
    finally:
        fake_xnat.set_faults()
    writer.write(local, 0, b"version 3!!")
    fake_xnat.stop()
    try:
        with pytest.raises(XnatError):
            writer.upload(local)
    finally:
        fake_xnat.start()
    assert local.doubted == {hashlib.md5(b"version one").hexdigest()}
    local.close()


def test_an_upload_answered_only_when_sent_again_is_remembered_too(fake_xnat, target, tmp_path):
    # The first attempt reached the server and its answer was lost: the close succeeds, but a
    # server behind a proxy may carry that attempt out later still, after a newer version.
    spool = UploadSpool(tmp_path / "spool")
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password, retries=2) as retrying:
        writer = Writer(spool, Uploader(spool, retrying))
        local = writer.stage(target, target.resource_uri, target.relpath)
        writer.write(local, 0, b"sent twice")
        # Seed 1: the first PUT's answer is cut, the second goes through.
        fake_xnat.set_faults(drop_rate=0.5, seed=1, methods=("PUT",))
        try:
            assert writer.upload(local) is True
        finally:
            fake_xnat.set_faults()
    assert [m for m, t, _s in fake_xnat.requests if m == "PUT" and target.relpath in t] == ["PUT", "PUT"]
    digest = hashlib.md5(b"sent twice").hexdigest()
    assert (local.doubted, local.sent_md5) == ({digest}, digest)
    local.close()
