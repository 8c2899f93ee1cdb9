"""`xnatfs refresh` and `xnatfs status`: the mount's private control channel, on a real mount."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from mountutil import isolated_env, mounted, xnatfs_command
from xnatfs.cache.files import disk_free
from xnatfs.fs.control import REFRESH_NAME, ask, control_socket_path

pytestmark = pytest.mark.mount

SESSION = ("STUDY01", "SUB001", "SUB001_MR1")
LONG_TTL = 600


def xnatfs(mount, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        xnatfs_command(*args), env=isolated_env(mount.home), capture_output=True, text=True, timeout=60
    )


def qc_folder(mount):
    return mount.path.joinpath(*SESSION, "RESOURCES", "QC")


def add_qc_file(fake_xnat, mount, name: str) -> None:
    experiment_id = os.getxattr(mount.path.joinpath(*SESSION), "user.xnat.id").decode()
    fake_xnat.store.put_file(experiment_id, "QC", name, b"uploaded elsewhere")


def test_refresh_shows_a_server_change_before_the_listing_expires(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=LONG_TTL) as mount:
        qc = qc_folder(mount)
        before = set(os.listdir(qc))
        add_qc_file(fake_xnat, mount, "from-the-web.txt")
        assert set(os.listdir(qc)) == before
        with pytest.raises(FileNotFoundError):
            os.stat(qc / "from-the-web.txt")  # the kernel now remembers it as missing
        done = xnatfs(mount, "refresh", str(qc))
        assert done.returncode == 0, done.stderr
        assert f"{len(before) + 1} entries" in done.stdout
        # Opened by name first: the kernel must have dropped its "missing" entry.
        assert (qc / "from-the-web.txt").read_bytes() == b"uploaded elsewhere"
        assert set(os.listdir(qc)) == before | {"from-the-web.txt"}


def test_recursive_refresh_reaches_folders_below(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=LONG_TTL) as mount:
        qc = qc_folder(mount)
        before = set(os.listdir(qc))
        project = mount.path / "STUDY01"
        listed = os.listdir(project)
        add_qc_file(fake_xnat, mount, "deep.txt")
        fake_xnat.store.add_subject("STUDY01", "SUB777")
        assert os.listdir(project) == listed
        flat = xnatfs(mount, "refresh", str(project))
        assert flat.returncode == 0, flat.stderr
        assert "SUB777" in os.listdir(project)
        assert set(os.listdir(qc)) == before
        deep = xnatfs(mount, "refresh", "-r", str(project))
        assert deep.returncode == 0, deep.stderr
        assert "deep.txt" in os.listdir(qc)


def test_looking_up_the_refresh_name_refreshes_its_folder(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=LONG_TTL) as mount:
        qc = qc_folder(mount)
        before = set(os.listdir(qc))
        add_qc_file(fake_xnat, mount, "seen-by-a-file-manager.txt")
        assert set(os.listdir(qc)) == before
        with pytest.raises(FileNotFoundError):
            os.stat(qc / REFRESH_NAME)
        assert set(os.listdir(qc)) == before | {"seen-by-a-file-manager.txt"}
        with pytest.raises(PermissionError):
            (qc / REFRESH_NAME).write_bytes(b"")
        assert REFRESH_NAME not in os.listdir(qc)


def test_refresh_outside_a_mount_is_one_line(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        done = xnatfs(mount, "refresh", str(tmp_path))
        assert done.returncode != 0
        assert done.stderr.strip() == f"xnatfs: {tmp_path} is not inside a mounted file system"


def test_status_reports_cache_transfers_errors_and_health(fake_xnat, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nretries = 0\n")
    with mounted(fake_xnat.url, tmp_path, args=("--config", str(config)), expected_errors=(r"HTTP 503",)) as mount:
        qc = qc_folder(mount)
        target = qc / sorted(os.listdir(qc))[0]
        target.read_bytes()
        target.read_bytes()
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(OSError) as failed:
            os.listdir(mount.path / "STUDY02")
        assert failed.value.errno == errno.EIO
        with pytest.raises(OSError):
            (qc / "refused.txt").write_bytes(b"kept in the spool")

        done = xnatfs(mount, "status", "--json", str(mount.path))
        fake_xnat.set_faults()
        assert done.returncode == 0, done.stderr
        [status] = json.loads(done.stdout)
        assert status["mountpoint"] == str(mount.path)
        assert status["server"] == fake_xnat.url and status["user"] == "admin"
        assert status["pid"] == mount.process.pid
        assert status["cache"]["misses"] == 1 and status["cache"]["hits"] >= 1
        assert status["cache"]["bytes_used"] == target.stat().st_size
        assert abs(status["cache"]["disk_free"] - disk_free(mount.cache_dir)) < 64 << 20
        assert set(status["requests"]["errors"]) == {"HTTP 503"}  # one per listing the folder needs
        assert status["requests"]["requests"] >= 5
        assert status["requests"]["health"] == "answering"
        assert status["downloads"] == []
        meta = status["metadata"]
        assert 0 < meta["listing_rows"] <= meta["listing_rows_max"]
        assert 0 < meta["derived_rows"] <= meta["derived_rows_max"]
        assert meta["inodes"] >= 4  # the root and the folders looked up on the way
        [upload] = status["uploads"]
        assert upload["state"] == "failed" and upload["size"] == len(b"kept in the spool")
        assert upload["target"].endswith("QC/files/refused.txt") and "503" in upload["last_error"]

        every = xnatfs(mount, "status")
        assert every.returncode == 0, every.stderr
        assert str(mount.path) in every.stdout and "HTTP 503 ×" in every.stdout
        assert f"{meta['listing_rows_max']} listing rows held" in every.stdout

        sock = control_socket_path(mount.path)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        stranger = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                f"import socket; socket.socket(socket.AF_UNIX).connect({str(sock)!r})",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stranger.returncode != 0 and "PermissionError" in stranger.stderr
    assert not sock.exists()


def test_status_of_a_folder_not_mounted_is_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        xnatfs_command("status", str(tmp_path)), env=isolated_env(home), capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    message = done.stderr.strip()
    assert message.startswith("xnatfs: no xnatfs mount answers for") and "\n" not in message


def test_status_shows_an_upload_while_it_is_sent(fake_xnat, tmp_path):
    payload = os.urandom(5 << 20)  # above the size sent from memory: streamed from the spool
    with mounted(fake_xnat.url, tmp_path) as mount:
        target = qc_folder(mount) / "large-upload.bin"
        os.listdir(target.parent)
        fake_xnat.latency_ms = 1500
        writer = threading.Thread(target=target.write_bytes, args=(payload,))
        writer.start()
        try:
            deadline = time.monotonic() + 20
            sending = []
            while not sending and time.monotonic() < deadline:
                uploads = ask(mount.path, {"request": "status"})["uploads"]
                sending = [upload for upload in uploads if upload["state"] == "sending"]
                time.sleep(0.02)
            [upload] = sending
            assert upload["size"] == len(payload)
            assert 0 <= upload["bytes_sent"] <= len(payload)
            assert upload["target"].endswith("QC/files/large-upload.bin")
        finally:
            writer.join(30)
            fake_xnat.latency_ms = 0
        assert ask(mount.path, {"request": "status"})["uploads"] == []


def test_status_answers_while_the_server_holds_every_worker(fake_xnat, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nworkers = 1\nretries = 0\n")
    with mounted(fake_xnat.url, tmp_path, args=("--config", str(config))) as mount:
        qc = qc_folder(mount)
        target = qc / sorted(os.listdir(qc))[0]
        fake_xnat.set_faults(stall_ms=2500, stall_rate=1.0)
        reader = threading.Thread(target=target.read_bytes)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            in_flight = 0
            while not in_flight and time.monotonic() < deadline:
                in_flight = ask(mount.path, {"request": "status"}, timeout=20)["requests"]["in_flight"]
                time.sleep(0.02)
            assert in_flight == 1
            assert reader.is_alive()
        finally:
            reader.join(30)
            fake_xnat.set_faults()
