"""`mount -t fuse.xnatfs` and fstab lines: the mount.fuse.xnatfs helper that mount(8) runs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mountutil import REPO, fuse_mounted, unmount_quietly
from xnatfs.fs.mount import process_alive
from xnatfs.mounthelper import OptionProblem, mount_arguments, parse

HELPER = Path("/sbin/mount.fuse.xnatfs")


def test_fstab_options_become_mount_arguments():
    arguments, environment = mount_arguments(
        [
            "user=alice",
            "password_file=/etc/xnatfs/alice",
            "cache_dir=/var/cache/xnatfs",
            "ttl=30",
            "ro",
            "allow_other",
            "_netdev",
            "noauto",
            "nofail",
            "user",
            "x-systemd.automount",
            "rw",
            "nosuid",
            "netrc=/etc/xnatfs/netrc",
        ]
    )
    assert arguments == [
        "--user",
        "alice",
        "--password-file",
        "/etc/xnatfs/alice",
        "--cache-dir",
        "/var/cache/xnatfs",
        "--ttl",
        "30",
        "--read-only",
        "-o",
        "allow_other",
        "-o",
        "nosuid",
    ]
    assert environment == {"NETRC": "/etc/xnatfs/netrc"}


def test_a_password_in_the_options_is_refused():
    with pytest.raises(OptionProblem, match="password_file=PATH"):
        mount_arguments(["user=alice", "password=secret"])


def test_an_unknown_option_is_refused():
    with pytest.raises(OptionProblem, match="unknown mount option 'colour=blue'"):
        mount_arguments(["colour=blue"])


def test_helper_arguments_as_mount_passes_them():
    assert parse(["http://x", "/mnt", "-n", "-o", "ro,ttl=5"]) == ("http://x", "/mnt", ["ro", "ttl=5"], False)
    assert parse(["http://x", "/mnt", "-f", "-oro"])[2:] == (["ro"], True)
    assert parse(["http://x", "/mnt", "-t", "fuse.xnatfs", "-o", "ro"])[:3] == ("http://x", "/mnt", ["ro"])


@contextmanager
def helper_installed(home: Path):
    """/sbin/mount.fuse.xnatfs for the test's length: mount(8) clears the environment, so a
    small script puts back the test's own home folders before running this checkout's helper."""
    script = home / "mount.fuse.xnatfs"
    exports = "".join(
        f"export {name}={value}\n"
        for name, value in (
            ("HOME", home),
            ("XDG_CONFIG_HOME", home / "config"),
            ("XDG_STATE_HOME", home / "state"),
            ("XDG_CACHE_HOME", home / "cache"),
            ("PYTHONPATH", REPO),
        )
    )
    script.write_text(f'#!/bin/sh\n{exports}exec {sys.executable} -m xnatfs.mounthelper "$@"\n')
    script.chmod(0o755)
    previous = os.readlink(HELPER) if HELPER.is_symlink() else None
    if HELPER.exists() and previous is None:
        pytest.skip(f"{HELPER} is a file of this system's; not replacing it")
    temporary = HELPER.with_name(HELPER.name + f".{os.getpid()}")
    os.symlink(script, temporary)
    os.replace(temporary, HELPER)
    try:
        yield
    finally:
        if previous is None:
            HELPER.unlink()
        else:
            os.symlink(previous, temporary)
            os.replace(temporary, HELPER)


def daemon_pid(home: Path) -> int:
    [record] = (home / "state" / "xnatfs" / "mounts").glob("*.json")
    return json.loads(record.read_text())["pid"]


def mount_type_and_source(mountpoint: Path) -> tuple[str, str]:
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            before, _, after = line.partition(" - ")
            if before.split()[4] == str(mountpoint):
                kind, source = after.split()[:2]
                return kind, source
    raise AssertionError(f"{mountpoint} is not mounted")


def wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + 20
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)


@pytest.mark.mount
def test_mount_t_fuse_xnatfs_with_a_password_file_then_umount(fake_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    secret = tmp_path / "password"
    secret.write_text("admin\n")
    options = f"user=admin,password_file={secret},cache_dir={tmp_path / 'cache'},ttl=5,ro,_netdev,noauto"
    with helper_installed(home):
        try:
            done = subprocess.run(
                ["mount", "-t", "fuse.xnatfs", fake_xnat.url, str(mountpoint), "-o", options],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert fuse_mounted(mountpoint)
            assert mount_type_and_source(mountpoint) == ("fuse.xnatfs", "xnatfs")
            assert "STUDY01" in os.listdir(mountpoint)
            with pytest.raises(OSError) as refused:
                (mountpoint / "STUDY01" / "RESOURCES" / "PROTOCOLS" / "new.txt").write_bytes(b"x")
            assert refused.value.errno == errno.EROFS
            pid = daemon_pid(home)
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                assert b"admin\n" not in handle.read()
            done = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert not fuse_mounted(mountpoint)
            wait_for_exit(pid)
        finally:
            unmount_quietly(mountpoint)


@pytest.mark.mount
def test_fstab_line_with_netrc_credentials(fake_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login admin password admin\n")
    netrc.chmod(0o600)
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{fake_xnat.url} {mountpoint} fuse.xnatfs noauto,_netdev,netrc={netrc},cache_dir={tmp_path / 'cache'} 0 0\n"
    )
    with helper_installed(home):
        try:
            done = subprocess.run(
                ["mount", "--fstab", str(fstab), str(mountpoint)], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            assert "STUDY01" in os.listdir(mountpoint)
            pid = daemon_pid(home)
            assert subprocess.run(["umount", str(mountpoint)], timeout=60).returncode == 0
            wait_for_exit(pid)
        finally:
            unmount_quietly(mountpoint)


@pytest.mark.mount
def test_helper_refusal_is_one_line_and_mounts_nothing(fake_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with helper_installed(home):
        done = subprocess.run(
            ["mount", "-t", "fuse.xnatfs", fake_xnat.url, str(mountpoint), "-o", "user=admin,password=admin"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert done.stderr.strip().startswith("mount.fuse.xnatfs: a password does not go in the mount options")
    assert not fuse_mounted(mountpoint)
