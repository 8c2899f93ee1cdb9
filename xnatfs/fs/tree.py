"""How each directory of the mount is listed from XNAT.

A listing costs one request per directory level: the raw listings the
client returns are kept in a :class:`ListingCache` under the keys below, and
every directory's entries are derived from them (and memoised for as long as
the raw listing they came from is the current one):

========================  =============================================
raw key                   client call
========================  =============================================
("projects",)             list_projects()
("subjects", P)           list_subjects(P)
("experiments", P)        list_experiments(P)   (all subjects at once)
("contents", E)           get_experiment_contents(E)
("expfiles", E)           list_files(experiment, all_levels=True)
("resources", owner_uri)  list_resources(owner_uri)
("files", resource_uri)   list_files(resource_uri)
("projectcontents", P)    list_project_contents(P)
("subjectresources", P)   list_subject_resources(P)
========================  =============================================

The last two are project-wide searches that answer ``contents`` of every
session and ``resources`` of every subject of a project at once. They are
loaded only once a walk of the project is under way (``find``, ``ls -R``,
a file manager going through subject after subject); a look at one session
asks for that session alone. A session changed through the mount after a
search was taken is asked for on its own again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

import cachetools
import trio

from xnatfs.cache.listing import ListingCache
from xnatfs.client import paths
from xnatfs.client.models import Experiment, RemoteFile, Resource, Subject
from xnatfs.fs import names
from xnatfs.fs.deadlines import bounded
from xnatfs.fs.nodes import (
    ExperimentDir,
    FileNode,
    FolderDir,
    Listing,
    Node,
    ProjectDir,
    ResourceDir,
    ResourcesDir,
    RootDir,
    ScanDir,
    ScansDir,
    SubjectDir,
)

logger = logging.getLogger(__name__)

AHEAD_PARALLEL = 16
AHEAD_SUBJECTS = 32


def timestamp(value: datetime | None, default: float) -> float:
    """Seconds since the epoch for an XNAT date (server local time), or ``default``."""
    if value is None:
        return default
    try:
        return value.timestamp()
    except (OverflowError, OSError, ValueError):
        return default


class Tree:
    """Lists directories of the mount from XNAT, through the listing cache.

    ``connection`` is an ``XnatConnection``; its calls block and run in
    worker threads under ``limiter``.
    """

    def __init__(self, connection, listings: ListingCache, limiter: trio.CapacityLimiter,
                 *, started_at: float, memo_size: int = 4096):
        self.connection = connection
        self.listings = listings
        self.limiter = limiter
        self.started_at = started_at
        self.root = RootDir(mtime=started_at)
        self._memo: cachetools.LRUCache = cachetools.LRUCache(maxsize=memo_size)
        self._reported: cachetools.LRUCache = cachetools.LRUCache(maxsize=10_000)
        self._ahead_slots = trio.Semaphore(AHEAD_PARALLEL)
        # What was loaded ahead lately, so a walk does not schedule it again.
        self._scheduled: cachetools.TTLCache = cachetools.TTLCache(maxsize=100_000, ttl=listings.ttl)
        # Projects being walked: their project-wide searches are worth loading.
        self._walked: cachetools.TTLCache = cachetools.TTLCache(maxsize=1_000, ttl=listings.ttl)
        # Which project's searches can answer a raw key, and when the key was last forgotten.
        self._search_project: cachetools.LRUCache = cachetools.LRUCache(maxsize=200_000)
        self._forgotten: cachetools.TTLCache = cachetools.TTLCache(maxsize=100_000, ttl=listings.ttl)

    # ---- raw listings -------------------------------------------------

    def _loader(self, key: tuple) -> Callable[[], object]:
        conn = self.connection
        kind = key[0]
        if kind == "projects":
            return conn.list_projects
        if kind == "subjects":
            return lambda: conn.list_subjects(key[1])
        if kind == "experiments":
            return lambda: conn.list_experiments(key[1])
        if kind == "contents":
            return lambda: conn.get_experiment_contents(key[1])
        if kind == "expfiles":
            return lambda: conn.list_files(paths.experiment(key[1]), all_levels=True)
        if kind == "resources":
            return lambda: conn.list_resources(key[1])
        if kind == "files":
            return lambda: conn.list_files(key[1])
        if kind == "projectcontents":
            return lambda: SearchAnswer.taken(lambda: conn.list_project_contents(key[1]))
        if kind == "subjectresources":
            return lambda: SearchAnswer.taken(lambda: conn.list_subject_resources(key[1]))
        raise ValueError(f"unknown listing {kind!r}")

    async def raw(self, key: tuple):
        cached = self.listings.get(key)
        if cached is not None:
            return cached
        if key[0] in ("contents", "resources"):
            found = await self._from_search(key)
            if found is not None:
                return found
        return await self._direct(key)

    async def _from_search(self, key: tuple):
        """``key``'s listing from its project's search, if a walk loaded one since ``key`` last changed."""
        project = self._search_project.get(key)
        if project is None or project not in self._walked:
            return None
        if key[0] == "contents":
            answer = await self._search_since(("projectcontents", project), key)
            return None if answer is None else answer.found.get(key[1])
        subject_id = paths.subject_of(key[1])
        if subject_id is None:
            return None
        answer = await self._search_since(("subjectresources", project), key)
        labels = None if answer is None else answer.found.get(subject_id)
        if labels is None:
            return None
        memo_key = ("subjectresources", key[1])
        memo = self._memo.get(memo_key)
        if memo is None or memo[0] is not labels:
            memo = (labels, tuple(Resource(label=label, uri=paths.resource(key[1], label)) for label in labels))
            self._memo[memo_key] = memo
        return memo[1]

    async def _search_since(self, search_key: tuple, key: tuple) -> SearchAnswer | None:
        """The search, if it was asked after ``key`` last changed through the mount."""
        answer = await self._search(search_key)
        if answer is None or self._forgotten.get(key, float("-inf")) >= answer.started:
            return None
        return answer

    async def _search(self, key: tuple) -> SearchAnswer | None:
        """A project-wide search; None when the server cannot answer it or it failed."""
        try:
            answer = await bounded(self.listings.get_or_load(key, self._loader(key), self.limiter))
        except Exception as exc:
            # The per-session listings answer instead, for as long as a listing is trusted.
            logger.info("the search %s failed: %s", key, exc)
            self.listings.put(key, SearchAnswer(time.monotonic(), None))
            return None
        return answer if answer.found is not None else None

    async def _raws(self, keys: Sequence[tuple]) -> tuple:
        cached = tuple(self.listings.get(key) for key in keys)
        if all(value is not None for value in cached):
            return cached
        if len(keys) == 1:
            return (await self.raw(keys[0]),)
        results: list = [None] * len(keys)

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

    # ---- listings -----------------------------------------------------

    @staticmethod
    def raw_keys(node: Node) -> list[tuple]:
        """The raw listings a directory's entries are derived from."""
        if isinstance(node, RootDir):
            return [("projects",)]
        if isinstance(node, ProjectDir):
            return [("subjects", node.project.id), ("experiments", node.project.id)]
        if isinstance(node, SubjectDir):
            return [("experiments", node.project_id)]
        if isinstance(node, ExperimentDir):
            eid = node.experiment.id
            return [("contents", eid), ("expfiles", eid)]
        if isinstance(node, ScansDir):
            return [("contents", node.experiment.experiment.id)]
        if isinstance(node, ScanDir):
            return [("contents", node.experiment.experiment.id)]
        if isinstance(node, ResourcesDir):
            if node.experiment is not None:
                return [("contents", node.experiment.experiment.id)]
            return [("resources", node.owner_uri)]
        if isinstance(node, (ResourceDir, FolderDir)):
            if node.experiment_id:
                return [("expfiles", node.experiment_id)]
            return [("files", node.resource.uri)]
        raise NotADirectoryError(node.key)

    async def children(self, node: Node) -> Listing:
        """The entries of directory ``node``, loading what is missing or expired."""
        raws = await self._raws(self.raw_keys(node))
        return self._derive(node, raws)

    async def lookup(self, node: Node, name: str) -> Node | None:
        return (await self.children(node)).get(name)

    async def described(self, node: Node) -> Node:
        """``node`` with all the server records of it, for its extended attributes.

        Scans and resources that came from a project-wide search lack the
        scan's xsi type and the resource's ID, format and content; their
        session's (or subject's) own listing has them and is loaded here.
        """
        if isinstance(node, ScanDir) and not node.scan.xsi_type:
            contents = await self._direct(("contents", node.experiment.experiment.id))
            scan = next((s for s in contents.scans if s.id == node.scan.id), None)
            return node if scan is None else dataclasses.replace(node, scan=scan)
        if isinstance(node, ResourceDir) and not node.resource.id:
            if node.experiment_id:
                contents = await self._direct(("contents", node.experiment_id))
                known = list(contents.resources) + [r for scan in contents.scans for r in scan.resources]
            else:
                owner = paths.resource_owner(node.resource.uri)
                known = await self._direct(("resources", owner))
            resource = next((r for r in known if r.uri == node.resource.uri), None)
            return node if resource is None else dataclasses.replace(node, resource=resource)
        return node

    async def _direct(self, key: tuple):
        """A raw listing from its own request (searches' answers are never kept under its key)."""
        return await bounded(self.listings.get_or_load(key, self._loader(key), self.limiter))

    def known_nlink(self, node: Node) -> int:
        """2 + sub-directories if this directory's entries are known, else its hint."""
        memo = self._memo.get(_memo_key(node))
        if memo is not None:
            return 2 + memo[1].subdir_count
        return node.nlink

    def known_subdirs(self, node: Node) -> set[str] | None:
        """Names of the sub-directories in this directory's listing; None while it is not known."""
        memo = self._memo.get(_memo_key(node))
        if memo is None:
            return None
        return {name for name, child in memo[1].entries.items() if child.is_dir}

    @staticmethod
    def files_listing_key(resource_uri: str) -> tuple:
        """The raw listing that holds the files of a resource."""
        experiment_id = paths.owning_experiment(resource_uri)
        if experiment_id is not None:
            return ("expfiles", experiment_id)
        return ("files", resource_uri)

    def forget_listing(self, key: tuple) -> None:
        """Drop a raw listing so the next look loads it again (after our own changes)."""
        self._forgotten[key] = time.monotonic()
        self.listings.invalidate(key)

    def _derive(self, node: Node, raws: tuple) -> Listing:
        memo_key = _memo_key(node)
        memo = self._memo.get(memo_key)
        if memo is not None and len(memo[0]) == len(raws) and all(a is b for a, b in zip(memo[0], raws)):
            return memo[1]
        listing = self._build(node, raws)
        self._memo[memo_key] = (raws, listing)
        return listing

    def _build(self, node: Node, raws: tuple) -> Listing:
        if isinstance(node, RootDir):
            return self._root_listing(raws[0])
        if isinstance(node, ProjectDir):
            return self._project_listing(node, raws[0], raws[1])
        if isinstance(node, SubjectDir):
            return self._subject_listing(node, raws[0])
        if isinstance(node, ExperimentDir):
            return self._experiment_listing(node, raws[0], raws[1])
        if isinstance(node, ScansDir):
            return self._scans_listing(node, raws[0])
        if isinstance(node, ScanDir):
            return self._scan_listing(node, raws[0])
        if isinstance(node, ResourcesDir):
            if node.experiment is not None:
                resources = raws[0].resources
                return self._resources_listing(node, resources, node.experiment.experiment.id)
            return self._resources_listing(node, raws[0], "")
        if isinstance(node, (ResourceDir, FolderDir)):
            return self._folder_listing(node, raws[0])
        raise NotADirectoryError(node.key)

    def _renamed(self, where: str, raw: str, shown: str) -> None:
        """Log, once per mount, a server name that could not be shown as it is."""
        if (where, raw) in self._reported:
            return
        self._reported[(where, raw)] = True
        logger.warning("%s: the server's name %r is shown as %r", where, raw, shown)

    def _root_listing(self, projects) -> Listing:
        ordered = sorted(projects, key=lambda p: p.id)
        dir_names = names.make_unique([names.safe_component(p.id) for p in ordered])
        entries = {}
        for name, project in zip(dir_names, ordered):
            if name != project.id:
                self._renamed("projects", project.id, name)
            entries[name] = ProjectDir(mtime=self.started_at, project=project)
        return Listing(entries)

    def _by_subject(self, experiments: Sequence[Experiment]) -> dict[str, list[Experiment]]:
        """A project's experiments by subject, worked out once per raw listing."""
        memo_key = ("bysubject", id(experiments))
        memo = self._memo.get(memo_key)
        if memo is None or memo[0] is not experiments:
            memo = (experiments, _group_by_subject(experiments))
            self._memo[memo_key] = memo
        return memo[1]

    def _project_listing(self, node: ProjectDir, subjects, experiments) -> Listing:
        project_id = node.project.id
        per_subject = self._by_subject(experiments)
        subjects = list(subjects)
        known = {s.id for s in subjects}
        # An experiment shared without its subject still needs a folder to live in.
        for subject_id, exps in per_subject.items():
            if subject_id and subject_id not in known:
                first = exps[0]
                subjects.append(Subject(id=subject_id, label=first.subject_label or subject_id,
                                        project=first.project, shared=True))
                known.add(subject_id)
        dir_names = names.label_names([(s.label, s.id) for s in subjects], names.RESERVED)
        entries: dict[str, Node] = {}
        for name, subject in zip(dir_names, subjects):
            if name != subject.label:
                self._renamed(f"subjects of {project_id}", subject.label, name)
            shared = subject.shared or subject.project != project_id
            entries[name] = SubjectDir(
                mtime=timestamp(subject.insert_date, self.started_at),
                read_only=shared,
                nlink=3 + len(per_subject.get(subject.id, ())),
                project_id=project_id,
                subject=subject,
            )
        entries[names.RESOURCES] = ResourcesDir(mtime=self.started_at, owner_uri=node.uri)
        return Listing(entries)

    def _subject_listing(self, node: SubjectDir, experiments) -> Listing:
        mine = self._by_subject(experiments).get(node.subject.id, [])
        dir_names = names.label_names([(e.label, e.id) for e in mine], names.RESERVED)
        entries: dict[str, Node] = {}
        for name, experiment in zip(dir_names, mine):
            if name != experiment.label:
                self._renamed(f"experiments of {node.project_id}/{node.subject.label}", experiment.label, name)
            self._search_project[("contents", experiment.id)] = node.project_id
            entries[name] = ExperimentDir(
                mtime=timestamp(experiment.insert_date, node.mtime),
                read_only=node.read_only or experiment.shared or experiment.project != node.project_id,
                nlink=4,
                project_id=node.project_id,
                subject_label=node.subject.label,
                experiment=experiment,
            )
        self._search_project[("resources", node.uri)] = node.project_id
        entries[names.RESOURCES] = ResourcesDir(mtime=node.mtime, read_only=node.read_only,
                                                owner_uri=node.uri)
        return Listing(entries)

    def _experiment_listing(self, node: ExperimentDir, contents, files) -> Listing:
        mtime = node.mtime
        if node.experiment.insert_date is None:
            mtime = timestamp(contents.insert_date, node.mtime)
        return Listing({
            names.SCANS: ScansDir(mtime=mtime, read_only=node.read_only,
                                  nlink=2 + len(contents.scans), experiment=node),
            names.RESOURCES: ResourcesDir(mtime=mtime, read_only=node.read_only,
                                          nlink=2 + len(contents.resources),
                                          owner_uri=node.uri, experiment=node),
        })

    def _scans_listing(self, node: ScansDir, contents) -> Listing:
        scans = list(contents.scans)
        order = sorted(range(len(scans)), key=lambda i: (names.scan_dir_name(scans[i].id, scans[i].type), i))
        dir_names = names.make_unique([names.scan_dir_name(scans[i].id, scans[i].type) for i in order])
        entries: dict[str, Node] = {}
        aliases: dict[str, Node] = {}
        for name, index in zip(dir_names, order):
            scan = scans[index]
            if name != names.scan_dir_name(scan.id, scan.type) or names.safe_label(scan.id) != scan.id:
                self._renamed(f"scans of {node.experiment.experiment.id}", scan.id, name)
            entries[name] = ScanDir(mtime=node.mtime, read_only=node.read_only,
                                    nlink=2 + len(scan.resources), experiment=node.experiment, scan=scan)
        for name, scan_node in list(entries.items()):
            bare = names.safe_label(scan_node.scan.id)
            if bare not in entries and bare not in aliases:
                aliases[bare] = scan_node
        return Listing(entries, aliases)

    def _scan_listing(self, node: ScanDir, contents) -> Listing:
        scan = next((s for s in contents.scans if s.id == node.scan.id), node.scan)
        return self._resource_entries(node, scan.resources, node.experiment.experiment.id)

    def _resources_listing(self, node: ResourcesDir, resources, experiment_id: str) -> Listing:
        return self._resource_entries(node, resources, experiment_id)

    def _resource_entries(self, parent: Node, resources: Sequence[Resource], experiment_id: str) -> Listing:
        resources = list(resources)
        dir_names = names.resource_names([(r.label, r.id) for r in resources])
        entries: dict[str, Node] = {}
        for name, resource in zip(dir_names, resources):
            if name != resource.label:
                owner = parent.uri if isinstance(parent, ScanDir) else parent.owner_uri
                self._renamed(f"resources of {owner}", resource.label, name)
            entries[name] = ResourceDir(mtime=parent.mtime, read_only=parent.read_only,
                                        resource=resource, experiment_id=experiment_id)
        return Listing(entries)

    def _folder_listing(self, node: ResourceDir | FolderDir, files: Sequence[RemoteFile]) -> Listing:
        tree = self._file_tree(node.resource.uri, files, grouped=bool(node.experiment_id))
        subpath = node.subpath if isinstance(node, FolderDir) else ()
        for part in subpath:
            tree = tree.get(part)
            if not isinstance(tree, dict):
                return Listing({})
        entries: dict[str, Node] = {}
        for name, item in tree.items():
            if isinstance(item, dict):
                entries[name] = FolderDir(
                    mtime=node.mtime, read_only=node.read_only,
                    nlink=2 + sum(1 for child in item.values() if isinstance(child, dict)),
                    resource=node.resource, experiment_id=node.experiment_id,
                    subpath=subpath + (name,),
                )
            else:
                entries[name] = FileNode(mtime=node.mtime, read_only=node.read_only, file=item)
        return Listing(entries)

    def _file_tree(self, resource_uri: str, files: Sequence[RemoteFile], *, grouped: bool) -> dict:
        """The resource's files as nested dicts of safe names, memoised per raw listing.

        An experiment-wide listing (``grouped``) holds every resource of the
        session and is split by resource once; a resource's own listing is
        all one tree.
        """
        memo_key = ("filetree", id(files))
        memo = self._memo.get(memo_key)
        if memo is None or memo[0] is not files:
            if grouped:
                by_resource: dict[str, list[RemoteFile]] = defaultdict(list)
                for remote in files:
                    by_resource[remote.resource_uri].append(remote)
                trees = {uri: build_file_tree(group, self._file_reporter(uri)) for uri, group in by_resource.items()}
            else:
                trees = {None: build_file_tree(files, self._file_reporter(resource_uri))}
            memo = (files, trees)
            self._memo[memo_key] = memo
        return memo[1].get(resource_uri if grouped else None, {})

    def _file_reporter(self, resource_uri: str) -> Callable[[str, str], None]:
        return lambda raw, shown: self._renamed(f"files of {resource_uri}", raw, shown)

    # ---- reading ahead ------------------------------------------------

    def read_ahead(self, nursery: trio.Nursery, listing: Listing, following: Sequence[Node]) -> None:
        """Start loading what a walk of the tree will want next, a few loads at a time.

        ``listing`` is a subject being listed: its experiments are loaded
        ahead. ``following`` are the subjects after it in its project: a
        ``find`` or ``ls -R`` visits them next, so they (their experiments and
        their resources) are loaded ahead too.
        """
        self._ahead_experiments(nursery, listing)
        if following:
            self._walk(nursery, following[0])
        for node in following:
            if isinstance(node, SubjectDir) and node.key not in self._scheduled:
                self._scheduled[node.key] = True
                nursery.start_soon(self._ahead_subject, nursery, node)

    def _walk(self, nursery: trio.Nursery, node: Node) -> None:
        """Note that ``node``'s project is being walked and load its searches ahead."""
        if not isinstance(node, SubjectDir) or node.project_id in self._walked:
            return
        project = node.project_id
        self._walked[project] = True
        for kind in ("projectcontents", "subjectresources"):
            nursery.start_soon(self._search, (kind, project))

    def _ahead_experiments(self, nursery: trio.Nursery, listing: Listing) -> None:
        for node in listing.entries.values():
            if isinstance(node, ExperimentDir) and node.key not in self._scheduled:
                self._scheduled[node.key] = True
                nursery.start_soon(self._ahead, node)

    async def _ahead_subject(self, nursery: trio.Nursery, node: SubjectDir) -> None:
        listing = await self._ahead(node)
        if listing is not None:
            self._ahead_experiments(nursery, listing)
            resources = listing.entries.get(names.RESOURCES)
            if resources is not None:
                await self._ahead(resources)

    async def _ahead(self, node: Node) -> Listing | None:
        async with self._ahead_slots:
            try:
                return await self.children(node)
            except Exception as exc:  # a load ahead failing only means the real look will retry
                logger.debug("loading %s ahead failed: %s", node.key, exc)
                return None


