"""The upload spool: durable staging, crash recovery, failure bookkeeping."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import threading

import pytest

from xnatfs.cache.spool import SpoolEntry, UploadSpool, UploadTarget

SPAWN = multiprocessing.get_context("spawn")
SERVER = "https://xnat.example.org"


def file_target(relpath: str = "report.pdf") -> UploadTarget:
    return UploadTarget(
        kind="file", resource_uri="/data/experiments/XNAT_E00001/resources/QC", relpath=relpath, server=SERVER
    )


def write(entry: SpoolEntry, data: bytes) -> None:
    with open(entry.data_path, "wb") as f:
        f.write(data)


def write_and_die(spool_dir: str, data: bytes, written) -> None:
    """Open an upload, write into it, and wait to be killed before closing it."""
    spool = UploadSpool(spool_dir)
    entry = spool.create(file_target("killed.nii.gz"))
    with open(entry.data_path, "wb") as f:
        f.write(data)
        f.flush()
        written.set()
        signal.pause()


def test_create_commit_pending(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = spool.create(file_target())
    assert entry.state == "open"
    assert entry.data_path.exists() and entry.size == 0
    assert stat.S_IMODE(entry.data_path.stat().st_mode) == 0o600
    for folder in (tmp_path / "spool", tmp_path / "spool" / "data", tmp_path / "spool" / "records"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert spool.pending() == []  # still being written
    write(entry, b"%PDF-1.4 report")
    spool.commit(entry)
    assert entry.state == "pending"
    [listed] = spool.pending()
    assert (listed.id, listed.state, listed.target) == (entry.id, "pending", entry.target)
    assert listed.data_path.read_bytes() == b"%PDF-1.4 report"
    assert listed.size == len(b"%PDF-1.4 report")
    record = tmp_path / "spool" / "records" / f"{entry.id}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_pending_entries_survive_a_restart(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    first = spool.create(file_target("a.csv"))
    write(first, b"a,b\n1,2\n")
    spool.commit(first)
    second = spool.create(
        UploadTarget(kind="dicom-import", project="STUDY01", subject="SUB001", experiment="SUB001_MR3", server=SERVER)
    )
    write(second, b"PK\x03\x04 zip bytes")
    spool.commit(second)
    del spool

    reopened = UploadSpool(tmp_path / "spool")
    entries = reopened.pending()
    assert [e.id for e in entries] == [first.id, second.id]  # oldest first
    assert entries[0].data_path.read_bytes() == b"a,b\n1,2\n"
    assert entries[1].target.kind == "dicom-import"
    assert entries[1].target.experiment == "SUB001_MR3"
    assert reopened.get(second.id).data_path.read_bytes() == b"PK\x03\x04 zip bytes"


def test_an_upload_open_in_a_killed_process_is_kept_but_not_sent(tmp_path):
    written = SPAWN.Event()
    data = b"\x1f\x8b nifti bytes " * 1000
    child = SPAWN.Process(target=write_and_die, args=(str(tmp_path / "spool"), data, written))
    child.start()
    try:
        assert written.wait(20)
        spool = UploadSpool(tmp_path / "spool")
        assert spool.pending() == []  # its writer is alive
        [record] = os.listdir(tmp_path / "spool" / "records")
        assert spool.get(record[: -len(".json")]).state == "open"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    # It may be only the start of the file: never sent on its own, but kept.
    assert spool.pending() == []
    entry = spool.get(record[: -len(".json")])
    assert entry.state == "unclosed"
    assert entry.target.relpath == "killed.nii.gz"
    assert entry.data_path.read_bytes() == data
    assert UploadSpool(tmp_path / "spool").pending() == []
    assert UploadSpool(tmp_path / "spool").get(entry.id).state == "unclosed"


def test_an_upload_left_empty_by_a_killed_process_is_dropped(tmp_path):
    kill_while_writing(tmp_path / "spool", b"")
    spool = UploadSpool(tmp_path / "spool")
    assert spool.pending() == []
    assert os.listdir(tmp_path / "spool" / "records") == []
    assert os.listdir(tmp_path / "spool" / "data") == []


def test_an_open_upload_of_a_live_writer_is_left_alone(tmp_path):
    writer = UploadSpool(tmp_path / "spool")
    entry = writer.create(file_target())
    write(entry, b"half")
    other = UploadSpool(tmp_path / "spool")  # e.g. `xnatfs uploads list` meanwhile
    assert other.pending() == []
    assert other.get(entry.id).state == "open"
    writer.commit(entry)
    assert [e.id for e in other.pending()] == [entry.id]


def test_failures_are_recorded_durably(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = spool.create(file_target())
    write(entry, b"data")
    spool.commit(entry)
    spool.record_failure(entry, "server said no (HTTP 503)")
    spool.record_failure(entry, "connection refused")
    assert (entry.state, entry.attempts, entry.last_error) == ("failed", 2, "connection refused")
    [reloaded] = UploadSpool(tmp_path / "spool").pending()
    assert (reloaded.state, reloaded.attempts, reloaded.last_error) == ("failed", 2, "connection refused")
    assert reloaded.data_path.read_bytes() == b"data"


def test_remove_forgets_entry_and_bytes(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = spool.create(file_target())
    write(entry, b"data")
    spool.commit(entry)
    spool.remove(entry)
    assert spool.pending() == []
    assert spool.get(entry.id) is None
    assert not entry.data_path.exists()
    assert os.listdir(tmp_path / "spool" / "records") == []


def test_credentials_are_never_stored(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = spool.create(
        UploadTarget(
            kind="file",
            resource_uri="/data/projects/P/resources/R",
            relpath="x.txt",
            server="https://alice:s3cret@xnat.example.org/",
        )
    )
    spool.commit(entry)
    assert entry.target.server == "https://xnat.example.org"
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            assert b"s3cret" not in path.read_bytes()
    assert [e.id for e in spool.pending("https://xnat.example.org/")] == [entry.id]
    assert spool.pending("https://other.example.org") == []


def test_orphans_and_unreadable_records(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    good = spool.create(file_target())
    spool.commit(good)
    orphan = tmp_path / "spool" / "data" / "00000000000000000001-deadbeef"
    orphan.write_bytes(b"left by a crash between data and record")
    (tmp_path / "spool" / "records" / "00000000000000000002-cafecafe.json").write_text("{not json")
    reopened = UploadSpool(tmp_path / "spool")
    assert not orphan.exists()
    assert [e.id for e in reopened.pending()] == [good.id]
    assert reopened.get("../../etc/passwd") is None


def test_claim_is_exclusive(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = spool.create(file_target())
    with pytest.raises(ValueError, match="still being written"), spool.claim(entry):
        pass
    spool.commit(entry)
    other = UploadSpool(tmp_path / "spool")
    with spool.claim(entry) as mine:
        assert mine.id == entry.id
        with other.claim(entry, wait=False) as theirs:
            assert theirs is None
    with other.claim(entry, wait=False) as theirs:
        assert theirs.id == entry.id
    spool.remove(entry)
    with other.claim(entry) as gone:
        assert gone is None


def test_record_format_is_plain_json(tmp_path):
    spool = UploadSpool(tmp_path / "spool")
    entry = spool.create(file_target("sub/dir/file.txt"))
    spool.commit(entry)
    record = json.loads((tmp_path / "spool" / "records" / f"{entry.id}.json").read_text())
    assert record["state"] == "pending"
    assert record["target"]["relpath"] == "sub/dir/file.txt"
    with pytest.raises(ValueError):
        UploadTarget(kind="mystery")


def kill_while_writing(spool_dir, data: bytes) -> None:
    """A process writes ``data`` into a new spool entry and is killed before closing it."""
    written = SPAWN.Event()
    child = SPAWN.Process(target=write_and_die, args=(str(spool_dir), data, written))
    child.start()
    try:
        assert written.wait(20)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)


def leave_unclosed(spool_dir, data: bytes) -> SpoolEntry:
    """An entry whose writing process was killed before closing it."""
    kill_while_writing(spool_dir, data)
    [entry] = UploadSpool(spool_dir).unclosed()
    return entry


def test_an_unclosed_upload_is_sent_only_once_released(tmp_path):
    entry = leave_unclosed(tmp_path / "spool", b"start of a file")
    spool = UploadSpool(tmp_path / "spool")
    assert spool.pending() == [] and [e.id for e in spool.unclosed(SERVER)] == [entry.id]
    assert spool.unclosed("https://other.example.org") == []
    assert spool.release(entry) is True
    assert entry.state == "pending"
    assert [e.id for e in spool.pending()] == [entry.id] and spool.unclosed() == []
    assert spool.release(entry) is False  # only unclosed entries are released
    assert spool.get(entry.id).data_path.read_bytes() == b"start of a file"


def test_discard_drops_an_entry_but_not_one_being_written(tmp_path):
    entry = leave_unclosed(tmp_path / "spool", b"abandoned")
    spool = UploadSpool(tmp_path / "spool")
    assert spool.discard(entry) is True
    assert spool.get(entry.id) is None and not entry.data_path.exists()
    assert spool.discard(entry) is False  # gone already
    writing = spool.create(file_target("busy.txt"))
    assert spool.discard(writing) is False
    assert UploadSpool(tmp_path / "spool").discard(writing) is False  # another process's view
    assert spool.get(writing.id).state == "open"
    spool.commit(writing)
    assert spool.discard(writing) is True
    assert os.listdir(tmp_path / "spool" / "records") == []


def test_withdraw_waits_for_a_sender_and_says_whether_it_sent(tmp_path):
    """An rm through the mount withdraws the file's entry: one being sent is waited for,
    and then known to be on the server; one nobody sends is dropped unsent."""
    spool = UploadSpool(tmp_path / "spool")
    being_written = spool.create(file_target("open.txt"))
    assert spool.withdraw(being_written) is True
    assert spool.get(being_written.id) is None and not being_written.data_path.exists()

    waiting = spool.create(file_target("waiting.txt"))
    write(waiting, b"never sent")
    spool.commit(waiting)
    assert spool.withdraw(waiting) is True
    assert spool.get(waiting.id) is None

    sent = spool.create(file_target("sent.txt"))
    write(sent, b"sent by another process")
    spool.commit(sent)
    sender = UploadSpool(tmp_path / "spool")  # another process's view
    answers = []
    with sender.claim(sent) as claimed:
        thread = threading.Thread(target=lambda: answers.append(spool.withdraw(sent)))
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), "withdraw did not wait for the upload under way"
        sender.remove(claimed)  # the server confirmed it
    thread.join(5)
    assert answers == [False]
    assert os.listdir(tmp_path / "spool" / "records") == []
