"""What the file system says to the kernel outside of a handler's return value.

Directory entries go into the kernel's buffer through ``readdir_reply``, the
files of a series zip into its page cache through ``store_pages``, and
cached entries and pages are dropped through the invalidation calls; all of
them need a live FUSE session. The operations hold one :class:`Kernel` and
make these calls only through it, so the handlers can also be driven
without a mount (the tests' ``tests/fsapi.py`` hands them a kernel that
records what it was told).
"""

from __future__ import annotations

import pyfuse3


class Kernel:
    """The FUSE session pyfuse3 serves: every call goes straight to pyfuse3."""

    def readdir_reply(
        self, token: pyfuse3.ReaddirToken, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int
    ) -> bool:
        """Add one entry to a ``readdir`` answer; False when the kernel's buffer is full."""
        return pyfuse3.readdir_reply(token, name, attrs, next_id)

    def invalidate_entry(self, parent_inode: int, name: bytes) -> None:
        """Drop the kernel's entry ``name`` in ``parent_inode`` now (blocking: call from a worker thread)."""
        pyfuse3.invalidate_entry(parent_inode, name)

    def invalidate_entry_async(self, parent_inode: int, name: bytes) -> None:
        """Queue the drop of an entry, for a caller that holds the kernel's lock on its folder."""
        pyfuse3.invalidate_entry_async(parent_inode, name, ignore_enoent=True)

    def store_pages(self, inode: int, data: bytes) -> None:
        """Put ``data`` into the kernel's page cache of ``inode`` as its bytes from offset 0.

        Blocks until the kernel has the pages, so it must not run while a
        read of ``inode`` waits for an answer from the thread calling it.
        """
        pyfuse3.notify_store(inode, 0, data)

    def invalidate_inode(self, inode: int) -> None:
        """Drop the kernel's cached attributes and pages of ``inode`` (blocking)."""
        pyfuse3.invalidate_inode(inode)
