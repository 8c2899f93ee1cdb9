"""Inode numbers for paths, with the kernel's lookup counts.

An inode number is derived from a hash of the entry's path, so the same path
gets the same number for the whole life of a mount (one process) even after
the kernel forgot it and the table dropped it; that keeps the table as small
as what the kernel currently holds. A hash collision with a live entry is
resolved by probing the next number.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyfuse3

from xnatfs.fs.nodes import Node

Path = tuple[str, ...]

_MASK = (1 << 63) - 1
_FIRST_FREE = pyfuse3.ROOT_INODE + 1


@dataclass(slots=True, eq=False)
class InodeEntry:
    path: Path
    node: Node  # the latest snapshot seen for this path
    lookups: int = 0
    # Answers worked out for one node snapshot, reused while that snapshot is asked about.
    attrs: pyfuse3.EntryAttributes | None = None
    attrs_of: Node | None = None
    xattrs: dict[bytes, bytes] | None = None
    xattrs_of: Node | None = None


def _hashed(path: Path) -> int:
    # Python's own hash of the tuple: fast, and stable for the life of the process.
    number = hash(path) & _MASK
    return number if number >= _FIRST_FREE else number + _FIRST_FREE


class InodeTable:
    """What the kernel knows: inode → (path, node, lookup count)."""

    def __init__(self, root: Node):
        self._entries: dict[int, InodeEntry] = {
            pyfuse3.ROOT_INODE: InodeEntry((), root, lookups=1),
        }
        self._by_path: dict[Path, int] = {(): pyfuse3.ROOT_INODE}

    def __len__(self) -> int:
        return len(self._entries)

    def number_for(self, path: Path) -> int:
        """The inode number ``path`` has, or would get if it were remembered now."""
        known = self._by_path.get(path)
        if known is not None:
            return known
        number = _hashed(path)
        while number in self._entries:
            number = number + 1 if number < _MASK else _FIRST_FREE
        return number

    def remember(self, path: Path, node: Node, lookups: int = 1, number: int | None = None) -> int:
        """Record that the kernel got ``lookups`` more references to ``path``
        (whose number the caller may have just asked :meth:`number_for` for)."""
        if number is None:
            number = self.number_for(path)
        entry = self._entries.get(number)
        if entry is None:
            entry = InodeEntry(path, node)
            self._entries[number] = entry
            self._by_path[path] = number
        else:
            entry.node = node
        entry.lookups += lookups
        return number

    def items(self) -> list[tuple[int, InodeEntry]]:
        return list(self._entries.items())

    def get(self, number: int) -> InodeEntry | None:
        return self._entries.get(number)

    def known(self, path: Path) -> tuple[int, InodeEntry] | None:
        """The number and entry of ``path`` if the kernel holds it now."""
        number = self._by_path.get(path)
        return None if number is None else (number, self._entries[number])

    def number_of(self, path: Path) -> int | None:
        return self._by_path.get(path)

    def update(self, number: int, node: Node) -> None:
        entry = self._entries.get(number)
        if entry is not None:
            entry.node = node

    def forget(self, number: int, count: int) -> bool:
        """Drop ``count`` references; True when the entry was removed."""
        if number == pyfuse3.ROOT_INODE:
            return False
        entry = self._entries.get(number)
        if entry is None:
            return False
        entry.lookups -= count
        if entry.lookups > 0:
            return False
        del self._entries[number]
        if self._by_path.get(entry.path) == number:
            del self._by_path[entry.path]
        return True

    def detach(self, path: Path) -> None:
        """The file or folder at ``path`` lost its name (unlinked, removed, or
        renamed over): its inode lives on for the descriptors still open on it
        (or on files that were in it), and what is made under that name next
        gets a number of its own."""
        self._by_path.pop(path, None)

    def attached(self, number: int, entry: InodeEntry) -> bool:
        """Whether the entry still has its path (see :meth:`detach`)."""
        return self._by_path.get(entry.path) == number

    def move(self, old: Path, new: Path) -> None:
        """Re-key every live entry under ``old`` to ``new`` after a rename of ours.

        Only entries that still have their names move: one detached from ``old``
        before (a file renamed over or removed while open) keeps its own inode and
        must not take the new name from the entry that moved there.
        """
        for number, entry in list(self._entries.items()):
            if entry.path[: len(old)] == old and number != pyfuse3.ROOT_INODE and self.attached(number, entry):
                del self._by_path[entry.path]
                entry.path = new + entry.path[len(old) :]
                self._by_path[entry.path] = number
