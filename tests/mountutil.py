"""Run a real xnatfs mount in a test, and always take it down again.

``mounted(...)`` starts ``python -m xnatfs mount URL MNT --foreground`` as a
subprocess (credentials through the environment, never argv), waits until
the kernel lists the FUSE mount, and on exit unmounts with fusermount3,
waits for the daemon and falls back to kill + lazy unmount if it hangs.
Everything the daemon could write to a home folder is kept in the test's
temp folder. After a ``with`` block that went well, the daemon's log and
stderr are read: a traceback, or an ERROR line that none of the test's
``expected_errors`` patterns matches, fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from xnatfs.client.connection import XnatConnection
from xnatfs.fs.names import scan_dir_name

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

# "2026-01-01 12:00:00,000 1234 ERROR xnatfs.fs.errno: message", as xnatfs.cli formats its log.
# pyfuse3's line when the kernel no longer waits for the answer to a release: a file or folder
# closed just before the unmount is released while the connection is being torn down. Nothing is lost.
RELEASE_AFTER_UNMOUNT = r"^fuse_release(dir)?\(\): fuse_reply_\* failed with No such file or directory$"
LOG_RECORD = re.compile(r"^\S+ \S+ \d+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")


def fuse_unavailable(device: str = "/dev/fuse") -> str | None:
    """Why this machine cannot mount a FUSE file system; None when it can."""
    if not os.path.exists(device):
        return f"{device} is missing (no FUSE support in this kernel or container)"
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} cannot be opened for reading and writing by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


def fuse_mounted(path: Path | str) -> bool:
    """Whether a FUSE file system is mounted at ``path`` (read from mountinfo, no FUSE traffic)."""
    real = os.path.realpath(os.fspath(path))
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            before, _, after = line.partition(" - ")
            fields = before.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == real and after.startswith("fuse"):
                return True
    return False


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment whose config, state and netrc lookups stay under ``home``."""
    env = dict(os.environ)
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_DATA_HOME": str(home / "data"),
            "NETRC": str(home / "no-netrc"),
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    env.pop("XNAT_USER", None)
    env.pop("XNAT_PASS", None)
    env.update(extra)
    return env


def xnatfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xnatfs", *args]


