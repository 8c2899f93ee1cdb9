"""Small file-system helpers shared by the content cache and the upload spool.

Both keep their state only in files (no database), so that several processes,
possibly on several machines over NFS, can share one folder. Coordination uses
``flock``: on Linux NFS clients it is carried by POSIX byte-range locks, which
the server arbitrates, so it holds across machines too. Exclusive locks are
always taken on descriptors opened for writing, because NFS refuses a write
lock on a read-only descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    return path


def disk_free(path: Path) -> int:
    """Bytes an unprivileged process may still write on the disk holding ``path``."""
    disk = os.statvfs(path)
    return disk.f_bavail * disk.f_frsize


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new
    content, never a mix, even after a crash. The file is 0600.

    With ``durable`` the new content also survives a power loss once this
    returns; without it a process killed afterwards still leaves it intact
    (the kernel keeps it), but a power loss may bring back the old one.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def try_lock_exclusive(path: Path) -> int | None:
    """Open ``path`` and take an exclusive lock without waiting.

    Returns the descriptor holding the lock, or None when the file is gone or
    somebody else holds a lock on it.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def lock_named(path: Path) -> int:
    """Take an exclusive lock on the lock file ``path``, waiting as long as it takes.

    The holder removes the file before unlocking (see :func:`unlock_named`),
    so a waiter that wakes up on a file that is no longer linked starts over;
    this way lock files do not pile up and two holders never coexist.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def unlock_named(fd: int, path: Path) -> None:
    """Release a lock taken with :func:`lock_named`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


def remove_unlocked(folder: Path, skip: set[Path] | frozenset[Path] = frozenset()) -> int:
    """Delete every file in ``folder`` that nobody holds a lock on.

    Used for leftovers of crashed processes: partial downloads, lock files.
    Returns how many were removed.
    """
    removed = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        path = folder / name
        if path in skip:
            continue
        fd = try_lock_exclusive(path)
        if fd is None:
            continue
        try:
            if same_file(fd, path):
                os.unlink(path)
                removed += 1
        finally:
            os.close(fd)
    return removed
