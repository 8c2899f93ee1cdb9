"""The mount's open handles: files and folders the kernel has open, by handle number.

One object holds every table about open things, so a handler asks it
rather than keeping bookkeeping of its own: which handle reads or writes
what, which inodes have open files (an entry unlinked while open keeps
serving its descriptors), which thread opened each file (FUSE names no
caller for a read or a close, see :mod:`xnatfs.fs.callers`), and which
version of a file the kernel was last served per inode (its page cache may
be kept only for the same bytes).
"""

from __future__ import annotations

from collections import Counter

import pyfuse3

from xnatfs.cache.content import CacheKey
from xnatfs.fs.callers import current_caller
from xnatfs.fs.local import LocalHandle
from xnatfs.fs.nodes import Node
from xnatfs.fs.reading import FileReader

Dots = list[tuple[bytes, pyfuse3.EntryAttributes]]  # "." and "..", answered as they were at opendir
Entries = list[tuple[str, bytes, Node]]  # (name, name as the kernel gets it, node), in listing order


# What an inode served when it was opened as a file of ours (written through the mount, or
# copied for writing): the kernel's pages of it may hold bytes no server file's key names.
OUR_BYTES = CacheKey("", -1)


class OpenHandles:
    """Open file and folder handles, the inodes they are open on, and what each inode last served."""

    def __init__(self) -> None:
        self._next = 1
        self._files: dict[int, FileReader | LocalHandle] = {}
        self._file_inodes: dict[int, int] = {}  # file handle → its inode
        self._openers: dict[int, int | None] = {}  # file handle → the thread that opened it
        self._opened: Counter[int] = Counter()  # inode → open file handles on it
        self._folders: dict[int, tuple[tuple[str, ...], Dots, Entries]] = {}
        self._last_served: dict[int, CacheKey] = {}

    def _number(self) -> int:
        number = self._next
        self._next += 1
        return number

    # ---- files ----------------------------------------------------------

    def open_file(self, handle: FileReader | LocalHandle, inode: int) -> int:
        """Keep ``handle`` open on ``inode`` for the caller of the request; its handle number."""
        number = self._number()
        self._files[number] = handle
        self._file_inodes[number] = inode
        self._openers[number] = current_caller()
        self._opened[inode] += 1
        return number

    def file(self, number: int) -> FileReader | LocalHandle | None:
        return self._files.get(number)

    def opener(self, number: int) -> int | None:
        """The thread that opened file handle ``number``, if known."""
        return self._openers.get(number)

    def close_file(self, number: int) -> FileReader | LocalHandle | None:
        """Forget the handle; the handle, for the caller to close (None if it was not open)."""
        inode = self._file_inodes.pop(number, None)
        self._openers.pop(number, None)
        if inode is not None:
            self._opened[inode] -= 1
            if self._opened[inode] <= 0:
                del self._opened[inode]
        return self._files.pop(number, None)

    def is_open(self, inode: int) -> bool:
        """Whether a file handle is open on ``inode``."""
        return inode in self._opened

    def served(self, inode: int, key: CacheKey) -> CacheKey | None:
        """Note that ``inode`` now serves ``key``; what it served before, if anything."""
        previous = self._last_served.get(inode)
        self._last_served[inode] = key
        return previous

    def forget_inode(self, inode: int) -> None:
        """The kernel forgot ``inode``: what it was served no longer matters."""
        self._last_served.pop(inode, None)

    # ---- folders --------------------------------------------------------

    def open_folder(self, path: tuple[str, ...], dots: Dots, entries: Entries) -> int:
        number = self._number()
        self._folders[number] = (path, dots, entries)
        return number

    def folder(self, number: int) -> tuple[tuple[str, ...], Dots, Entries]:
        return self._folders[number]

    def close_folder(self, number: int) -> None:
        self._folders.pop(number, None)
