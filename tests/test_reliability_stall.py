"""A server that accepts connections and never answers: every caller gets an answer in time.

The fake server runs in a process of its own and is stopped with SIGSTOP,
so connections are accepted by the kernel and nothing ever comes back, the
way a hung server or a dead proxy behaves. The mount runs with a short
``--timeout``; each caller (a checksum of an uncached file, a listing of an
uncached folder, a copy into the mount) must return with an error within a
generous multiple of it, instead of sitting unkillable in the kernel. After
SIGCONT the mount works again by itself and what was written reaches the
server. ``xnatfs unmount`` and its ``--force`` form work while the server is
stopped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mountutil import fuse_mounted, isolated_env, mounted, server_files, uploads, xnatfs_command
from test_reliability_common import write_config

pytestmark = pytest.mark.mount

TIMEOUT = 3.0
# Generous: a caller that is not answered in time would wait for minutes.
BOUND = 4 * TIMEOUT
RECOVERY = 30.0
SESSION = "STUDY01/SUB001/SUB001_MR1"
QC = f"{SESSION}/RESOURCES/QC"
QC_FILES = "/data/experiments/XNAT_E00001/resources/QC/files"

LIST = "import os, sys\ntry:\n    os.listdir(sys.argv[1])\nexcept OSError as e:\n    sys.exit(e.errno)\n"


def finishes_in_time(server, command: list[str], env=None) -> subprocess.CompletedProcess:
    """Run ``command``; fail the test if it is still waiting after BOUND seconds.

    On that failure the server is continued first: a caller stuck in the
    kernel cannot be killed before the daemon answers it.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = process.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        server.resume()
        process.kill()
        process.communicate()
        pytest.fail(f"{command} was not answered within {BOUND} s while the server was stopped")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def wait_until(check, what: str, limit: float = RECOVERY):
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {limit} s")
        time.sleep(0.2)


def mounted_reading_file_by_file(server, tmp_path, timeout: float, expected_errors: tuple[str, ...]):
    """A mount with ``--timeout timeout`` that starts no series zip before a read:
    listing a file's folder fetches none of its bytes, so its read waits on the server."""
    no_early_zip = write_config(tmp_path / "config.toml", series_early_size=0)
    return mounted(
        server.url, tmp_path, args=("--timeout", str(timeout), *no_early_zip), expected_errors=expected_errors
    )


def md5_or_none(path: Path) -> str | None:
    try:
        return hashlib.md5(path.read_bytes()).hexdigest()
    except OSError:
        return None


def server_copy(server, name: str) -> bytes | None:
    answer = requests.get(f"{server.url}{QC_FILES}/{name}", auth=(server.username, server.password), timeout=10)
    return answer.content if answer.status_code == 200 else None


def test_stopped_server_answers_every_caller_in_time_and_the_mount_recovers(fake_xnat_process, tmp_path):
    server = fake_xnat_process
    files = server_files(server)
    read_path = sorted(p for p in files if p.startswith(f"{SESSION}/SCANS/2-"))[0]
    listed_folder = "STUDY02"
    written = b"written while the server was stopped\n" * 100
    source = tmp_path / "source.txt"
    source.write_bytes(written)

    with mounted_reading_file_by_file(
        server, tmp_path, TIMEOUT, (r"server stalled|timed out|the server is not answering",)
    ) as mount:
        # Folders the copy and the read go through are listed before the stop, so
        # that each caller below waits on exactly one thing: file bytes, a listing, an upload.
        os.listdir(mount.path / QC)
        os.listdir((mount.path / read_path).parent)
        server.pause()
        try:
            read = finishes_in_time(server, ["md5sum", str(mount.path / read_path)])
            assert read.returncode != 0 and "Input/output error" in read.stderr, read
            listing = finishes_in_time(server, [sys.executable, "-c", LIST, str(mount.path / listed_folder)])
            assert listing.returncode == errno.EIO, listing
            copy = finishes_in_time(server, ["cp", str(source), str(mount.path / QC / "stalled.txt")])
            assert copy.returncode != 0, copy
            env = isolated_env(mount.home, XNAT_USER=server.username, XNAT_PASS=server.password)
            status = finishes_in_time(server, xnatfs_command("status", str(mount.path), "--json"), env=env)
            assert json.loads(status.stdout)[0]["requests"]["health"] == "stalled", status.stdout
        finally:
            server.resume()

        digest = wait_until(lambda: md5_or_none(mount.path / read_path), "the file is not readable again")
        assert digest == files[read_path].digest
        subjects = {p.split("/")[1] for p in files if p.startswith(listed_folder + "/")} - {"RESOURCES"}
        assert subjects and subjects <= set(os.listdir(mount.path / listed_folder))
        assert (
            wait_until(
                lambda: server_copy(server, "stalled.txt"), "the file written during the stop did not reach the server"
            )
            == written
        )
        assert mount.process.poll() is None
    log = mount.log()
    assert log.count("server stalled") == 1, log
    assert "server answers again" in log


