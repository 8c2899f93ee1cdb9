"""How each directory of the mount is listed from XNAT.

A listing costs one request per directory level: the raw listings the
client returns are kept in a :class:`ListingCache` under their keys
(:mod:`xnatfs.fs.keys`, each of which knows how it is loaded), and every
directory's entries are derived from them by the directory's kind
(:mod:`xnatfs.fs.nodes`) and memoised for as long as the raw listings they
came from are the current ones. The tree does the same for every kind of
directory; during a walk, :mod:`xnatfs.fs.walks` may answer a raw listing
from a project-wide search instead.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import cachetools
import trio

from xnatfs.cache.listing import MAX_ROWS, ListingCache, rows
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import Experiment, RemoteFile
from xnatfs.fs import names
from xnatfs.fs.deadlines import bounded
from xnatfs.fs.keys import ListingKey, files_key
from xnatfs.fs.nodes import DirNode, FileTree, Listing, Node, ProjectDir, RootDir
from xnatfs.fs.walks import Walks

logger = logging.getLogger(__name__)


class Tree:
    """Lists directories of the mount from XNAT, through the listing cache.

    ``connection``'s calls block and run in worker threads under ``limiter``.
    """

    def __init__(
        self,
        connection: ArchiveClient,
        listings: ListingCache,
        limiter: trio.CapacityLimiter,
        *,
        started_at: float,
        memo_rows: int = 4 * MAX_ROWS,
    ):
        self.connection = connection
        self.listings = listings
        self.limiter = limiter
        self.started_at = started_at
        self.root = RootDir(mtime=started_at)
        self.walks = Walks(connection, listings, limiter, self._children_and_companions)
        self.nursery: trio.Nursery | None = None  # where companion listings load; set when serving
        # What is worked out of raw listings, each memo as ``(raw listings it was built from, what
        # was built, ...)``. Bounded by rows like the listing cache (see _memo_rows): a memo keeps
        # its raw listings in memory after the listing cache has let them go, and memos that share
        # one (the scan folders of one session) each count it, so the bound is the larger. Kept no
        # longer than a listing: built from listings no older than itself, it is of no use after.
        self._memo: cachetools.TTLCache[Hashable, tuple[Any, ...]] = cachetools.TTLCache(
            maxsize=memo_rows, ttl=listings.ttl, timer=listings.now, getsizeof=_memo_rows
        )
        self._reported: cachetools.LRUCache[Hashable, bool] = cachetools.LRUCache(maxsize=10_000)
        # Views a project folder shows beside its subjects: name → node for a project.
        self.views: dict[str, Callable[[ProjectDir], Node]] = {}
        # Folder → the one name of it found from that name's own answers lately (see lookup).
        self._named_alone: cachetools.TTLCache[Hashable, str] = cachetools.TTLCache(maxsize=4096, ttl=listings.ttl)

    # ---- raw listings -------------------------------------------------

    async def raw(self, key: ListingKey) -> object:
        cached = self.listings.get(key)
        if cached is not None:
            return cached
        found = await self.walks.from_search(key)
        if found is not None:
            return found
        return await self.direct(key)

    async def direct(self, key: ListingKey) -> object:
        """A raw listing from its own request (searches' answers are never kept under its key)."""
        return await bounded(self.listings.get_or_load(key, lambda: key.load(self.connection), self.limiter))

    async def _raws(self, keys: Sequence[ListingKey]) -> tuple[object, ...]:
        cached = tuple(self.listings.get(key) for key in keys)
        if all(value is not None for value in cached):
            return cached
        if len(keys) == 1:
            return (await self.raw(keys[0]),)
        results: list[object] = [None] * len(keys)

        async def load(index: int) -> None:
            results[index] = await self.raw(keys[index])

        try:
            async with trio.open_nursery() as nursery:
                for index in range(len(keys)):
                    nursery.start_soon(load, index)
        except BaseExceptionGroup as group:
            # Report what the server said (the first failure), not a group of them.
            failures = [exc for exc in group.exceptions if isinstance(exc, Exception)]
            if len(failures) == len(group.exceptions):
                raise failures[0] from None
            raise
        return tuple(results)

    @staticmethod
    def files_listing_key(resource_uri: str) -> ListingKey:
        """The raw listing that holds the files of a resource."""
        return files_key(resource_uri)

    def forget_listing(self, key: ListingKey) -> None:
        """Drop a raw listing so the next look loads it again (after our own changes)."""
        self.walks.forgot(key)
        self.listings.invalidate(key)

    def forget_answers_below(self, node: DirNode) -> None:
        """Drop what was asked of single entries of ``node`` (:meth:`DirNode.answers_child`;
        never answered from a search)."""
        self.listings.invalidate_where(lambda key: isinstance(key, ListingKey) and node.answers_child(key))

    # ---- listings -----------------------------------------------------

    async def children(self, node: DirNode) -> Listing:
        """The entries of directory ``node``, loading what is missing or expired.

        When they are built, its companion listings (:meth:`DirNode.companion_keys`)
        start loading beside its own, and are not waited for.
        """
        keys, memo_key = node.listed()
        memo = self._memo.get(memo_key)
        if self._warm(memo):
            assert memo is not None  # _warm checked
            remembered: Listing = memo[1]
            return remembered
        keys = self._narrowed(node, keys) or keys
        companions = node.companion_keys()
        if companions:
            self._load_beside(companions)
        raws = await self._raws(keys)
        listing: Listing
        if memo is not None and len(memo[0]) == len(raws) and all(a is b for a, b in zip(memo[0], raws)):
            listing = memo[1]
        else:
            listing = node.entries(self, await node.derived(raws))
        self._remember(memo_key, (raws, listing, self.listings.generation, self._valid_until(keys, raws)))
        return listing

    async def _children_and_companions(self, node: DirNode) -> Listing:
        """A walk loading ahead waits for the companion listings too: it wants them next."""
        listing = await self.children(node)
        await self._raws(node.companion_keys())
        return listing

    def _load_beside(self, keys: Sequence[ListingKey]) -> None:
        nursery = self.nursery
        if nursery is None:
            return
        for key in keys:
            if self.listings.get(key) is None:
                nursery.start_soon(self._load_companion, key)

    async def _load_companion(self, key: ListingKey) -> None:
        try:
            await self.raw(key)
        except Exception as exc:  # whoever needs it next asks again and hears the error
            logger.debug("loading %s beside its folder failed: %s", key, exc)

    def _valid_until(self, keys: Sequence[ListingKey], raws: tuple[object, ...]) -> float:
        """When the first of ``raws`` expires, if each is what is cached now; else a time already past."""
        until = float("inf")
        for key, raw in zip(keys, raws):
            kept = self.listings.get_until(key)
            if kept is None:
                kept = self.walks.searched(key)
            if kept is None or kept[0] is not raw:
                return float("-inf")
            until = min(until, kept[1])
        return until

    @property
    def memo_rows(self) -> tuple[int, int]:
        """The rows the memos of worked-out listings hold now (see _memo_rows), and their bound."""
        return int(self._memo.currsize), int(self._memo.maxsize)

    async def let_expired_go(self) -> None:
        """Every TTL, drop the listings and memos that expired: both go only as others come in,
        and what a walk left behind would otherwise stay while the mount is idle."""
        while True:
            await trio.sleep(max(self.listings.ttl, 1.0))
            self.listings.expire()
            self._memo.expire()

    def _remember(self, memo_key: Hashable, memo: tuple[Any, ...]) -> None:
        try:
            self._memo[memo_key] = memo
        except ValueError:
            # Heavier than the whole bound: worked out again when next needed.
            self._memo.pop(memo_key, None)

    def _warm(self, memo: tuple[Any, ...] | None) -> bool:
        """Whether a folder's memoised entries are current: nothing was stored or dropped
        since they were built, and none of the listings they came from expired."""
        listings = self.listings
        return memo is not None and memo[2] == listings.generation and listings.now() < memo[3]

    def _narrowed(self, node: DirNode, keys: tuple[ListingKey, ...]) -> tuple[ListingKey, ...] | None:
        """The folder's own listings (:meth:`DirNode.own_keys`) when they are what to ask for:
        its usual, wider ones are not held and its project is not being walked."""
        own = node.own_keys()
        if own is None or self._held(keys) or self._walked(node):
            return None
        return own

    def _held(self, keys: Sequence[ListingKey]) -> bool:
        return all(self.listings.get(key) is not None for key in keys)

    def _walked(self, node: Node) -> bool:
        project = node.walked_project
        return project is not None and self.walks.walking(project)

    async def lookup(self, node: DirNode, name: str) -> tuple[Node | None, Listing | None]:
        """The entry ``name`` of ``node``, and the folder's listing it was found in.

        From the folder's listing when it is held or its project is being
        walked; else, where the folder's kind can tell one entry from
        smaller answers (:meth:`DirNode.child_keys`), from those alone (no
        listing returned), so opening one path does not list every folder
        on the way; a name those answers do not find, and a second name of
        the same folder, are looked for in the listing.
        """
        keys, memo_key = node.listed()
        memo = self._memo.get(memo_key)
        if self._warm(memo):
            # What every open and stat of a known folder finds: its entries as built last.
            assert memo is not None  # _warm checked
            warm: Listing = memo[1]
            return warm.get(name), warm
        if not self._held(keys) and not self._walked(node):
            child_keys = node.child_keys(name)
            # A name that costs no request (the folder's own sub-folders) is not counted.
            if child_keys is not None and (not child_keys or self._first_named(memo_key, name)):
                child = await self._child(node, name, child_keys)
                if child is not None:
                    return child, None
                # Not found from its own answers: the folder's listing decides, since it
                # can show entries no single answer names (a subject only some of whose
                # sessions were shared into the project).
        listing = await self.children(node)
        return listing.get(name), listing

    def _first_named(self, memo_key: Hashable, name: str) -> bool:
        """Whether ``name`` is the only entry of the folder named lately: a tool given one
        path names one subject, while one given many (``find S1 S2 ...``, a script going
        through a list) is better served by the folder's listing from the second on, which
        also lets the walk be noticed."""
        first = self._named_alone.setdefault(memo_key, name)
        return first == name

    async def _child(self, node: DirNode, name: str, keys: tuple[ListingKey, ...]) -> Node | None:
        """:meth:`DirNode.child_from`, the same node while its raw listings are the same."""
        raws = await self._raws(keys)
        memo_key = ("child", node.memo_key, name)
        memo = self._memo.get(memo_key)
        if memo is not None and len(memo[0]) == len(raws) and all(a is b for a, b in zip(memo[0], raws)):
            child: Node | None = memo[1]
            return child
        child = node.child_from(self, name, raws)
        self._remember(memo_key, (raws, child))
        return child

    async def described(self, node: Node) -> Node:
        """``node`` with all the server records of it, for its extended attributes.

        Scans and resources that came from a project-wide search lack the
        scan's xsi type and the resource's ID, format and content; their
        session's (or subject's) own listing has them and is loaded here.
        """
        return await node.described(self)

    def known_nlink(self, node: DirNode) -> int:
        """2 + sub-directories if this directory's entries are known, else its hint."""
        memo = self._memo.get(node.listed()[1])
        if memo is not None:
            listing: Listing = memo[1]
            return 2 + listing.subdir_count
        return node.nlink

    def known_subdirs(self, node: DirNode) -> set[str] | None:
        """Names of the sub-directories in this directory's listing; None while it is not known."""
        memo = self._memo.get(node.listed()[1])
        if memo is None:
            return None
        return {name for name, child in memo[1].entries.items() if child.is_dir}

    # ---- what building entries uses (nodes.ListingContext) ------------

    def renamed(self, where: str, raw: str, shown: str) -> None:
        """Log, once per mount, a server name that could not be shown as it is."""
        if (where, raw) in self._reported:
            return
        self._reported[(where, raw)] = True
        logger.warning("%s: the server's name %r is shown as %r", where, raw, shown)

    def searchable(self, key: ListingKey, project: str) -> None:
        self.walks.searchable(key, project)

    def project_views(self, project: ProjectDir) -> dict[str, Node]:
        return {name: make(project) for name, make in self.views.items()}

    def by_subject(self, experiments: Sequence[Experiment]) -> dict[str, list[Experiment]]:
        """A project's experiments by subject, worked out once per raw listing."""
        memo_key = ("bysubject", id(experiments))
        memo = self._memo.get(memo_key)
        if memo is None or memo[0][0] is not experiments:
            memo = ((experiments,), _group_by_subject(experiments))
            self._remember(memo_key, memo)
        grouped: dict[str, list[Experiment]] = memo[1]
        return grouped

    def file_tree(self, resource_uri: str, files: Sequence[RemoteFile], *, grouped: bool) -> FileTree:
        """The resource's files as nested dicts of safe names, memoised per raw listing.

        An experiment-wide listing (``grouped``) holds every resource of the
        session and is split by resource once; a resource's own listing is
        all one tree.
        """
        memo_key = ("filetree", id(files))
        memo = self._memo.get(memo_key)
        if memo is None or memo[0][0] is not files:
            trees: dict[str | None, FileTree]
            if grouped:
                by_resource: dict[str, list[RemoteFile]] = defaultdict(list)
                for remote in files:
                    by_resource[remote.resource_uri].append(remote)
                trees = {uri: build_file_tree(group, self._file_reporter(uri)) for uri, group in by_resource.items()}
            else:
                trees = {None: build_file_tree(files, self._file_reporter(resource_uri))}
            memo = ((files,), trees)
            self._remember(memo_key, memo)
        trees_by_resource: dict[str | None, FileTree] = memo[1]
        return trees_by_resource.get(resource_uri if grouped else None, {})

    def _file_reporter(self, resource_uri: str) -> Callable[[str, str], None]:
        return lambda raw, shown: self.renamed(f"files of {resource_uri}", raw, shown)


def _memo_rows(memo: tuple[Any, ...]) -> int:
    """The rows a memo keeps in memory: those of the raw listings it was built from (counted
    again by each memo that shares them, which errs on the safe side) and of what it built."""
    built = memo[1]
    made = len(built.entries) if isinstance(built, Listing) else rows(built)
    return made + sum(rows(raw) for raw in memo[0])


def _group_by_subject(experiments: Sequence[Experiment]) -> dict[str, list[Experiment]]:
    grouped: dict[str, list[Experiment]] = defaultdict(list)
    for experiment in experiments:
        grouped[experiment.subject_id].append(experiment)
    return grouped


EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def build_file_tree(files: Sequence[RemoteFile], report: Callable[[str, str], None]) -> FileTree:
    """Nested dicts (folders) and RemoteFile values, keyed by safe, unique names.

    Folders keep their names; files that collide with a folder or with each
    other after sanitising get ``~2``, ``~3``, ... in the order of their raw
    paths. ``report(raw path, shown path)`` hears of every file not shown
    under its own path, and of rows left out because their size cannot be
    right (negative, or 0 with the digest of something else).
    """
    usable = []
    for remote in files:
        if remote.size < 0 or (remote.size == 0 and remote.digest and remote.digest.lower() != EMPTY_MD5):
            report(remote.path, f"nothing (its size {remote.size} cannot be right)")
        else:
            usable.append(remote)
    items = sorted(((names.split_file_path(f.path), f) for f in usable), key=lambda item: item[1].path)
    return _tree_level(items, (), report)


def _tree_level(
    items: list[tuple[list[str], RemoteFile]], prefix: tuple[str, ...], report: Callable[[str, str], None]
) -> FileTree:
    folders: dict[str, list[tuple[list[str], RemoteFile]]] = defaultdict(list)
    files: list[tuple[str, RemoteFile]] = []
    for parts, remote in items:
        if len(parts) == 1:
            files.append((parts[0], remote))
        else:
            folders[parts[0]].append((parts[1:], remote))
    level: FileTree = {name: _tree_level(group, prefix + (name,), report) for name, group in sorted(folders.items())}
    file_names = names.make_unique([name for name, _ in files], taken=level.keys())
    for name, (_, remote) in zip(file_names, files):
        level[name] = remote
        shown = "/".join(prefix + (name,))
        if shown != remote.path:
            report(remote.path, shown)
    return level
