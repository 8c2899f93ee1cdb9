"""The mount daemon's life: detaching, unmount waiting for it, signals, stale mounts."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess

import pytest

from mountutil import fuse_mounted, isolated_env, mounted, unmount_quietly, xnatfs_command
from xnatfs.fs.mount import process_alive

pytestmark = pytest.mark.mount


def run_xnatfs(env, *args: str, timeout: float = 60, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(xnatfs_command(*args), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def daemon_pid(home) -> int:
    records = list((home / "state" / "xnatfs" / "mounts").glob("*.json"))
    assert len(records) == 1
    return json.loads(records[0].read_text())["pid"]


def test_detached_mount_and_unmount(fake_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    secret = tmp_path / "password"
    secret.write_text("admin\n")
    env = isolated_env(home)
    try:
        # Relative paths are the caller's, though the daemon works from "/".
        started = run_xnatfs(
            env,
            "mount",
            fake_xnat.url,
            "mnt",
            "--user",
            "admin",
            "--password-file",
            "password",
            "--cache-dir",
            "cache",
            "--log-file",
            "daemon.log",
            cwd=tmp_path,
        )
        assert started.returncode == 0, started.stderr
        assert fuse_mounted(mountpoint)
        assert "STUDY01" in os.listdir(mountpoint)
        protocols = mountpoint / "STUDY01" / "RESOURCES" / "PROTOCOLS"
        assert next(protocols.iterdir()).read_bytes()
        # A file in the cache (its 256 folders exist from the start).
        assert any(path.is_file() for path in (tmp_path / "cache" / "data").rglob("*"))
        pid = daemon_pid(home)
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            assert b"admin\n" not in handle.read()
        stopped = run_xnatfs(env, "unmount", str(mountpoint))
        assert stopped.returncode == 0, stopped.stderr
        assert not fuse_mounted(mountpoint)
        assert not process_alive(pid)
        assert not list((home / "state" / "xnatfs" / "mounts").glob("*.json"))
        assert "admin\n" not in (tmp_path / "daemon.log").read_text()
    finally:
        unmount_quietly(mountpoint)


def test_daemon_start_failure_is_one_line_and_non_zero(fake_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = isolated_env(home, XNAT_USER="admin", XNAT_PASS="admin")
    try:
        started = run_xnatfs(
            env,
            "mount",
            fake_xnat.url,
            str(mountpoint),
            "-o",
            "no_such_fuse_option",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--log-file",
            str(tmp_path / "daemon.log"),
        )
        assert started.returncode != 0
        message = started.stderr.strip()
        assert message.startswith("xnatfs: ") and "\n" not in message
        assert not fuse_mounted(mountpoint)
    finally:
        unmount_quietly(mountpoint)


def test_sigterm_unmounts_cleanly(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        assert os.listdir(mount.path)
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(timeout=20) == 0
        assert not fuse_mounted(mount.path)


def test_stale_mount_is_cleaned_by_the_next_mount_and_by_unmount(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        os.listdir(mount.path)
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=20)
        with pytest.raises(OSError) as broken:
            os.stat(mount.path)
        assert broken.value.errno == errno.ENOTCONN
        env = isolated_env(mount.home)
        cleaned = run_xnatfs(env, "unmount", str(mount.path))
        assert cleaned.returncode == 0, cleaned.stderr
        assert not fuse_mounted(mount.path)
        os.listdir(mount.path)

    # Killed again; this time a new mount takes the stale one's place.
    with mounted(fake_xnat.url, tmp_path) as mount:
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=20)
        env = isolated_env(mount.home, XNAT_USER="admin", XNAT_PASS="admin")
        restarted = run_xnatfs(
            env,
            "mount",
            fake_xnat.url,
            str(mount.path),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--log-file",
            str(tmp_path / "again.log"),
        )
        assert restarted.returncode == 0, restarted.stderr
        assert "STUDY01" in os.listdir(mount.path)
        assert run_xnatfs(env, "unmount", str(mount.path)).returncode == 0
        assert not fuse_mounted(mount.path)