def listed(folder: Path) -> set[str] | None:
    try:
        return set(os.listdir(folder))
    except OSError:
        return None


def on_server(server, path: str) -> bool:
    answer = requests.get(f"{server.url}{path}?format=json", auth=(server.username, server.password), timeout=10)
    return answer.status_code == 200


def mounted_keeping_listings(server, tmp_path):
    """A mount that keeps listings for 600 s: what it shows changes only when it forgets them itself."""
    return mounted(
        server.url,
        tmp_path,
        ttl=600,
        args=("--timeout", str(TIMEOUT)),
        expected_errors=(r"server stalled|timed out|the server is not answering|no answer from the server",),
    )


def test_changes_the_stopped_server_made_after_all_show_without_waiting_for_the_ttl(fake_xnat_process, tmp_path):
    """A change whose request went out before the server stopped fails at the caller, and the
    server may still carry it out once it runs again: the mount must not go on showing the
    folder as it was before for the whole TTL."""
    server = fake_xnat_process
    made = (
        ("STUDY01/SUB001", "SUB001_MR9", "/data/projects/STUDY01/subjects/SUB001/experiments/SUB001_MR9"),
        ("STUDY01", "SUB077", "/data/projects/STUDY01/subjects/SUB077"),
    )
    with mounted_keeping_listings(server, tmp_path) as mount:
        for parent, name, path in made:
            os.listdir(mount.path / parent)
            server.pause()
            try:
                failed = finishes_in_time(server, ["mkdir", str(mount.path / parent / name)])
                assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed
            finally:
                server.resume()
            # The server carries out the request that waited in its socket.
            wait_until(lambda path=path: on_server(server, path), f"{name} not made")
            folder = mount.path / parent
            wait_until(lambda folder=folder, name=name: name in (listed(folder) or ()), f"{name} not listed")
            assert (mount.path / parent / name).is_dir()


def test_a_change_that_failed_before_it_was_sent_leaves_the_listing_shown(fake_xnat_process, tmp_path):
    """``rm`` asks whether the file is there before deleting it: when that goes unanswered
    nothing was deleted, and the folder's listing is still shown while the server is stopped."""
    server = fake_xnat_process
    with mounted_keeping_listings(server, tmp_path) as mount:
        names = sorted(os.listdir(mount.path / QC))
        server.pause()
        try:
            failed = finishes_in_time(server, ["rm", str(mount.path / QC / names[0])])
            assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed
            listing = finishes_in_time(server, ["ls", "-1", str(mount.path / QC)])
            assert listing.returncode == 0 and listing.stdout.split() == names, listing
        finally:
            server.resume()


def test_unmount_while_the_server_is_stopped_keeps_what_was_written(fake_xnat_process, tmp_path):
    server = fake_xnat_process
    written = b"kept in the spool\n"
    with mounted(server.url, tmp_path, args=("--timeout", str(TIMEOUT)), expected_errors=(r"timed out",)) as mount:
        os.listdir(mount.path / QC)
        env = isolated_env(mount.home, XNAT_USER=server.username, XNAT_PASS=server.password)
        (tmp_path / "late.txt").write_bytes(written)
        server.pause()
        try:
            copy = finishes_in_time(server, ["cp", str(tmp_path / "late.txt"), str(mount.path / QC / "late.txt")])
            assert copy.returncode != 0
            unmount = finishes_in_time(server, xnatfs_command("unmount", str(mount.path)), env=env)
            assert unmount.returncode == 0, unmount.stderr
            assert not fuse_mounted(mount.path)
            mount.process.wait(timeout=BOUND)
        finally:
            server.resume()
        credentials = {"XNAT_USER": server.username, "XNAT_PASS": server.password}
        listed = uploads(mount, "list", **credentials)
        assert "late.txt" in listed.stdout, listed
        retried = uploads(mount, "retry", **credentials)
        assert retried.returncode == 0, retried.stderr
        assert server_copy(server, "late.txt") == written