class SearchAnswer:
    """What a project-wide search found (None: the server cannot do it), and when it was asked."""

    __slots__ = ("started", "found")

    def __init__(self, started: float, found):
        self.started = started
        self.found = found

    @classmethod
    def taken(cls, search: Callable[[], object]) -> SearchAnswer:
        started = time.monotonic()
        return cls(started, search())


def _memo_key(node: Node) -> tuple:
    # One experiment can be shown writable in its own project and read-only in
    # a project it is shared into; their listings differ only in that.
    return (node.key, node.read_only)


def _group_by_subject(experiments: Sequence[Experiment]) -> dict[str, list[Experiment]]:
    grouped: dict[str, list[Experiment]] = defaultdict(list)
    for experiment in experiments:
        grouped[experiment.subject_id].append(experiment)
    return grouped


EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def build_file_tree(files: Sequence[RemoteFile], report: Callable[[str, str], None]) -> dict:
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


def _tree_level(items: list[tuple[list[str], RemoteFile]], prefix: tuple[str, ...],
                report: Callable[[str, str], None]) -> dict:
    folders: dict[str, list[tuple[list[str], RemoteFile]]] = defaultdict(list)
    files: list[tuple[str, RemoteFile]] = []
    for parts, remote in items:
        if len(parts) == 1:
            files.append((parts[0], remote))
        else:
            folders[parts[0]].append((parts[1:], remote))
    level: dict = {name: _tree_level(group, prefix + (name,), report) for name, group in sorted(folders.items())}
    file_names = names.make_unique([name for name, _ in files], taken=level.keys())
    for name, (_, remote) in zip(file_names, files):
        level[name] = remote
        shown = "/".join(prefix + (name,))
        if shown != remote.path:
            report(remote.path, shown)
    return level
