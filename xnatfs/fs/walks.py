"""Noticing a walk of the tree, and what the mount does for one.

A walk (``find``, ``ls -R``, a file manager, ``xnatfs prefetch``) opens the
folders of a project one after the other. It is noticed when a folder that
:attr:`~xnatfs.fs.nodes.Node.reads_ahead` (a subject) is opened right after
the sibling listed before it. Then:

* what the walk reaches next is loaded ahead, a few loads at a time: the
  opened subject's experiments, then the subjects after it in walk order
  with their resources and their experiments, up to
  :data:`AHEAD_SESSIONS` experiments past the opened subject. As the walk
  moves on, the window moves with it; a walk that stops early has cost at
  most that many listings it never used;
* the project counts as walked, and its project-wide searches
  (:class:`~xnatfs.fs.keys.ProjectContentsSearch`,
  :class:`~xnatfs.fs.keys.SubjectResourcesSearch`) answer the structure of
  every session and the resources of every subject, instead of a request
  each. A look at one session without a walk asks for that session alone,
  and a listing changed through the mount after a search was taken is
  asked for on its own again.

Scan folders that were listed (opened as folders) are remembered: a scan's
resource reached through its listed scan folder is being walked or browsed,
and starts no series zip before a file of it is opened
(:meth:`Walks.listed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence

import cachetools
import trio

from xnatfs.cache.listing import ListingCache
from xnatfs.client.contract import ArchiveClient
from xnatfs.fs import names
from xnatfs.fs.deadlines import bounded
from xnatfs.fs.keys import ListingKey, ProjectContentsSearch, SearchAnswer, SearchKey, SubjectResourcesSearch
from xnatfs.fs.nodes import DirNode, Listing, Node

logger = logging.getLogger(__name__)

AHEAD_PARALLEL = 16
# How far ahead of a walk the mount looks: experiments (a file listing each) of
# the subjects after the opened one. Enough to keep a walk's listings arriving
# before it reaches them at tens of milliseconds a request, and no more.
AHEAD_SESSIONS = 8


class Walks:
    """Walks under way: the loads ahead and the project-wide searches they use.

    ``children`` lists a folder (the tree's listing, loading what is missing).
    """

    def __init__(
        self,
        client: ArchiveClient,
        listings: ListingCache,
        limiter: trio.CapacityLimiter,
        children: Callable[[DirNode], Awaitable[Listing]],
    ):
        self.client = client
        self.listings = listings
        self.limiter = limiter
        self.children = children
        self._ahead_slots = trio.Semaphore(AHEAD_PARALLEL)
        # What was loaded ahead lately, so a walk does not schedule it again.
        self._scheduled: cachetools.TTLCache[Hashable, bool] = cachetools.TTLCache(maxsize=100_000, ttl=listings.ttl)
        # Projects being walked: their project-wide searches are worth loading.
        self._walked: cachetools.TTLCache[str, bool] = cachetools.TTLCache(maxsize=1_000, ttl=listings.ttl)
        # Which project's searches can answer a raw key, and when the key was last forgotten.
        self._search_project: cachetools.LRUCache[ListingKey, str] = cachetools.LRUCache(maxsize=200_000)
        self._forgotten: cachetools.TTLCache[ListingKey, float] = cachetools.TTLCache(maxsize=100_000, ttl=listings.ttl)
        # Listings built from a search's answer, kept while that answer is the current one.
        self._from_answers: cachetools.LRUCache[ListingKey, object] = cachetools.LRUCache(maxsize=4096)
        self._last_opened: cachetools.LRUCache[tuple[str, ...], str] = cachetools.LRUCache(
            maxsize=1024
        )  # folder → child opened last
        self._listed: cachetools.LRUCache[tuple[str, ...], bool] = cachetools.LRUCache(maxsize=4096)

    # ---- searches -----------------------------------------------------

    def searchable(self, key: ListingKey, project: str) -> None:
        """``key`` is shown under ``project``: a walk of that project may answer it from a search."""
        self._search_project[key] = project

    def forgot(self, key: ListingKey) -> None:
        """``key`` changed through the mount now: searches asked before this no longer answer it."""
        self._forgotten[key] = time.monotonic()

    async def from_search(self, key: ListingKey) -> object | None:
        """``key``'s listing from its project's search, if a walk loaded one since ``key`` last changed."""
        # A warm walk finds the answer cached: no await, no bound to pay for.
        searched = self.searched(key)
        if searched is not None:
            return searched[0]
        project = self._search_project.get(key)
        if project is None or project not in self._walked:
            return None
        search = key.search(project)
        if search is None:
            return None
        answer = await self._search(search)
        return None if answer is None else self._taken(key, answer)

    def searched(self, key: ListingKey) -> tuple[object, float] | None:
        """``(key's listing, when it expires)`` from its project's search if that is cached now; else None."""
        project = self._search_project.get(key)
        if project is None or project not in self._walked:
            return None
        search = key.search(project)
        kept = self.listings.get_until(search) if search is not None else None
        if kept is None:
            return None
        answer, until = kept
        found = self._taken(key, answer)
        return None if found is None else (found, until)

    def _taken(self, key: ListingKey, answer: SearchAnswer) -> object | None:
        """``key``'s listing out of ``answer``, unless the search failed or ``key`` changed since it was asked."""
        if answer.found is None or self._forgotten.get(key, float("-inf")) >= answer.started:
            return None
        return key.from_search(answer.found, self._from_answers)

    async def _search(self, key: SearchKey) -> SearchAnswer | None:
        """A project-wide search; None when the server cannot answer it or it failed."""
        try:
            answer = await bounded(self.listings.get_or_load(key, lambda: key.load(self.client), self.limiter))
        except Exception as exc:
            # The per-session listings answer instead, for as long as a listing is trusted.
            logger.info("the search %s failed: %s", key, exc)
            self.listings.put(key, SearchAnswer(time.monotonic(), None))
            return None
        return answer if answer.found is not None else None

    # ---- noticing a walk ----------------------------------------------

    def walking(self, project: str) -> bool:
        """Whether a walk of ``project`` was noticed lately."""
        return project in self._walked

    def following(self, parent_path: tuple[str, ...], name: str, siblings: Listing) -> list[Node]:
        """The siblings after ``name`` (a few) when a walk goes through them in order.

        Like the kernel's read-ahead: only when the sibling opened before this
        one came right before it, so one ``ls`` of a folder loads nothing extra.
        No more than :data:`AHEAD_SESSIONS`: the window of sessions never needs
        more subjects than that.
        """
        previous = self._last_opened.get(parent_path)
        self._last_opened[parent_path] = name
        here = siblings.position(name)
        if previous is None or here is None or siblings.position(previous) != here - 1:
            return []
        return siblings.after(name, AHEAD_SESSIONS)

    def note_listed(self, path: tuple[str, ...]) -> None:
        """The folder at ``path`` (a scan) was opened as a folder: its entries were listed."""
        self._listed[path] = True

    def listed(self, path: tuple[str, ...]) -> bool:
        """Whether the folder at ``path`` was listed lately: what is below it was reached by
        listing (a walk, a file manager), not named (a tool given a path)."""
        return path in self._listed

    # ---- reading ahead ------------------------------------------------

    def read_ahead(self, nursery: trio.Nursery, listing: Listing, following: Sequence[Node]) -> None:
        """Start loading what a walk of the tree will want next, a few loads at a time.

        ``listing`` is a subject being listed: its experiments are loaded
        ahead. ``following`` are the subjects after it in its project: a
        ``find`` or ``ls -R`` visits them next, in this order, so they (their
        resources and their first :data:`AHEAD_SESSIONS` experiments between
        them) are loaded ahead too.
        """
        self._schedule(nursery, [entry for entry in listing.entries.values() if entry.loaded_ahead])
        if following:
            self._walk(nursery, following[0])
            nursery.start_soon(self._ahead_following, nursery, following)

    async def _ahead_following(self, nursery: trio.Nursery, following: Sequence[Node]) -> None:
        budget = AHEAD_SESSIONS
        for node in following:
            if budget <= 0 or not node.reads_ahead:
                return
            assert isinstance(node, DirNode)  # only folders read ahead
            # A subject's own listing comes from its project's, which the walk has loaded.
            listing = await self._ahead(node)
            if listing is None:
                continue
            resources = listing.entries.get(names.RESOURCES)
            if resources is not None:
                self._schedule(nursery, [resources])
            sessions = [entry for entry in listing.entries.values() if entry.loaded_ahead][:budget]
            budget -= len(sessions)
            self._schedule(nursery, sessions)

    def _walk(self, nursery: trio.Nursery, node: Node) -> None:
        """Note that ``node``'s project is being walked and load its searches ahead."""
        project = node.walked_project
        if project is None or project in self._walked:
            return
        self._walked[project] = True
        for search in (ProjectContentsSearch(project), SubjectResourcesSearch(project)):
            nursery.start_soon(self._search, search)

    def _schedule(self, nursery: trio.Nursery, nodes: Iterable[Node]) -> None:
        """Load ``nodes`` ahead, but none that was scheduled lately."""
        for node in nodes:
            assert isinstance(node, DirNode)  # only folders are loaded ahead
            if node.memo_key not in self._scheduled:
                self._scheduled[node.memo_key] = True
                nursery.start_soon(self._ahead, node)

    async def _ahead(self, node: DirNode) -> Listing | None:
        async with self._ahead_slots:
            try:
                return await self.children(node)
            except Exception as exc:  # a load ahead failing only means the real look will retry
                logger.debug("loading %s ahead failed: %s", node.memo_key, exc)
                return None
