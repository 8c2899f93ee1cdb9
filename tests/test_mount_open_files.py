"""An open descriptor refers to the file, not to its name (as on a disk).

Whatever a descriptor writes before its last close reaches the server under
the name the file has at that close, exactly once: renames, renames over an
open file, unlinks and pending uploads in the spool must not divert or lose it.
"""

from __future__ import annotations

import errno
import io
import os
import time

import pytest

from mountutil import mounted
from xnatfs.cache.spool import UploadSpool
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

QC = "/data/experiments/XNAT_E00001/resources/QC"
QC_PATH = ("STUDY01", "SUB001", "SUB001_MR1", "RESOURCES", "QC")


def server_files(server) -> dict[str, bytes]:
    found = {}
    with XnatConnection(server.url, "admin", "admin") as conn:
        for remote in conn.list_files(QC):
            buffer = io.BytesIO()
            conn.download(remote.uri, buffer)
            found[remote.path] = buffer.getvalue()
    return found


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def no_retries(tmp_path) -> tuple[str, str]:
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nretries = 0\n")
    return ("--config", str(config))


def uploads_of(server, name: str) -> int:
    """Successful PUTs of ``name`` into QC so far."""
    return sum(
        1
        for method, target, status in server.requests
        if method == "PUT" and status < 300 and target.split("?")[0] == f"{QC}/files/{name}"
    )


