"""Nothing written is lost: failed uploads stay in the spool and land later."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import signal
import subprocess
import time

import pytest

from mountutil import fuse_mounted, isolated_env, mounted, unmount_quietly, uploads, xnatfs_command
from waiting import wait_until
from xnatfs.cache.spool import UploadSpool
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

QC = "/data/experiments/XNAT_E00001/resources/QC"
QC_PATH = ("STUDY01", "SUB001", "SUB001_MR1", "RESOURCES", "QC")


def server_file(server, name: str) -> bytes | None:
    with XnatConnection(server.url, "admin", "admin") as conn:
        for remote in conn.list_files(QC):
            if remote.path == name:
                buffer = io.BytesIO()
                conn.download(remote.uri, buffer)
                return buffer.getvalue()
    return None


def wait_for_server_file(server, name: str, timeout: float = 15.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = server_file(server, name)
        if found is not None:
            return found
        time.sleep(0.25)
    return None


def no_retries(tmp_path) -> tuple[str, str]:
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nretries = 0\n")
    return ("--config", str(config))


def write_and_close(path, data: bytes) -> None:
    handle = open(path, "wb")
    handle.write(data)
    handle.close()


def test_failed_upload_is_eio_at_close_kept_and_retried(fake_xnat, tmp_path):
    payload = os.urandom(50_000)
    with mounted(fake_xnat.url, tmp_path, args=no_retries(tmp_path), expected_errors=(r"HTTP 503",)) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        os.listdir(qc)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(OSError) as failed:
            write_and_close(qc / "result.bin", payload)
        assert failed.value.errno == errno.EIO
        pending = UploadSpool(mount.cache_dir / "spool").pending()
        assert len(pending) == 1 and pending[0].data_path.read_bytes() == payload
        assert (qc / "result.bin").stat().st_size == len(payload)
        assert os.getxattr(qc / "result.bin", "user.xnat.upload") == b"failed"
        handle = open(qc / "other.bin", "wb")
        handle.write(b"x")
        handle.flush()
        with pytest.raises(OSError) as failed:
            os.fsync(handle.fileno())
        assert failed.value.errno == errno.EIO
        with pytest.raises(OSError):
            handle.close()
        fake_xnat.set_faults()
        assert wait_for_server_file(fake_xnat, "result.bin") == payload
        assert wait_for_server_file(fake_xnat, "other.bin") == b"x"
        assert (qc / "result.bin").read_bytes() == payload
        deadline = time.monotonic() + 10
        while UploadSpool(mount.cache_dir / "spool").pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert UploadSpool(mount.cache_dir / "spool").pending() == []
    assert "kept in the spool" in mount.log()


def test_upload_survives_sigkill_of_the_daemon(fake_xnat, tmp_path):
    payload = os.urandom(20_000)
    with mounted(fake_xnat.url, tmp_path, args=no_retries(tmp_path), expected_errors=(r"HTTP 503",)) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        os.listdir(qc)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(OSError):
            write_and_close(qc / "killed.bin", payload)
        # Killed before the background retry: only the spool knows the file.
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=20)
        fake_xnat.set_faults()
        assert server_file(fake_xnat, "killed.bin") is None
    with mounted(fake_xnat.url, tmp_path, name="again") as mount:
        assert (mount.path.joinpath(*QC_PATH) / "killed.bin").stat().st_size == len(payload)
        assert wait_for_server_file(fake_xnat, "killed.bin") == payload


def test_a_file_never_closed_is_kept_not_sent_and_can_be_sent_or_dropped(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        handles = [open(qc / name, "wb") for name in ("half.txt", "gone.txt")]
        for handle in handles:
            handle.write(b"written before the crash")
            handle.flush()
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=20)
        for handle in handles:
            try:
                handle.close()
            except OSError:
                pass
    with mounted(fake_xnat.url, tmp_path, name="again") as again:
        # The new mount's first look at the spool sets both aside; from then on they are never sent alone.
        wait_until(
            lambda: all(
                f"{name}, 24 bytes) was still being written" in again.log() for name in ("half.txt", "gone.txt")
            ),
            "the spool's unclosed entries to be set aside",
        )
        assert server_file(fake_xnat, "half.txt") is None
    listed = uploads(mount, "list")
    header, *rows = listed.stdout.split("\n\n")[0].splitlines()
    assert header.split()[:5] == ["ID", "STATE", "SIZE", "TRIES", "TARGET"]
    # ID, state, size (number and unit), tries, target, last error
    by_name = {row.split()[5].rsplit("/", 1)[-1]: row.split() for row in rows}
    assert set(by_name) == {"half.txt", "gone.txt"}
    assert by_name["half.txt"][1:4] == ["unclosed", "24", "B"] and by_name["half.txt"][4] == "0"
    assert by_name["half.txt"][5].startswith(fake_xnat.url + QC)
    credentials = {"XNAT_USER": "admin", "XNAT_PASS": "admin"}
    assert "--include-unclosed" in uploads(mount, "retry", **credentials).stderr
    assert server_file(fake_xnat, "half.txt") is None
    gone = by_name["gone.txt"][0]
    refused = uploads(mount, "discard", gone)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert UploadSpool(mount.cache_dir / "spool").get(gone) is not None
    dropped = uploads(mount, "discard", gone, "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert UploadSpool(mount.cache_dir / "spool").get(gone) is None
    # Held by another process at that moment (a mount looking at it): said, and a failure.
    half = by_name["half.txt"][0]
    held = os.open(UploadSpool(mount.cache_dir / "spool").get(half).data_path, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = uploads(mount, "retry", "--include-unclosed", **credentials)
    finally:
        os.close(held)
    assert busy.returncode == 1 and f"{half}: not sent" in busy.stderr, busy.stderr
    assert server_file(fake_xnat, "half.txt") is None
    sent = uploads(mount, "retry", "--include-unclosed", **credentials)
    assert sent.returncode == 0, sent.stderr
    assert "1 sent" in sent.stdout
    assert server_file(fake_xnat, "half.txt") == b"written before the crash"
    assert server_file(fake_xnat, "gone.txt") is None
    assert "no uploads waiting" in uploads(mount, "list").stdout


def test_uploads_list_and_retry_without_a_mount(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=no_retries(tmp_path), expected_errors=(r"HTTP 500",)) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        os.listdir(qc)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(500,))
        with pytest.raises(OSError):
            write_and_close(qc / "later.txt", b"when the server is back")
    credentials = {"XNAT_USER": "admin", "XNAT_PASS": "admin"}
    listed = uploads(mount, "list", **credentials)
    assert listed.returncode == 0
    assert "later.txt" in listed.stdout and "failed" in listed.stdout
    fake_xnat.set_faults()
    retried = uploads(mount, "retry", **credentials)
    assert retried.returncode == 0, retried.stderr
    assert "1 sent" in retried.stdout
    assert server_file(fake_xnat, "later.txt") == b"when the server is back"
    assert "no uploads waiting" in uploads(mount, "list", **credentials).stdout


def test_unmount_sends_pending_uploads_before_the_daemon_exits(fake_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = isolated_env(home, XNAT_USER="admin", XNAT_PASS="admin")
    cache_dir = tmp_path / "cache"
    config = no_retries(tmp_path)
    try:
        started = subprocess.run(
            xnatfs_command("mount", fake_xnat.url, str(mountpoint), "--cache-dir", str(cache_dir), *config),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stderr
        qc = mountpoint.joinpath(*QC_PATH)
        os.listdir(qc)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(OSError):
            write_and_close(qc / "at-exit.txt", b"sent on unmount")
        fake_xnat.set_faults()
        stopped = subprocess.run(
            xnatfs_command("unmount", str(mountpoint)), env=env, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not fuse_mounted(mountpoint)
        assert server_file(fake_xnat, "at-exit.txt") == b"sent on unmount"
        assert UploadSpool(cache_dir / "spool").pending() == []
    finally:
        unmount_quietly(mountpoint)


def test_a_rewrite_whose_upload_failed_stays_shown_after_the_earlier_upload_is_forgotten(fake_xnat, tmp_path):
    """A file sent once is shown from our copy for a TTL, then left to the listings. Written
    again, and that upload refused for now, it must stay shown as written until it is sent.
    Was: the first upload's TTL still ran, and when it ran out the mount showed the server's
    older version: reads gave the bytes the user had replaced."""
    with mounted(fake_xnat.url, tmp_path, ttl=1, args=no_retries(tmp_path), expected_errors=(r"HTTP 503",)) as mount:
        path = mount.path.joinpath(*QC_PATH) / "again.txt"
        write_and_close(path, b"first")
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,), methods=("PUT",))
        try:
            with pytest.raises(OSError) as failed:
                write_and_close(path, b"second version")
            assert failed.value.errno == errno.EIO
            time.sleep(2.5)  # past the first upload's TTL, and the listing's
            assert path.read_bytes() == b"second version"
            assert server_file(fake_xnat, "again.txt") == b"first"
        finally:
            fake_xnat.set_faults()
        assert uploads(mount, "retry", XNAT_USER="admin", XNAT_PASS="admin").returncode == 0
        assert server_file(fake_xnat, "again.txt") == b"second version"
        assert path.read_bytes() == b"second version"


def _locked_by_someone(path) -> bool:
    """Whether a process holds a lock on ``path`` (read from /proc/locks: taking
    the lock to find out would make the sender think it busy, and skip it)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return any(line.split()[5].endswith(f":{inode}") for line in locks if len(line.split()) > 5)


