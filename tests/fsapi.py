"""Drive the file system's pyfuse3 handlers without a kernel.

``FsApi`` builds the operations as a mount does
(:func:`xnatfs.fs.mount.build_operations` over a real connection to the
fake server), runs their background work in a trio nursery, and calls the
handlers as the kernel would: a path is looked up name by name from the
root, a file is opened, written, flushed and released, a folder is opened
and read in several ``readdir`` rounds. What the file system would tell a
live FUSE session goes to :class:`RecordingKernel`, which keeps it for the
test to look at.

A test writes its steps as an ``async def body(fs)`` and hands it to the
``run_fs`` fixture (conftest.py), which runs it under ``trio.run`` and then
fails on any traceback or unexpected ERROR the file system logged.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import pyfuse3
import trio

from xnatfs.fs.kernel import Kernel

READDIR_ROUND = 4  # entries per readdir call: small, so every folder takes several rounds


class ReaddirBuffer(list):
    """The kernel's buffer for one ``readdir`` call: holds ``capacity`` entries."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity


class RecordingKernel(Kernel):
    """A kernel that fills plain readdir buffers and records the pages and invalidations it is given."""

    def __init__(self):
        self.invalidated: list[tuple] = []
        self.stored: dict[int, bytes] = {}  # inode → the bytes put into its page cache

    def readdir_reply(self, token: ReaddirBuffer, name, attrs, next_id) -> bool:
        if len(token) >= token.capacity:
            return False
        token.append((os.fsdecode(name), attrs, next_id))
        return True

    def invalidate_entry(self, parent_inode, name) -> None:
        self.invalidated.append(("entry", parent_inode, os.fsdecode(name)))

    def invalidate_entry_async(self, parent_inode, name) -> None:
        self.invalidated.append(("entry", parent_inode, os.fsdecode(name)))

    def store_pages(self, inode, data) -> None:
        self.stored[inode] = bytes(data)

    def invalidate_inode(self, inode) -> None:
        self.invalidated.append(("inode", inode))

    def invalidated_names(self) -> set[str]:
        return {item[2] for item in self.invalidated if item[0] == "entry"}


def context() -> pyfuse3.RequestContext:
    # Its fields are read-only and zero (root): the operations look at none of them.
    return pyfuse3.RequestContext()


