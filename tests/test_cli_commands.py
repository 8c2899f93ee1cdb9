"""The xnatfs commands that run something: demo, fake-server, prefetch."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from mountutil import fuse_mounted, isolated_env, mounted, unmount_quietly, xnatfs_command

pytestmark = pytest.mark.mount


def test_demo_mounts_a_sample_and_stops_on_ctrl_c(tmp_path):
    mountpoint = tmp_path / "mnt"
    home = tmp_path / "home"
    home.mkdir()
    process = subprocess.Popen(
        xnatfs_command("demo", str(mountpoint), "--data", str(tmp_path / "demo")),
        env=isolated_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not fuse_mounted(mountpoint):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the demo did not mount"
            time.sleep(0.05)
        assert sorted(os.listdir(mountpoint)) == ["STUDY01", "STUDY02"]
        assert os.listdir(mountpoint / "STUDY01" / "SUB001" / "SUB001_MR1" / "SCANS")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Ctrl-C" in out and str(mountpoint) in out
        assert not fuse_mounted(mountpoint)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        unmount_quietly(mountpoint)


def test_fake_server_command_serves_until_terminated(tmp_path):
    process = subprocess.Popen(
        xnatfs_command("fake-server", "--port", "0", "--data", str(tmp_path / "data")),
        env=isolated_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_prefetch_warms_the_cache(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        series = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "SCANS" / "3-T2w_SPC"
        done = subprocess.run(
            xnatfs_command("prefetch", "-q", str(series)),
            env=isolated_env(mount.home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        fake_xnat.reset_counts()
        for path in series.rglob("*"):
            if path.is_file():
                path.read_bytes()
        assert fake_xnat.count() == 0