def test_a_file_removed_while_its_upload_is_under_way_is_deleted_once_that_upload_ends(fake_xnat, tmp_path):
    """rm of a file whose waiting upload `xnatfs uploads retry` is sending at that moment.
    Was: the rm dropped the spool's record under the sender, whose upload then landed: the
    server kept the file the mount had removed, and the mount showed it again a TTL later."""
    with mounted(fake_xnat.url, tmp_path, ttl=1, args=no_retries(tmp_path), expected_errors=(r"HTTP 503",)) as mount:
        path = mount.path.joinpath(*QC_PATH) / "going.txt"
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,), methods=("PUT",))
        try:
            with pytest.raises(OSError) as failed:
                write_and_close(path, b"sent while it is removed")
            assert failed.value.errno == errno.EIO
            [entry] = UploadSpool(mount.cache_dir / "spool").pending()
            fake_xnat.set_faults(stall_ms=1500, stall_rate=1.0, methods=("PUT",))
            sender = subprocess.Popen(
                xnatfs_command("uploads", "retry", "--cache-dir", str(mount.cache_dir)),
                env=isolated_env(mount.home, XNAT_USER="admin", XNAT_PASS="admin"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_until(lambda: _locked_by_someone(entry.data_path), "the sender to take the upload", timeout=15)
                os.unlink(path)
            finally:
                _out, errors = sender.communicate(timeout=60)
        finally:
            fake_xnat.set_faults()
        assert sender.returncode == 0, errors
        assert server_file(fake_xnat, "going.txt") is None, "the server kept a file removed through the mount"
        time.sleep(1.5)  # past the TTL
        assert "going.txt" not in os.listdir(path.parent)


def test_a_written_file_keeps_its_time_in_the_next_mount_unless_the_server_changed_it(fake_xnat, tmp_path):
    """`make` after a remount must still see a target newer than its sources: the times of
    files written through the mount are kept with the cache (docs/LAYOUT.md, "Times")."""
    with mounted(fake_xnat.url, tmp_path, ttl=1) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        write_and_close(qc / "kept.txt", b"built")
        write_and_close(qc / "changed.txt", b"source")
        written = {name: (qc / name).stat().st_mtime_ns for name in ("kept.txt", "changed.txt")}
        time.sleep(1.5)  # listed by the server from now on
        assert {name: (qc / name).stat().st_mtime_ns for name in written} == written
    fake_xnat.store.put_file("XNAT_E00001", "QC", "changed.txt", b"SOURCE")  # same size, other bytes
    with mounted(fake_xnat.url, tmp_path, ttl=1, name="again") as again:
        qc = again.path.joinpath(*QC_PATH)
        assert (qc / "kept.txt").stat().st_mtime_ns == written["kept.txt"]
        assert (qc / "changed.txt").stat().st_mtime_ns < written["changed.txt"]  # the session's time


def test_a_file_sent_just_before_unmount_keeps_its_time_in_the_next_mount(fake_xnat, tmp_path):
    # Its MD5, worked out in the background after the close, is finished at unmount:
    # without it, the next mount showed the session's time (older than the sources).
    with mounted(fake_xnat.url, tmp_path) as mount:
        target = mount.path.joinpath(*QC_PATH, "volume.nii")
        write_and_close(target, os.urandom(64 << 20))
        written = target.stat().st_mtime_ns
    with mounted(fake_xnat.url, tmp_path, name="again") as again:
        assert again.path.joinpath(*QC_PATH, "volume.nii").stat().st_mtime_ns == written


def test_a_written_files_time_outlives_a_killed_mount(fake_xnat, tmp_path):
    """The times are on disk a few seconds after a write, not only at unmount: a mount
    killed after that shows them in the next (docs/LAYOUT.md, "Times")."""
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        write_and_close(qc / "built.o", b"object")
        written = (qc / "built.o").stat().st_mtime_ns
        kept = mount.cache_dir / "times"
        wait_until(
            lambda: any("built.o" in path.read_text() for path in kept.glob("*.json")),
            timeout=15,
            what="the written time on disk",
        )
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=20)
    with mounted(fake_xnat.url, tmp_path, name="again") as again:
        assert again.path.joinpath(*QC_PATH, "built.o").stat().st_mtime_ns == written