def test_writes_after_a_rename_reach_the_new_name(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        fd = os.open(qc / "a.txt", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"first")
            os.rename(qc / "a.txt", qc / "b.txt")
            os.write(fd, b"+more")
        finally:
            os.close(fd)
        on_server = server_files(fake_xnat)
        assert on_server.get("b.txt") == b"first+more"
        assert "a.txt" not in on_server
        assert (qc / "b.txt").read_bytes() == b"first+more"
        assert not (qc / "a.txt").exists()
        assert uploads_of(fake_xnat, "b.txt") == 1


def test_writes_after_renaming_a_server_file_open_for_writing(fake_xnat, tmp_path):
    fake_xnat.store.put_file("XNAT_E00001", "QC", "old.txt", b"0123456789")
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        with open(qc / "old.txt", "r+b") as handle:
            handle.write(b"AB")
            handle.flush()
            os.rename(qc / "old.txt", qc / "new.txt")
            handle.seek(8)
            handle.write(b"YZ")
        on_server = server_files(fake_xnat)
        assert on_server.get("new.txt") == b"AB234567YZ"
        assert "old.txt" not in on_server
        assert (qc / "new.txt").read_bytes() == b"AB234567YZ"
        assert sorted(n for n in os.listdir(qc) if n.endswith(".txt")) == ["new.txt"]


def test_a_file_renamed_while_being_rewritten_leaves_its_old_name_until_its_close(fake_xnat, tmp_path):
    """The server keeps the last closed version under the old name while the file is
    open with writes not sent (see docs/SEMANTICS.md, open files), and the close removes it,
    unless someone else has put a file there since: that one is theirs, shown as usual."""
    fake_xnat.store.put_file("XNAT_E00001", "QC", "one.txt", b"one, as it was")
    fake_xnat.store.put_file("XNAT_E00001", "QC", "two.txt", b"two, as it was")
    with mounted(fake_xnat.url, tmp_path, ttl=1) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        with open(qc / "one.txt", "r+b") as one, open(qc / "two.txt", "r+b") as two:
            one.write(b"ONE")
            two.write(b"TWO")
            one.flush()
            two.flush()
            os.rename(qc / "one.txt", qc / "one-new.txt")
            os.rename(qc / "two.txt", qc / "two-new.txt")
            on_server = server_files(fake_xnat)
            assert (on_server.get("one.txt"), on_server.get("two.txt")) == (b"one, as it was", b"two, as it was")
            assert "one-new.txt" not in on_server and "two-new.txt" not in on_server
            assert sorted(n for n in os.listdir(qc) if n.endswith(".txt")) == ["one-new.txt", "two-new.txt"]
            fake_xnat.store.put_file("XNAT_E00001", "QC", "two.txt", b"someone else's two")
            assert wait_until(lambda: (qc / "two.txt").exists()), "someone else's file is not shown"
            assert not (qc / "one.txt").exists()
        on_server = server_files(fake_xnat)
        assert on_server.get("one-new.txt") == b"ONE, as it was"
        assert on_server.get("two-new.txt") == b"TWO, as it was"
        assert "one.txt" not in on_server
        assert on_server.get("two.txt") == b"someone else's two"
        assert wait_until(lambda: (qc / "two.txt").exists()), "someone else's file is not shown"
        assert (qc / "two.txt").read_bytes() == b"someone else's two"
        assert not (qc / "one.txt").exists()


def test_a_file_renamed_over_keeps_its_descriptors_writes_local(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        (qc / "a.txt").write_bytes(b"from a")
        fd = os.open(qc / "b.txt", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"from b")
            os.rename(qc / "a.txt", qc / "b.txt")
            os.write(fd, b", overwritten")
            assert os.pread(fd, 100, 0) == b"from b, overwritten"
        finally:
            os.close(fd)
        on_server = server_files(fake_xnat)
        assert on_server.get("b.txt") == b"from a"
        assert "a.txt" not in on_server
        assert (qc / "b.txt").read_bytes() == b"from a"


def test_a_renamed_open_file_renamed_over_another_open_one(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        source = os.open(qc / "a.txt", os.O_RDWR | os.O_CREAT, 0o644)
        victim = os.open(qc / "b.txt", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(source, b"source")
            os.write(victim, b"victim")
            os.rename(qc / "a.txt", qc / "b.txt")
            os.write(source, b" goes on")
            os.write(victim, b" too")
        finally:
            os.close(victim)
            os.close(source)
        on_server = server_files(fake_xnat)
        assert on_server.get("b.txt") == b"source goes on"
        assert "a.txt" not in on_server
        assert (qc / "b.txt").read_bytes() == b"source goes on"


def test_writes_after_an_unlink_stay_local(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        fd = os.open(qc / "gone.txt", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"first")
            os.unlink(qc / "gone.txt")
            os.write(fd, b"+more")
            assert os.pread(fd, 100, 0) == b"first+more"
        finally:
            os.close(fd)
        assert "gone.txt" not in server_files(fake_xnat)
        assert not (qc / "gone.txt").exists()
        assert uploads_of(fake_xnat, "gone.txt") == 0
    assert list((tmp_path / "cache" / "spool" / "records").glob("*.json")) == []


def test_a_folder_made_again_where_one_was_removed_while_a_file_of_it_was_open(fake_xnat, tmp_path):
    # The open descriptor keeps the removed folder's inode alive in the kernel, which
    # marks it dead: the new folder must not be given its number, or nothing can be
    # made in the new folder (ENOENT).
    with mounted(fake_xnat.url, tmp_path) as mount:
        sub = mount.path.joinpath(*QC_PATH) / "sub"
        os.mkdir(sub)
        fd = os.open(sub / "e.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"one")
            os.unlink(sub / "e.bin")
            os.rmdir(sub)
            os.mkdir(sub)
            os.write(fd, b"two")
            (sub / "e.bin").write_bytes(b"three")
            assert (sub / "e.bin").read_bytes() == b"three"
            assert os.pread(fd, 100, 0) == b"onetwo"
        finally:
            os.close(fd)
        assert wait_until(lambda: server_files(fake_xnat).get("sub/e.bin") == b"three")
    assert uploads_of(fake_xnat, "sub/e.bin") == 1


def test_a_pending_upload_renamed_goes_under_the_new_name_once(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=30, args=no_retries(tmp_path), expected_errors=(r"HTTP 503",)) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        os.listdir(qc)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        handle = open(qc / "waiting.bin", "wb")
        handle.write(b"waiting bytes")
        with pytest.raises(OSError) as failed:
            handle.close()
        assert failed.value.errno == errno.EIO
        os.rename(qc / "waiting.bin", qc / "moved.bin")
        pending = UploadSpool(mount.cache_dir / "spool").pending()
        assert [entry.target.relpath for entry in pending] == ["moved.bin"]
        fake_xnat.set_faults()
        assert wait_until(lambda: "moved.bin" in server_files(fake_xnat))
        assert wait_until(lambda: UploadSpool(mount.cache_dir / "spool").pending() == [])
        on_server = server_files(fake_xnat)
        assert on_server["moved.bin"] == b"waiting bytes"
        assert "waiting.bin" not in on_server
        assert uploads_of(fake_xnat, "moved.bin") == 1
        assert uploads_of(fake_xnat, "waiting.bin") == 0
        assert (qc / "moved.bin").read_bytes() == b"waiting bytes"


def test_a_pending_upload_renamed_before_a_remount_lands_under_the_new_name(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=30, args=no_retries(tmp_path), expected_errors=(r"HTTP 503",)) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        os.listdir(qc)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(OSError), open(qc / "before.bin", "wb") as handle:
            handle.write(b"kept across the remount")
        os.rename(qc / "before.bin", qc / "after.bin")
    fake_xnat.set_faults()
    assert "after.bin" not in server_files(fake_xnat)
    with mounted(fake_xnat.url, tmp_path, name="again") as mount:
        qc = mount.path.joinpath(*QC_PATH)
        assert (qc / "after.bin").read_bytes() == b"kept across the remount"
        assert not (qc / "before.bin").exists()
        assert wait_until(lambda: "after.bin" in server_files(fake_xnat))
        on_server = server_files(fake_xnat)
        assert on_server["after.bin"] == b"kept across the remount"
        assert "before.bin" not in on_server
        assert uploads_of(fake_xnat, "before.bin") == 0


def test_an_open_for_writing_that_wrote_nothing_leaves_nothing_behind(fake_xnat, tmp_path):
    fake_xnat.store.put_file("XNAT_E00001", "QC", "db.sqlite", b"database bytes")
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        fd = os.open(qc / "db.sqlite", os.O_RDWR)
        assert os.pread(fd, 100, 0) == b"database bytes"
        os.close(fd)
        # The kernel sends the release after close() returned.
        assert wait_until(lambda: list((mount.cache_dir / "spool" / "records").glob("*.json")) == [])
        assert (qc / "db.sqlite").read_bytes() == b"database bytes"
    assert list((tmp_path / "cache" / "spool" / "records").glob("*.json")) == []
    with mounted(fake_xnat.url, tmp_path, name="again") as mount:
        assert (mount.path.joinpath(*QC_PATH) / "db.sqlite").read_bytes() == b"database bytes"
    spool = UploadSpool(tmp_path / "cache" / "spool")
    assert spool.pending() == [] and spool.unclosed() == []
    assert uploads_of(fake_xnat, "db.sqlite") == 0
