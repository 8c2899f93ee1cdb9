"""``with xnatfs.mount(url, path) as m``: a mount from Python, taken down however the block ends."""

from __future__ import annotations

import os
import time

import pytest

import xnatfs
from mountutil import fuse_mounted, unmount_quietly
from xnatfs.fs.mount import process_alive

pytestmark = [pytest.mark.mount, pytest.mark.usefixtures("isolated_home")]


def test_mount_lists_reads_reports_status_and_unmounts(fake_xnat, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        with xnatfs.mount(
            fake_xnat.url, mountpoint, user="admin", password="admin", cache_dir=tmp_path / "cache", ttl=30
        ) as mounted:
            assert mounted.path == mountpoint
            assert fuse_mounted(mountpoint)
            assert "STUDY01" in os.listdir(mountpoint)
            protocols = mountpoint / "STUDY01" / "RESOURCES" / "PROTOCOLS"
            assert next(protocols.iterdir()).read_bytes()
            subjects = set(os.listdir(mountpoint / "STUDY01"))
            fake_xnat.store.add_subject("STUDY01", "SUB900")
            assert set(os.listdir(mountpoint / "STUDY01")) == subjects
            assert mounted.refresh("STUDY01") == len(subjects) + 1
            assert set(os.listdir(mountpoint / "STUDY01")) == subjects | {"SUB900"}
            status = mounted.status()
            assert status["server"] == fake_xnat.url
            assert status["user"] == "admin"
            assert status["cache"]["misses"] >= 1
            pid = status["pid"]
            assert process_alive(pid)
        assert not fuse_mounted(mountpoint)
        assert not process_alive(pid)
    finally:
        unmount_quietly(mountpoint)


def test_an_exception_in_the_block_unmounts_and_is_raised_unchanged(fake_xnat, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()

    class PipelineFailed(Exception):
        pass

    try:
        with (
            pytest.raises(PipelineFailed),
            xnatfs.mount(
                fake_xnat.url, mountpoint, user="admin", password="admin", cache_dir=tmp_path / "cache"
            ) as mounted,
        ):
            pid = mounted.status()["pid"]
            # A file left open by the failing step must not hide the failure.
            held = open(next((mountpoint / "STUDY01" / "RESOURCES" / "PROTOCOLS").iterdir()), "rb")
            raise PipelineFailed()
        assert not fuse_mounted(mountpoint)
        held.close()
        # Detached lazily: the daemon ends once the last open file is closed.
        deadline = time.monotonic() + 20
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(pid)
    finally:
        unmount_quietly(mountpoint)


def test_a_mount_that_cannot_start_raises_the_one_line_reason(fake_xnat, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with (
        pytest.raises(xnatfs.MountError) as refused,
        xnatfs.mount(fake_xnat.url, mountpoint, user="admin", password="wrong", cache_dir=tmp_path / "cache"),
    ):
        pytest.fail("mounted with a wrong password")
    assert "refused user admin" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not fuse_mounted(mountpoint)