def uploads(mount: Mount, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``xnatfs uploads ARGS`` on the mount's spool (``env``: extra variables, e.g. credentials)."""
    return subprocess.run(
        xnatfs_command("uploads", *args, "--cache-dir", str(mount.cache_dir)),
        env=isolated_env(mount.home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Mount:
    path: Path
    process: subprocess.Popen
    log_file: Path
    cache_dir: Path
    home: Path

    def log(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def stderr(self) -> str:
        try:
            return self.log_file.with_suffix(".stderr").read_text(errors="replace")
        except OSError:
            return ""


def log_problems(log: str, expected_errors: tuple[str, ...] = ()) -> list[str]:
    """The tracebacks in ``log``, and the ERROR and CRITICAL records no pattern of ``expected_errors`` finds."""
    problems = []
    record = ""
    for line in log.splitlines():
        match = LOG_RECORD.match(line)
        if match:
            record = line
            if match["level"] in ("ERROR", "CRITICAL") and not any(
                re.search(pattern, match["message"]) for pattern in expected_errors
            ):
                problems.append(line)
        elif line.startswith("Traceback (most recent call last)"):
            problems.append(f"traceback after: {record or '(start of log)'}")
    return problems


def check_log(mount: Mount, expected_errors: tuple[str, ...] = ()) -> None:
    """Fail if the daemon logged a traceback or an unexpected error."""
    problems = log_problems(mount.log(), (*expected_errors, RELEASE_AFTER_UNMOUNT))
    problems += [f"on stderr: {line}" for line in log_problems(mount.stderr())]
    if problems:
        raise AssertionError(
            "the daemon logged:\n" + "\n".join(problems) + "\n--- log tail ---\n" + mount.log()[-4000:]
        )


def unmount_quietly(path: Path) -> None:
    """Detach whatever is mounted at ``path``, however broken."""
    for _ in range(50):
        if not fuse_mounted(path):
            return
        done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


@contextmanager
def mounted(
    url: str,
    base: Path,
    *,
    user: str = "admin",
    password: str = "admin",
    ttl: float | None = None,
    cache_dir: Path | None = None,
    cache_size: str | None = None,
    args: tuple[str, ...] = (),
    name: str = "mnt",
    expected_errors: tuple[str, ...] = (),
):
    """Mount ``url`` under ``base/name`` for the length of the ``with`` block.

    ``expected_errors``: regular expressions for the ERROR lines the test provokes on purpose.
    """
    mountpoint = base / name
    mountpoint.mkdir(parents=True, exist_ok=True)
    home = base / "home"
    home.mkdir(exist_ok=True)
    cache_dir = cache_dir or base / "cache"
    log_file = base / f"{name}.log"
    command = xnatfs_command(
        "mount",
        url,
        str(mountpoint),
        "--foreground",
        "--cache-dir",
        str(cache_dir),
        "--log-level",
        "DEBUG",
        "--log-file",
        str(log_file),
    )
    if ttl is not None:
        command += ["--ttl", str(ttl)]
    if cache_size is not None:
        command += ["--cache-size", cache_size]
    command += list(args)
    env = isolated_env(home, XNAT_USER=user, XNAT_PASS=password)
    # A file, not a pipe: a daemon writing more than a pipe holds to a pipe nobody reads would block.
    with open(base / f"{name}.stderr", "w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=str(base), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    mount = Mount(mountpoint, process, log_file, cache_dir, home)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not fuse_mounted(mountpoint):
            if process.poll() is not None:
                err = (base / f"{name}.stderr").read_text(errors="replace")
                raise AssertionError(f"xnatfs exited with {process.returncode}: {err.strip()}\n{mount.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"xnatfs did not mount within {START_TIMEOUT} s\n{mount.log()}")
            time.sleep(0.02)
        yield mount
    finally:
        stop(mount)
    check_log(mount, expected_errors)


def stop(mount: Mount) -> int | None:
    """Unmount and wait for the daemon; returns its exit status (None if it had to be killed)."""
    unmount_quietly(mount.path)
    try:
        mount.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=STOP_TIMEOUT)
        unmount_quietly(mount.path)
        return None
    return mount.process.returncode


@dataclass(frozen=True)
class ServerFile:
    size: int
    digest: str
    uri: str


def server_files(server, *, projects: tuple[str, ...] | None = None) -> dict[str, ServerFile]:
    """Mount-relative path → what the server says about that file."""
    files: dict[str, ServerFile] = {}
    with XnatConnection(server.url, server.username, server.password) as conn:
        for project in conn.list_projects():
            if projects is not None and project.id not in projects:
                continue
            subjects = {s.id: s for s in conn.list_subjects(project.id)}
            for resource in conn.list_resources(f"/data/projects/{project.id}"):
                for remote in conn.list_files(resource.uri):
                    files[f"{project.id}/RESOURCES/{resource.label}/{remote.path}"] = ServerFile(
                        remote.size, remote.digest, remote.uri
                    )
            for experiment in conn.list_experiments(project.id):
                subject = subjects[experiment.subject_id]
                base = f"{project.id}/{subject.label}/{experiment.label}"
                contents = conn.get_experiment_contents(experiment.id)
                where = {}
                for scan in contents.scans:
                    for resource in scan.resources:
                        where[resource.uri] = f"{base}/SCANS/{scan_dir_name(scan.id, scan.type)}/{resource.label}"
                for resource in contents.resources:
                    where[resource.uri] = f"{base}/RESOURCES/{resource.label}"
                for remote in conn.list_files(f"/data/experiments/{experiment.id}", all_levels=True):
                    files[f"{where[remote.resource_uri]}/{remote.path}"] = ServerFile(
                        remote.size, remote.digest, remote.uri
                    )
            for subject in subjects.values():
                for resource in conn.list_resources(f"/data/projects/{subject.project}/subjects/{subject.id}"):
                    for remote in conn.list_files(resource.uri):
                        files[f"{project.id}/{subject.label}/RESOURCES/{resource.label}/{remote.path}"] = ServerFile(
                            remote.size, remote.digest, remote.uri
                        )
    return files


def removed_files_open(folder: Path) -> list[str]:
    """This process's descriptors on files under ``folder`` that have no name any more
    (the cache's parked bytes)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor that listed the folder, gone by now
            continue
        if target.startswith(str(folder.resolve())) and target.endswith("(deleted)"):
            found.append(target)
    return found
