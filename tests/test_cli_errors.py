"""Each refusal `xnatfs mount` can meet is one line that says what to do, and a non-zero exit."""

from __future__ import annotations

import socket
import subprocess

import pytest

from fakeutil import fault_seed
from mountutil import isolated_env, mounted, xnatfs_command
from xnatfs.cli import main

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text("admin\n")
    return path


def refusal(capsys, *args: str) -> str:
    assert main(list(args)) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("xnatfs: ") and "\n" not in err
    return err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_wrong_password_says_what_to_check(fake_xnat, mountpoint, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    err = refusal(capsys, "mount", fake_xnat.url, str(mountpoint), "--user", "admin", "--password-file", str(wrong))
    assert "refused user admin" in err and "check the user name and password" in err
    assert "not-the-password" not in err


def test_expired_password_says_to_set_a_new_one(fake_xnat, mountpoint, password_file, capsys):
    fake_xnat.expired_password = True
    err = refusal(
        capsys, "mount", fake_xnat.url, str(mountpoint), "--user", "admin", "--password-file", str(password_file)
    )
    assert "password of user admin has expired" in err and "set a new password" in err


def test_unreachable_server_says_to_check_the_address(mountpoint, password_file, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    err = refusal(capsys, "mount", url, str(mountpoint), "--user", "admin", "--password-file", str(password_file))
    assert f"cannot use {url}" in err and "check the address and port" in err


def test_tls_failure_says_what_to_check(fake_xnat, mountpoint, password_file, capsys):
    # The fake server speaks plain HTTP: a TLS handshake with it fails.
    url = fake_xnat.url.replace("http://", "https://")
    err = refusal(capsys, "mount", url, str(mountpoint), "--user", "admin", "--password-file", str(password_file))
    assert "TLS handshake or certificate check failed" in err
    assert "http or https?" in err and "--insecure" in err


def test_mountpoint_not_empty_says_to_use_an_empty_folder(mountpoint, capsys):
    (mountpoint / "left-over").write_text("x")
    err = refusal(capsys, "mount", "http://127.0.0.1:9", str(mountpoint))
    assert "is not empty; mount on an empty folder" in err


@pytest.mark.mount
def test_mountpoint_busy_says_to_unmount_first(fake_xnat, tmp_path, capsys):
    with mounted(fake_xnat.url, tmp_path) as mount:
        err = refusal(capsys, "mount", fake_xnat.url, str(mount.path))
        assert f"{mount.path} is already mounted; unmount it first (xnatfs unmount {mount.path})" in err
        assert mount.process.poll() is None


@pytest.mark.mount
def test_busy_unmount_names_the_processes_using_the_mount(fake_xnat, tmp_path, capsys):
    with mounted(fake_xnat.url, tmp_path) as mount:
        user = subprocess.Popen(["sleep", "60"], cwd=mount.path / "STUDY01")
        try:
            err = refusal(capsys, "unmount", str(mount.path))
            assert f"in use by {user.pid} (sleep)" in err and "--force" in err
            assert mount.process.poll() is None
        finally:
            user.kill()
            user.wait()


def test_fuse_missing_says_what_to_install(mountpoint, tmp_path):
    # A real machine without /dev/fuse: a private mount namespace whose /dev holds only null.
    script = 'mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && exec "$@"'
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
            *xnatfs_command("mount", "http://127.0.0.1:9", str(mountpoint)),
        ],
        env=isolated_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "xnatfs: /dev/fuse is missing: install fuse3 and load the fuse module (modprobe fuse)"
    )


def test_a_server_answering_busy_at_start_is_asked_again(fake_xnat, tmp_path):
    # Four 503s in a row: more than the check's own retry, fewer than its attempts.
    busy = {"error_rate": 0.5, "error_statuses": (503,)}
    fake_xnat.set_faults(**busy, seed=fault_seed([503, 503, 503, 503, None, None, None, None], **busy))
    with mounted(fake_xnat.url, tmp_path) as mount:
        fake_xnat.set_faults()
        assert sorted(p.name for p in mount.path.iterdir()) == ["STUDY01", "STUDY02"]
        assert "is busy" in mount.log()
    assert [status for _m, _t, status in fake_xnat.requests[:4]] == [503] * 4