@dataclass
class SetattrFields:
    """What a ``setattr`` request asks to change (pyfuse3's own record cannot be filled in from Python)."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _parent_and_name(path: str) -> tuple[str, str]:
    parts = _parts(path)
    return "/".join(parts[:-1]), parts[-1]


def _raw(name: str) -> bytes:
    return os.fsencode(name)


class FsApi:
    """Path-level calls into one set of operations; paths are relative to the mount's root."""

    def __init__(self, ops, kernel: RecordingKernel):
        self.ops = ops
        self.kernel = kernel
        self.flushes = 0  # flush requests sent
        self.no_flush = False  # the kernel's: set for good by a flush answered ENOSYS

    # ---- names and attributes ----------------------------------------

    async def lookup(self, path: str) -> pyfuse3.EntryAttributes:
        """The attributes the kernel gets by looking up each name of ``path`` in turn."""
        attrs = await self.ops.getattr(pyfuse3.ROOT_INODE, context())
        for name in _parts(path):
            attrs = await self.ops.lookup(attrs.st_ino, _raw(name), context())
            if attrs.st_ino == 0:
                raise pyfuse3.FUSEError(errno.ENOENT)
        return attrs

    async def inode(self, path: str) -> int:
        return (await self.lookup(path)).st_ino

    async def stat(self, path: str) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(await self.inode(path), context())

    async def exists(self, path: str) -> bool:
        try:
            await self.lookup(path)
        except pyfuse3.FUSEError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    async def is_dir(self, path: str) -> bool:
        return stat.S_ISDIR((await self.stat(path)).st_mode)

    async def getxattr(self, path: str, name: str) -> bytes:
        return await self.ops.getxattr(await self.inode(path), name.encode(), context())

    async def listxattr(self, path: str) -> list[str]:
        return [os.fsdecode(name) for name in await self.ops.listxattr(await self.inode(path), context())]

    # ---- folders -------------------------------------------------------

    async def entries(self, path: str, *, round_size: int = READDIR_ROUND) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        """Every entry ``readdir`` gives, "." and ".." included, read in rounds as the kernel does."""
        inode = await self.inode(path)
        handle = await self.ops.opendir(inode, context())
        found = []
        try:
            next_id = 0
            while True:
                buffer = ReaddirBuffer(round_size)
                await self.ops.readdir(handle, next_id, buffer)
                if not buffer:
                    break
                found.extend((name, attrs) for name, attrs, _ in buffer)
                next_id = buffer[-1][2]
        finally:
            await self.ops.releasedir(handle)
        return found

    async def listdir(self, path: str) -> list[str]:
        """The names in a folder, as ``os.listdir`` gives them (no "." and "..")."""
        return [name for name, _ in await self.entries(path) if name not in (".", "..")]

    async def mkdir(self, path: str) -> pyfuse3.EntryAttributes:
        parent, name = _parent_and_name(path)
        return await self.ops.mkdir(await self.inode(parent), _raw(name), stat.S_IFDIR | 0o755, context())

    async def rmdir(self, path: str) -> None:
        parent, name = _parent_and_name(path)
        await self.ops.rmdir(await self.inode(parent), _raw(name), context())

    # ---- files ---------------------------------------------------------

    async def read(self, path: str) -> bytes:
        info = await self.ops.open(await self.inode(path), os.O_RDONLY, context())
        data = bytearray()
        try:
            while True:
                chunk = await self.ops.read(info.fh, len(data), 128 * 1024)
                if not chunk:
                    break
                data += chunk
        finally:
            await self.ops.release(info.fh)
        return bytes(data)

    async def open(self, path: str, flags: int) -> int:
        """A handle on ``path``: created (with ``O_CREAT``) if the lookup finds nothing, as the kernel does."""
        parent, name = _parent_and_name(path)
        if flags & os.O_CREAT and not await self.exists(path):
            info, _attrs = await self.ops.create(
                await self.inode(parent), _raw(name), stat.S_IFREG | 0o644, flags, context()
            )
            return info.fh
        return (await self.ops.open(await self.inode(path), flags & ~os.O_CREAT, context())).fh

    async def close(self, fh: int) -> None:
        """``close(2)``: a flush, whose error the caller sees, then the release whatever happened.

        As the kernel does, a flush answered ENOSYS counts as done, and no more are sent.
        """
        try:
            if not self.no_flush:
                self.flushes += 1
                try:
                    await self.ops.flush(fh)
                except pyfuse3.FUSEError as exc:
                    if exc.errno != errno.ENOSYS:
                        raise
                    self.no_flush = True
        finally:
            await self.ops.release(fh)

    async def write(self, path: str, data: bytes, *, append: bool = False, fsync: bool = False) -> None:
        """Write ``data`` to ``path`` as ``open(path, "wb"/"ab")``, ``write`` and ``close`` do."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        fh = await self.open(path, flags)
        try:
            offset = 0
            while offset < len(data):
                offset += await self.ops.write(fh, offset, data[offset : offset + 128 * 1024])
            if fsync:
                await self.ops.fsync(fh, False)
        except BaseException:
            await self.ops.release(fh)
            raise
        await self.close(fh)

    async def truncate(self, path: str, size: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_size = size
        return await self.ops.setattr(await self.inode(path), attrs, SetattrFields(update_size=True), None, context())

    async def unlink(self, path: str) -> None:
        parent, name = _parent_and_name(path)
        await self.ops.unlink(await self.inode(parent), _raw(name), context())

    async def rename(self, old: str, new: str, flags: int = 0) -> None:
        old_parent, old_name = _parent_and_name(old)
        new_parent, new_name = _parent_and_name(new)
        await self.ops.rename(
            await self.inode(old_parent), _raw(old_name), await self.inode(new_parent), _raw(new_name), flags, context()
        )


async def errno_of(call: Awaitable) -> int:
    """The errno a call fails with; fails the test if it succeeds."""
    try:
        await call
    except pyfuse3.FUSEError as exc:
        return exc.errno
    raise AssertionError("the call succeeded, an error was expected")


class LogWatch(logging.Handler):
    """Collects the file system's log records; a test declares the ERROR lines it expects."""

    def __init__(self, expected_errors: Iterable[str] = ()):
        super().__init__(logging.DEBUG)
        self.expected = [re.compile(pattern) for pattern in expected_errors]
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records)

    def unexpected(self) -> list[str]:
        """Records that carry a traceback, and ERROR records no expected pattern matches."""
        bad = []
        for record in self.records:
            message = record.getMessage()
            if record.exc_info:
                bad.append(f"traceback: {message}")
            elif record.levelno >= logging.ERROR and not any(p.search(message) for p in self.expected):
                bad.append(f"{record.levelname}: {message}")
        return bad


def run_fs(ops, body: Callable[[FsApi], Awaitable[None]]) -> RecordingKernel:
    """Run ``body`` against ``ops`` under trio, with the operations' background work started."""
    kernel = RecordingKernel()
    ops.kernel = kernel
    failure: Exception | None = None

    async def main() -> None:
        nonlocal failure
        async with trio.open_nursery() as nursery:
            ops.start_background(nursery)
            try:
                await body(FsApi(ops, kernel))
            except Exception as exc:
                failure = exc  # raised below as it is, not inside an exception group
            ops.unmounted()
            nursery.cancel_scope.cancel()

    trio.run(main)
    if failure is not None:
        raise failure
    return kernel