def test_forced_unmount_detaches_a_busy_mount_while_the_server_is_stopped(fake_xnat_process, tmp_path):
    server = fake_xnat_process
    with mounted(server.url, tmp_path, args=("--timeout", str(TIMEOUT))) as mount:
        env = isolated_env(mount.home)
        os.listdir(mount.path / "STUDY01")
        busy = os.open(mount.path / "STUDY01", os.O_RDONLY)
        server.pause()
        try:
            refused = finishes_in_time(server, xnatfs_command("unmount", str(mount.path)), env=env)
            assert refused.returncode != 0 and "--force" in refused.stderr, refused
            forced = finishes_in_time(server, xnatfs_command("unmount", "--force", str(mount.path)), env=env)
            assert forced.returncode == 0, forced.stderr
            assert not fuse_mounted(mount.path)
        finally:
            os.close(busy)
            server.resume()
        mount.process.wait(timeout=BOUND * 2)


def test_mounting_a_stopped_server_fails_in_time(fake_xnat_process, tmp_path):
    server = fake_xnat_process
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = isolated_env(tmp_path / "home", XNAT_USER=server.username, XNAT_PASS=server.password)
    server.pause()
    try:
        started = finishes_in_time(
            server,
            xnatfs_command(
                "mount",
                server.url,
                str(mountpoint),
                "--timeout",
                str(TIMEOUT),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--log-file",
                str(tmp_path / "mnt.log"),
            ),
            env=env,
        )
    finally:
        server.resume()
    assert started.returncode != 0 and "timed out" in started.stderr, started
    assert not fuse_mounted(mountpoint)


# Long: a killed caller must not have to wait for it.
KILL_TIMEOUT = 120.0

WRITE_THEN_DIE = (
    "import os, signal, sys\n"
    "f = open(sys.argv[1], 'wb')\n"
    "f.write(b'written by a process killed before its close' * 100)\n"
    "f.flush()\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"  # its files are closed as it dies
)
WRITE_THEN_EXIT = "import sys\nopen(sys.argv[1], 'wb').write(b'written before a normal exit' * 100)\n"


def waiting_for_the_mount(process: subprocess.Popen) -> bool:
    try:
        return Path(f"/proc/{process.pid}/wchan").read_text() == "request_wait_answer"
    except OSError:
        return False


