"""The pyfuse3 handlers: the kernel's requests answered from XNAT.

Everything blocking (HTTP, the content cache, the spool, big disk reads)
runs in trio worker threads under one capacity limiter; every handler is
wrapped by :func:`fuse_handler`, so whatever goes wrong becomes an errno and
a log line and never stops the event loop. The daemon never touches its own
mountpoint; kernel caches are invalidated through :class:`xnatfs.fs.kernel.Kernel`.

What the kernel keeps: entries and attributes for the listing TTL (files
of our own, whose size changes as they are written, not at all), names
found missing for the negative TTL, and a file's pages only while it is
served the same bytes (``keep_cache``). A rename through the mount moves
the kernel's entry itself; a server change shows once the TTL has run
out. Entries are dropped from the kernel earlier (pyfuse3's
``invalidate_entry``/``invalidate_inode``) only by ``xnatfs refresh``
(:mod:`xnatfs.fs.control`).

Reading lives here; the handlers that change things are answered by a
:class:`~xnatfs.fs.mutations.Mutations` this object hands them to. Open
files and folders are kept in one :class:`~xnatfs.fs.handles.OpenHandles`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import resource
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO, cast

import pyfuse3
import trio

from xnatfs.cache.content import CachedFile, CacheKey, ContentCache
from xnatfs.cache.spool import UploadSpool
from xnatfs.cache.uploader import Uploader, UploadRetries
from xnatfs.client.models import RemoteFile
from xnatfs.client.parts import PartPlan, PartTarget
from xnatfs.fs.control import REFRESH_NAME, refresh
from xnatfs.fs.deadlines import RequestDeadlines, asked_by, bounded
from xnatfs.fs.errno import fuse_handler, never_waits
from xnatfs.fs.handles import OpenHandles
from xnatfs.fs.inodes import InodeEntry, InodeTable
from xnatfs.fs.kernel import Kernel
from xnatfs.fs.local import LocalHandle, Overlay, WrittenTimes
from xnatfs.fs.mutations import Mutations, ReadSide
from xnatfs.fs.nodes import DirNode, FileNode, Listing, Node
from xnatfs.fs.readahead import raise_read_ahead
from xnatfs.fs.reading import HotFiles, ReadHandle
from xnatfs.fs.series import SeriesFetcher
from xnatfs.fs.settings import MountSettings
from xnatfs.fs.tree import Tree
from xnatfs.fs.writing import Writer
from xnatfs.fs.xattrs import NAMESPACE_BYTES, PREFIX_BYTES, encoded_xattrs

if TYPE_CHECKING:
    from xnatfs.fs.bidsview import BidsView

logger = logging.getLogger(__name__)

# Reported as a file's st_blksize: cp, cat and Python's open then move 1 MiB per request (the largest
# FUSE read and write this mount negotiates) instead of 128 KiB.
BLOCK_SIZE = 1 << 20
# A folder's: glibc's opendir sizes its buffer by it, and one of 1 MiB per folder (mapped and unmapped
# each time) made a warm walk a fifth slower; readdir answers come a page at a time anyway.
FOLDER_BLOCK_SIZE = 4096
HOT_FILES_MAX = 16_384
HOT_BYTES = 1 << 30
# A file fetched in parts is cut into at least this many parts per stream, so the streams finish together.
PARTS_PER_STREAM = 4
_NS = 1_000_000_000


def hot_files_limit() -> int:
    """How many files to keep open after their last reader.

    Every file of a large series: a DTI series has thousands, and converters
    read a series several times over, so a smaller set lets each file go before
    it is read again (and a zip running ahead of its reader, before it is read
    once). At most half the descriptors the daemon may hold; the rest are for
    readers, the cache and the network.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return HOT_FILES_MAX
    return min(HOT_FILES_MAX, soft // 2)


class XnatOperations(pyfuse3.Operations):
    """Answers the kernel for one mount.

    ``nursery`` must be set to a running trio nursery before the file system
    serves requests (see :meth:`start_background`); background work
    (reading ahead, retrying uploads) is started in it.
    """

    enable_writeback_cache = False
    enable_acl = False
    supports_dot_lookup = False

    def __init__(self, tree: Tree, cache: ContentCache, settings: MountSettings, spool: UploadSpool):
        super().__init__()
        self.tree = tree
        self.cache = cache
        self.settings = settings
        self.server = settings.url.rstrip("/")
        self.connection = tree.connection
        self.limiter = tree.limiter
        # A disk smaller than --cache-size bounds the cache instead: files held open cannot be evicted.
        room = min(settings.cache_size, cache.disk_size())
        self.hot = HotFiles(max_files=hot_files_limit(), max_bytes=min(room // 8, HOT_BYTES))
        self.series = SeriesFetcher(
            tree.connection,
            cache,
            self.cache_key,
            tree.limiter,
            max_bytes=min(settings.series_zip_size, room // 4),
            large_file_bytes=settings.large_file_size,
            keep_open=self._keep_open,
            server=self.server,
            early_bytes=min(settings.series_early_size, settings.series_zip_size, settings.cache_size // 4),
            early_wait=settings.series_early_wait,
        )
        self.spool = spool
        self.uploader = Uploader(spool, tree.connection)
        self.retries = UploadRetries(
            self.uploader,
            self.server,
            timeout=settings.timeout,
            limiter=tree.limiter,
            after_round=self._uploads_retried,
        )
        shares_disk = os.stat(spool.directory).st_dev == os.stat(cache.directory).st_dev
        self.writer = Writer(
            spool,
            self.uploader,
            max_file_size=settings.max_file_size,
            make_disk_room=cache.make_disk_room if shares_disk else None,
        )
        server_digest = hashlib.sha256(self.server.encode()).hexdigest()[:16]
        self.overlay = Overlay(settings.ttl, WrittenTimes(path=cache.directory / "times" / f"{server_digest}.json"))
        self.inodes = InodeTable(tree.root)
        self.kernel = Kernel()
        self.nursery: trio.Nursery | None = None
        self.deadlines = RequestDeadlines(settings.timeout)
        self._uid = os.getuid()
        self._gid = os.getgid()
        self.handles = OpenHandles()
        read = ReadSide(
            entry=self._entry,
            fresh=self._fresh,
            child=self._lookup,
            listing=self._listing,
            attributes=self.attributes,
            read_handle=self._read_handle,
        )
        self.changes = Mutations(
            read=read,
            settings=settings,
            server=self.server,
            tree=tree,
            overlay=self.overlay,
            inodes=self.inodes,
            handles=self.handles,
            writer=self.writer,
            spool=spool,
            retries=self.retries,
            series=self.series,
            cache=cache,
            hot=self.hot,
            cache_key=self.cache_key,
            drop_kernel_entry=self._drop_kernel_entry,
            in_background=self._in_background,
        )
        self.bids: BidsView | None = None  # when the mount shows a BIDS view
        self.cache_hits = 0  # opens served from the content cache, for `xnatfs status`
        self.cache_misses = 0

    # ---- helpers ------------------------------------------------------

    def _in_background(self, job: Callable[[], Awaitable[None]]) -> None:
        """Start ``job`` beside the requests (not before the mount runs, as when tests
        call the handlers alone); it must catch its own errors."""
        if self.nursery is not None:
            self.nursery.start_soon(job)

    def _drop_kernel_entry(self, parent_inode: int, name: str) -> None:
        """Queue the drop of the kernel's entry ``name`` in ``parent_inode`` (safe inside a handler)."""
        self.kernel.invalidate_entry_async(pyfuse3.InodeT(parent_inode), os.fsencode(name))

    def _entry(self, inode: int) -> InodeEntry:
        entry = self.inodes.get(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return entry

    async def _listing(self, node: Node) -> Listing:
        """A directory's entries: XNAT's listing with our own changes on top."""
        assert isinstance(node, DirNode)  # callers have checked is_dir
        for gone in self.overlay.expire():
            gone.close()
        return self.overlay.merge(node, await self.tree.children(node))

    async def _lookup(self, node: Node, name: str) -> Node | None:
        return (await self._lookup_among(node, name))[0]

    async def _lookup_among(self, node: Node, name: str) -> tuple[Node | None, Listing | None]:
        """The entry ``name`` of folder ``node``, and the listing it was found in (None when
        the tree could answer from that entry's own records without listing the folder)."""
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.overlay_place is None:
            # Nothing of ours is ever shown here: the tree's answer is the whole answer.
            return await self.tree.lookup(node, name)
        listing = await self._listing(node)
        return listing.get(name), listing

    async def _current(self, inode: int, entry: InodeEntry) -> Node:
        """The entry's node as the (possibly reloaded) parent listing has it now."""
        return (await self._current_among(inode, entry))[0]

    async def _current_among(self, inode: int, entry: InodeEntry) -> tuple[Node, Listing | None]:
        """:meth:`_current`, and the parent's listing it was found in (None where it has no parent)."""
        if not entry.path or not self.inodes.attached(inode, entry):
            # A file removed or renamed over while open has no name to look up.
            return entry.node, None
        parent = self._parent(entry)
        if parent is None:
            return entry.node, None
        node, siblings = await self._lookup_among(parent.node, entry.path[-1])
        if node is None:
            if self.handles.is_open(inode):
                # Unlinked while open: the open descriptors keep using what they opened.
                return entry.node, None
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry.node = node
        return node, siblings

    async def _fresh(self, inode: int, entry: InodeEntry) -> Node:
        """Like :meth:`_current`, with every ancestor reloaded first.

        Writes use it: a parent renamed meanwhile must not lend its old
        label to a call that names it.
        """
        chain = [(inode, entry)]
        while chain[-1][1].path:
            parent = self._parent(chain[-1][1])
            if parent is None:
                break
            number = self.inodes.number_of(parent.path)
            assert number is not None  # _parent found it by this number
            chain.append((number, parent))
        node = entry.node
        for number, link in reversed(chain):
            node = await self._current(number, link)
        return node

    def _parent(self, entry: InodeEntry) -> InodeEntry | None:
        number = self.inodes.number_of(entry.path[:-1])
        return self.inodes.get(number) if number is not None else None

    def _keep_open(self, key: CacheKey, cached: CachedFile) -> None:
        for surplus in self.hot.keep(key, cached):
            surplus.close()

    def cache_key(self, remote: RemoteFile) -> CacheKey:
        """Cache entries are named by server and path: one cache folder may serve several servers."""
        return CacheKey(self.server + remote.uri, remote.size, remote.digest)

    def _writable(self, node: Node) -> bool:
        return not (self.settings.read_only or node.read_only)

    def _attributes_of(self, inode: int, entry: InodeEntry, node: Node) -> pyfuse3.EntryAttributes:
        """:meth:`attributes`, reused while the entry's node is the same snapshot.

        Only a folder's link count can change under the same snapshot (when
        its own listing loads); our own files change all the time and are
        never reused. pyfuse3 copies the answer into its reply at once.
        """
        if node.volatile:
            return self.attributes(inode, node)
        if entry.attrs_of is not node:
            fresh = entry.attrs = self.attributes(inode, node)
            entry.attrs_of = node
            return fresh
        attrs = entry.attrs
        assert attrs is not None  # set together with attrs_of
        if isinstance(node, DirNode):
            attrs.st_nlink = self._nlink(node)
        return attrs

    def _nlink(self, node: DirNode) -> int:
        """A folder's link count: 2 + its sub-folders, ours (not on XNAT yet) included."""
        ours = self.overlay.local_subfolders(node)
        if not ours:
            return self.tree.known_nlink(node)
        listed = self.tree.known_subdirs(node)
        if listed is None:
            return max(self.tree.known_nlink(node), 2 + len(ours))
        return 2 + len(ours | listed)

    def attributes(self, inode: int, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        writable = self._writable(node)
        if isinstance(node, DirNode):
            attrs.st_mode = stat.S_IFDIR | (0o755 if writable else 0o555)
            attrs.st_nlink = self._nlink(node)
            attrs.st_size = 0
            attrs.st_blksize = FOLDER_BLOCK_SIZE
        else:
            attrs.st_mode = stat.S_IFREG | (0o644 if writable else 0o444)
            attrs.st_nlink = 1
            attrs.st_size = node.size
            attrs.st_blksize = BLOCK_SIZE
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        local = node.staged
        # A file of ours shows its last write, which its node (made once) does not follow.
        stamp = int((node.mtime if local is None else local.mtime) * _NS)
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = stamp
        # Our own files change under the kernel's eyes: it must ask again.
        timeout = 0.0 if node.volatile else self.settings.ttl
        attrs.entry_timeout = timeout
        attrs.attr_timeout = timeout
        return attrs

    def _negative(self) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = 0
        attrs.entry_timeout = self.settings.negative_ttl
        return attrs

    # ---- names and attributes ----------------------------------------

    @fuse_handler
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._entry(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            path, node = parent.path, parent.node
        elif text == "..":
            path = parent.path[:-1]
            node = self._entry(self.inodes.number_of(path) or pyfuse3.ROOT_INODE).node
        elif text == REFRESH_NAME and parent.node.is_dir:
            return await self._refresh_by_name(parent)
        else:
            found = await self._lookup(parent.node, text)
            if found is None:
                return self._negative()
            path, node = parent.path + (text,), found
            if found.series is not None:
                self._start_series_early(path, found)
        inode = self.inodes.remember(path, node)
        return self._attributes_of(inode, self._entry(inode), node)

    async def _refresh_by_name(self, parent: InodeEntry) -> pyfuse3.EntryAttributes:
        """Looking up the magic name refreshes its folder (for file managers); it never exists."""
        await refresh(self, "/".join(parent.path), recursive=False, in_request=True)
        attrs = self._negative()
        attrs.entry_timeout = 0
        return attrs

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        # Not a request anyone waits for: pyfuse3 wants no exception at all here.
        try:
            for inode, count in inode_list:
                if self.inodes.forget(inode, count):
                    self.handles.forget_inode(inode)
        except Exception:
            logger.exception("forget failed")

    @fuse_handler
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        entry = self._entry(inode)
        node = await self._current(inode, entry)
        return self._attributes_of(inode, entry, node)

    @never_waits
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext | None = None) -> bytes:
        if not name.startswith(PREFIX_BYTES):
            # ls -l asks every entry for security.selinux and ACLs, and stops asking on
            # a device that answers "not supported" (ENOSYS instead would make the
            # kernel stop passing on any getxattr, user.xnat.* included).
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR if name.startswith(NAMESPACE_BYTES) else errno.ENOTSUP)
        value = encoded_xattrs(self._entry(inode)).get(name)
        if value is None:
            # Scans and resources found by a search learn the rest from their own listing.
            described = await self.deadlines.run(self._described_for, inode, ctx.pid if ctx else None)
            value = encoded_xattrs(described).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_handler
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None) -> list[bytes]:
        return list(encoded_xattrs(await self._described(inode)))

    async def _described_for(self, inode: int, caller: int | None) -> InodeEntry:
        """:meth:`_described` as a request of thread ``caller`` (run under the request bound)."""
        asked_by(caller)
        return await self._described(inode)

    async def _described(self, inode: int) -> InodeEntry:
        """The entry, its node completed with what only the session's own listing says."""
        entry = self._entry(inode)
        node = await self.tree.described(entry.node)
        if node is not entry.node:
            entry.node = node
        return entry

    @fuse_handler
    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @fuse_handler
    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Report the space of the disk holding the cache and spool: what can be staged."""
        stats = pyfuse3.StatvfsData()
        try:
            local = await trio.to_thread.run_sync(os.statvfs, self.settings.cache_dir, limiter=self.limiter)
        except OSError:
            local = None
        stats.f_bsize = BLOCK_SIZE
        stats.f_frsize = local.f_frsize if local else 4096
        stats.f_blocks = local.f_blocks if local else 0
        stats.f_bfree = local.f_bfree if local else 0
        stats.f_bavail = 0 if self.settings.read_only or local is None else local.f_bavail
        stats.f_files = stats.f_ffree = stats.f_favail = 0
        stats.f_namemax = 255
        return stats

    # ---- directories --------------------------------------------------

    @fuse_handler
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        entry = self._entry(inode)
        node, siblings = await self._current_among(inode, entry)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.holds_series:
            self.tree.walks.note_listed(entry.path)
        elif node.series is not None:
            self._start_series_early(entry.path, node)
        listing = await self._listing(node)
        path = entry.path
        if node.reads_ahead and self.nursery is not None:
            # The siblings after this folder are where a walk goes next.
            following = self.tree.walks.following(path[:-1], path[-1], siblings) if siblings is not None else []
            self.tree.walks.read_ahead(self.nursery, listing, following)
        # The kernel adds no "." and ".." of its own; they take no lookup reference.
        parent_number = self.inodes.number_for(path[:-1])
        parent = self.inodes.get(parent_number)
        dots = [
            (b".", self._attributes_of(inode, entry, node)),
            (
                b"..",
                self._attributes_of(parent_number, parent, parent.node)
                if parent is not None
                else self.attributes(parent_number, node),
            ),
        ]
        return self.handles.open_folder(path, dots, listing.named())

    def _start_series_early(self, path: tuple[str, ...], node: Node) -> None:
        """A scan's resource folder named outside a walk: its series zip starts now, while its
        file listing may still be on its way (bounded: see :meth:`SeriesFetcher.start_early`)."""
        nursery, series_key, resource = self.nursery, node.series_key, node.series
        if nursery is None or series_key is None or resource is None or self.tree.walks.listed(path[:-1]):
            return
        resource_uri = resource.uri

        async def files() -> list[RemoteFile]:
            listing = cast(list[RemoteFile], await self.tree.raw(series_key))
            return [f for f in listing if f.resource_uri == resource_uri]

        self.series.start_early(nursery, resource, files)

    @never_waits
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path, dots, items = self.handles.folder(fh)
        reply = self.kernel.readdir_reply
        for index in range(start_id, len(dots)):
            name_bytes, attrs = dots[index]
            if not reply(token, name_bytes, attrs, index + 1):
                return
        inodes = self.inodes
        first = len(dots) + 1
        for index in range(max(start_id - len(dots), 0), len(items)):
            name, name_bytes, node = items[index]
            child_path = path + (name,)
            known = inodes.known(child_path)
            if known is None:
                inode = inodes.number_for(child_path)
                if not reply(token, name_bytes, self.attributes(inode, node), first + index):
                    break
                inodes.remember(child_path, node, number=inode)
            else:
                # Warm: the kernel already holds this entry; one more reference to it.
                inode, entry = known
                if not reply(token, name_bytes, self._attributes_of(inode, entry, node), first + index):
                    break
                entry.node = node
                entry.lookups += 1

    @never_waits
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.handles.close_folder(fh)

    # ---- files --------------------------------------------------------

    @fuse_handler
    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        entry = self._entry(inode)
        node = await self._current(inode, entry)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing or node.staged is not None:
            return await self.changes.open_local(inode, node, flags)
        return await self._open_for_reading(inode, node)

    async def _open_for_reading(self, inode: int, node: Node) -> pyfuse3.FileInfo:
        handle = await node.reader(self, inode)
        number = self.handles.open_file(handle, inode)
        previous = self.handles.served(inode, handle.key)
        # The kernel may keep pages it has for this inode only if they hold these same bytes.
        return pyfuse3.FileInfo(fh=number, keep_cache=previous is None or previous == handle.key)

    async def server_file_handle(self, inode: int | None, remote: RemoteFile) -> ReadHandle:
        """A server file open for reading: from the cache, its series' zip, or its own download."""
        return await self._read_handle(inode, remote)

    async def _read_handle(self, inode: int | None, remote: RemoteFile) -> ReadHandle:
        key = self.cache_key(remote)
        flight = self.series.opening(remote.resource_uri)
        if flight is not None and inode is not None:
            if flight.pages is None:
                flight.pages = self._series_pages(inode, remote)
            # The zip under way hands the file over checked, then open (see HotFiles): no use
            # looking on disk first.
            ready = flight.event_for(remote.uri)
            if ready is not None and not ready.is_set():
                await bounded(ready.wait(), moving=flight.transfer)
            checked = flight.checked.get(key)
            if checked is not None:
                self.cache_hits += 1
                return ReadHandle.from_checked(key, checked)
        handle = await ReadHandle.from_cache(self.cache, key, self.limiter, self.hot)
        if handle is None:
            self.cache_misses += 1
        else:
            self.cache_hits += 1
        if handle is None and inode is not None:
            handle = await self._from_series(inode, remote, key)
        if handle is None:
            download = self._downloader(remote)

            handle = await ReadHandle.download(
                self.cache, key, download, self.limiter, large_file_bytes=self.settings.large_file_size
            )
        return handle

    def _series_pages(self, inode: int, opened: RemoteFile) -> Callable[[RemoteFile, CacheKey, bytes], None] | None:
        """Where the files of ``opened``'s series go into the kernel's page cache: beside
        ``opened``, as the kernel sees it at ``inode``; None where the mount's names are not
        the files' own."""
        entry = self.inodes.get(inode)
        parts = tuple(opened.path.split("/"))
        if entry is None or len(entry.path) <= len(parts) or entry.path[-len(parts) :] != parts:
            return None
        folder = entry.path[: -len(parts)]

        def store(remote: RemoteFile, key: CacheKey, data: bytes) -> None:
            self._store_pages(folder + tuple(remote.path.split("/")), remote, key, data)

        return store

    def _store_pages(self, path: tuple[str, ...], remote: RemoteFile, key: CacheKey, data: bytes) -> None:
        """Give the kernel a series file's checked bytes, so reading it asks nothing of us.

        Only for a file the kernel knows as this same version and nobody has
        open: a read of an open file may be waiting for this loop, and the
        kernel holds the pages it reads into until it is answered.
        """
        known = self.inodes.known(path)
        if known is None:
            return
        inode, entry = known
        node = entry.node
        if not isinstance(node, FileNode) or node.file != remote or self.handles.is_open(inode):
            return
        try:
            self.kernel.store_pages(inode, data)
        except OSError as exc:  # the kernel forgot the inode meanwhile, or cannot store pages
            logger.debug("kernel did not take the pages of %s: %s", remote.uri, exc)
            return
        self.handles.served(inode, key)

    def _downloader(self, remote: RemoteFile) -> Callable[[BinaryIO], None]:
        """How the cache fetches ``remote``: a large file as several ranged streams where the server allows."""
        connection, settings = self.connection, self.settings
        if remote.size < settings.parallel_download_size or connection.supports_range is False:

            def download(fileobj: BinaryIO) -> None:
                connection.download(remote.uri, fileobj)

            return download
        part_size = max(settings.download_part_size, remote.size // (settings.download_streams * PARTS_PER_STREAM))
        plan = PartPlan(remote.size, part_size, settings.download_streams)

        def download_in_parts(fileobj: BinaryIO) -> None:
            # The cache's entry writer hands out a writer per part (ContentCache.fetch).
            connection.download_in_parts(remote.uri, cast(PartTarget, fileobj), plan)

        return download_in_parts

    async def _from_series(self, inode: int, remote: RemoteFile, key: CacheKey) -> ReadHandle | None:
        """On a miss in a scan resource: zip the whole series once, or wait for the zip under way."""
        flight = self.series.running(remote.resource_uri)
        if flight is not None:
            ready = flight.event_for(remote.uri)
            if ready is None:
                return None
            await bounded(ready.wait(), moving=flight.transfer)
            return await ReadHandle.from_cache(self.cache, key, self.limiter, self.hot)
        entry = self.inodes.get(inode)
        parent = self._parent(entry) if entry is not None and entry.path else None
        series_key = parent.node.series_key if parent is not None else None
        if series_key is None:
            return None
        # A scan resource's series key names the session's file listing.
        listing = cast(list[RemoteFile], await self.tree.raw(series_key))
        files = [f for f in listing if f.resource_uri == remote.resource_uri]
        if self.nursery is not None and self.series.eligible(files):
            self.series.start(self.nursery, remote.resource_uri, files, fetched_alone=remote)
        return None

    @fuse_handler
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        asked_by(self.handles.opener(fh))
        handle = self.handles.file(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(handle, LocalHandle):
            return await trio.to_thread.run_sync(self.writer.read, handle.local, off, size, limiter=self.limiter)
        return await handle.read(off, size, self.limiter)

    @never_waits
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.handles.close_file(fh)
        if isinstance(handle, LocalHandle):
            # A file written here is uploaded at its last close: that waits on the server.
            await self.deadlines.run(self.changes.release_local, handle)
        elif handle is not None:
            await handle.close(self.limiter, self.hot)

    # ---- changes: answered by self.changes ------------------------------

    @fuse_handler
    async def create(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        return await self.changes.create(parent_inode, name, mode, flags, ctx)

    @fuse_handler
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        asked_by(self.handles.opener(fh))
        return await self.changes.write(fh, off, buf)

    @never_waits
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        if self.settings.read_only:
            # Nothing is ever written here: ENOSYS tells the kernel to send no more
            # flushes, which spares every later close a round trip to the daemon.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        # Every close flushes; only a file written here has anything to send.
        if isinstance(self.handles.file(fh), LocalHandle):
            await self.deadlines.run(self._flush_written, fh)

    async def _flush_written(self, fh: pyfuse3.FileHandleT) -> None:
        asked_by(self.handles.opener(fh))
        await self.changes.flush(fh)

    @fuse_handler
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        asked_by(self.handles.opener(fh))
        await self.changes.fsync(fh, datasync)

    @fuse_handler
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return await self.changes.setattr(inode, attr, fields, fh, ctx)

    @fuse_handler
    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self.changes.mkdir(parent_inode, name, mode, ctx)

    @fuse_handler
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.changes.rmdir(parent_inode, name, ctx)

    @fuse_handler
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.changes.unlink(parent_inode, name, ctx)

    @fuse_handler
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: bytes,
        parent_inode_new: pyfuse3.InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.changes.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx)

    @fuse_handler
    async def symlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self.changes.symlink(parent_inode, name, target, ctx)

    @fuse_handler
    async def link(
        self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self.changes.link(inode, new_parent_inode, new_name, ctx)

    @fuse_handler
    async def mknod(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self.changes.mknod(parent_inode, name, mode, rdev, ctx)

    # ---- background work ------------------------------------------------

    def start_background(self, nursery: trio.Nursery) -> None:
        """Start the request bound's watch, the uploads' retries, the keeping of written
        times and the expiry of listings in ``nursery``; the BIDS view, if shown, converts in it."""
        self.nursery = nursery
        self.tree.nursery = nursery
        if self.bids is not None:
            self.bids.nursery = nursery
        nursery.start_soon(self.deadlines.watch)
        nursery.start_soon(self.changes.run_uploads)
        nursery.start_soon(self.changes.keep_times)
        nursery.start_soon(self.tree.let_expired_go)

    def unmounted(self) -> None:
        """The file system is unmounted: what waited for its readers goes on without them."""
        self.series.write_held()

    def init(self) -> None:
        # pyfuse3 calls this while answering the kernel's INIT, which sets the
        # read-ahead; it can only be raised once that answer is in.
        if self.settings.read_ahead and self.nursery is not None:
            self.nursery.start_soon(
                raise_read_ahead, str(self.settings.mountpoint), self.settings.read_ahead, self.limiter
            )

    async def _uploads_retried(self) -> None:
        await self.changes.uploads_retried()
