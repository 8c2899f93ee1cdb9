"""Mounting from Python: ``with xnatfs.mount(url, path, **options) as m: ...``.

The mount runs in a daemon process of its own, started exactly as
``xnatfs mount`` starts one, so the caller's process (a notebook, a
pipeline, a trio or asyncio program) never serves FUSE requests itself and
cannot deadlock on its own mount. Leaving the ``with`` block, normally or
by an exception, unmounts and waits for the daemon to finish its uploads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

UNMOUNT_SECONDS = 120.0


class MountError(Exception):
    """The mount could not be started or stopped; the message says why, in one line."""


@dataclass(frozen=True)
class Mount:
    """A running mount: its folder, and what the daemon says about itself."""

    path: Path

    def status(self) -> dict:
        """What ``xnatfs status --json`` shows for this mount."""
        from xnatfs.fs.control import ask

        answer = ask(self.path, {"request": "status"})
        answer.pop("ok", None)
        return answer

    def refresh(self, folder: str | os.PathLike = "", recursive: bool = False) -> int:
        """Forget the cached listings of ``folder`` (relative to the mount, or a path inside it);
        the number of entries it holds now."""
        from xnatfs.fs.control import ask

        relative = os.path.relpath(os.path.join(self.path, folder), self.path)
        answer = ask(
            self.path, {"request": "refresh", "path": "" if relative == "." else relative, "recursive": recursive}
        )
        return answer["entries"]


def _command_line(url: str, path: Path, options: dict) -> list[str]:
    """``xnatfs mount`` arguments for keyword ``options`` (``cache_size="2G"`` → ``--cache-size 2G``)."""
    command = [sys.executable, "-m", "xnatfs", "mount", url, os.fspath(path)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "fuse_options":
            for option in [value] if isinstance(value, str) else value:
                command += ["-o", option]
        elif value is True:
            command.append(flag)
        elif value not in (False, None):
            command += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return command


@contextmanager
def mount(url: str, path: str | os.PathLike, *, password: str | None = None, **options) -> Iterator[Mount]:
    """Mount ``url`` at ``path`` (an empty folder) for the length of the ``with`` block.

    ``options`` are those of ``xnatfs mount`` with underscores: ``user``,
    ``password_file``, ``cache_dir``, ``cache_size``, ``ttl``, ``read_only``,
    ``allow_delete``, ``log_file``, ``config``, ``insecure``, and
    ``fuse_options`` (a list, e.g. ``["allow_other"]``). ``password`` is
    handed to the daemon through its environment, never its command line.
    Raises :class:`MountError` with the command's one-line message when the
    mount cannot start.
    """
    if options.get("foreground"):
        raise ValueError("foreground is not an option here: the mount always runs in its own process")
    mountpoint = Path(path).expanduser().absolute()
    environment = dict(os.environ)
    if password is not None:
        environment["XNAT_PASS"] = password
        if options.get("user"):
            environment["XNAT_USER"] = options["user"]
    started = subprocess.run(
        _command_line(url, mountpoint, options),
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise MountError(_last_line(started.stderr) or f"xnatfs mount failed with status {started.returncode}")
    try:
        yield Mount(mountpoint)
    except BaseException:
        # The block's own exception is what the caller must see: a mount still
        # busy (a file left open) is detached lazily instead of reported.
        if _unmount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", os.fspath(mountpoint)], capture_output=True)
        raise
    problem = _unmount(mountpoint)
    if problem:
        raise MountError(problem)


def _unmount(mountpoint: Path) -> str:
    """Unmount and wait for the daemon; what went wrong, or ""."""
    stopped = subprocess.run(
        [sys.executable, "-m", "xnatfs", "unmount", os.fspath(mountpoint), "--timeout", str(UNMOUNT_SECONDS)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if stopped.returncode == 0:
        return ""
    return _last_line(stopped.stderr) or f"xnatfs unmount failed with status {stopped.returncode}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("xnatfs: ") if lines else ""