def killed_in_time(server, command: list[str], sig: signal.Signals) -> int:
    """Start ``command``, send it ``sig`` once it waits for the mount, and return its exit status;
    fail the test if it has not died within BOUND seconds of the signal."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: waiting_for_the_mount(process), f"{command} is not waiting for the mount", limit=BOUND)
        process.send_signal(sig)
        return process.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} was still alive {BOUND} s after {sig.name} while the server was stopped")
    finally:
        server.resume()
        process.kill()
        process.wait()


def test_a_caller_killed_while_the_server_is_stopped_dies_at_once(fake_xnat_process, tmp_path):
    """A process waiting for the mount cannot die until it is answered, even after SIGKILL. With
    the server stopped and a long ``--timeout``, ``kill -9``, and a signal the program does not
    catch (as Ctrl-C of ``md5sum``), must end it at once, whether it waits for file bytes, a
    listing, a change or the upload at its last close, and what it wrote still reaches the server."""
    server = fake_xnat_process
    files = server_files(server)
    read_path = sorted(p for p in files if p.startswith(f"{SESSION}/SCANS/2-"))[0]
    with mounted_reading_file_by_file(server, tmp_path, KILL_TIMEOUT, (r"timed out",)) as mount:
        os.listdir((mount.path / read_path).parent)
        os.listdir(mount.path / QC)
        os.listdir(mount.path / "STUDY01")
        callers = (
            (["md5sum", str(mount.path / read_path)], signal.SIGKILL),
            (["ls", "-R", str(mount.path / "STUDY02")], signal.SIGTERM),
            (["mkdir", str(mount.path / "STUDY01" / "SUB077")], signal.SIGKILL),
            ([sys.executable, "-c", WRITE_THEN_DIE, str(mount.path / QC / "killed.txt")], None),
        )
        for command, sig in callers:
            server.pause()
            if sig is None:
                # It kills itself; its close waits for the upload as it dies.
                process = subprocess.Popen(command)
                try:
                    status = process.wait(timeout=BOUND)
                finally:
                    server.resume()
                    process.kill()
                assert status == -signal.SIGKILL
            else:
                assert killed_in_time(server, command, sig) == -sig, command
        wanted = b"written by a process killed before its close" * 100
        assert wait_until(lambda: server_copy(server, "killed.txt") == wanted, "killed.txt not uploaded")
        assert md5_or_none(mount.path / read_path) == files[read_path].digest


def test_a_process_that_exits_normally_waits_for_the_upload_of_its_last_close(fake_xnat_process, tmp_path):
    """Only a killed caller is answered early: the close at a normal exit still waits for the
    upload, so once the process is gone its file is on the server."""
    server = fake_xnat_process
    with mounted(server.url, tmp_path, args=("--timeout", str(KILL_TIMEOUT))) as mount:
        os.listdir(mount.path / QC)
        server.pause()
        process = subprocess.Popen([sys.executable, "-c", WRITE_THEN_EXIT, str(mount.path / QC / "exited.txt")])
        try:
            wait_until(lambda: waiting_for_the_mount(process), "the writer is not waiting for the mount", limit=BOUND)
            time.sleep(2 * TIMEOUT)  # several checks of its caller go by meanwhile
            assert process.poll() is None, "the close at exit was answered before the upload"
        finally:
            server.resume()
        assert process.wait(timeout=BOUND) == 0
        assert server_copy(server, "exited.txt") == b"written before a normal exit" * 100


def md5_of_server_copy(server, name: str) -> str | None:
    data = server_copy(server, name)
    return None if data is None else hashlib.md5(data).hexdigest()


def server_names(server) -> set[str]:
    answer = requests.get(f"{server.url}{QC_FILES}?format=json", auth=(server.username, server.password), timeout=10)
    answer.raise_for_status()
    return {row["Name"] for row in answer.json()["ResultSet"]["Result"]}


def test_changes_failed_against_a_stopped_server_leave_the_mount_showing_what_the_server_holds(
    fake_xnat_process, tmp_path
):
    """mv of a file of ours, then rm, each while the server is stopped: each fails in time, and
    once the server runs again the folder shows exactly the files the server holds, with their
    bytes (a cp during a stop: the first test). Was: ``mv`` uploads the file under the
    new name, then deletes the old one; when that deletion went unanswered, the old name stayed
    hidden for the rest of the TTL although the server still held it, and came back after."""
    server = fake_xnat_process
    with mounted_keeping_listings(server, tmp_path) as mount:
        folder = mount.path / QC
        (folder / "ours.txt").write_bytes(b"ours\n")
        (folder / "victim.txt").write_bytes(b"victim\n")

        def agree() -> bool:
            shown = listed(folder)
            return shown is not None and shown == server_names(server)

        for command in (
            ["mv", str(folder / "ours.txt"), str(folder / "ours_moved.txt")],
            ["rm", str(folder / "victim.txt")],
        ):
            server.pause()
            try:
                failed = finishes_in_time(server, command)
                assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed
            finally:
                server.resume()
            wait_until(agree, f"after {command[0]}, the folder does not show what the server holds")
        assert {"ours.txt", "ours_moved.txt"} <= server_names(server)
        # The mount may still fail fast for a few seconds after the server came back (section 4).
        wait_until(
            lambda: all(md5_or_none(folder / n) == md5_of_server_copy(server, n) for n in server_names(server)),
            "a file does not read as the server holds it",
        )


def test_a_failed_mv_over_a_file_waiting_to_be_uploaded_keeps_that_file(fake_xnat_process, tmp_path):
    """A file written while the server is stopped waits in the spool; ``mv`` of a server file
    over it needs the server's bytes, and fails. The file it would have replaced must stay as
    it was and reach the server once it runs again. Was: its bytes left the spool before the
    server's were fetched, and were lost when that failed."""
    server = fake_xnat_process
    source = tmp_path / "mine.txt"
    source.write_bytes(b"mine\n")
    with mounted_keeping_listings(server, tmp_path) as mount:
        folder = mount.path / QC
        server_file = sorted(os.listdir(folder))[0]
        server.pause()
        try:
            for command in (
                ["cp", str(source), str(folder / "mine.txt")],
                ["mv", str(folder / server_file), str(folder / "mine.txt")],
            ):
                failed = finishes_in_time(server, command)
                assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed
        finally:
            server.resume()
        assert (folder / "mine.txt").read_bytes() == b"mine\n"
        # Sent now rather than at the mount's next retry, which backs off after each failure.
        retried = uploads(mount, "retry", XNAT_USER=server.username, XNAT_PASS=server.password)
        assert retried.returncode == 0, retried.stderr
        assert server_copy(server, "mine.txt") == b"mine\n"
        assert server_file in server_names(server)
