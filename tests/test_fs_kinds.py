"""Node kinds own their listing, attributes and write policy; listing keys own their
loading; walks are noticed in one place."""

from __future__ import annotations

import errno
import gc
import inspect
import time
import weakref
from collections.abc import Hashable
from dataclasses import dataclass

import pyfuse3
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from xnatfs.cache.listing import ListingCache
from xnatfs.client import paths
from xnatfs.client.connection import XnatConnection
from xnatfs.fs.keys import (
    ExperimentContentsKey,
    ExperimentFilesKey,
    ExperimentsKey,
    ListingKey,
    ProjectsKey,
    ResourceFilesKey,
    ResourcesKey,
    SubjectExperimentsKey,
    SubjectKey,
    SubjectResourcesSearch,
    SubjectSessions,
    SubjectsKey,
    files_key,
)
from xnatfs.fs.local import Overlay
from xnatfs.fs.nodes import DirNode, Listing, ListingContext, ProjectDir, RootDir
from xnatfs.fs.settings import MountSettings
from xnatfs.fs.tree import Tree
from xnatfs.fs.xattrs import xattrs_for

EXPERIMENT = "XNAT_E00001"
SUBJECT_URI = "/data/projects/STUDY01/subjects/XNAT_S00001"


@pytest.fixture
def conn(fake_xnat):
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as connection:
        yield connection


def new_tree(connection) -> Tree:
    return Tree(connection, ListingCache(60.0), trio.CapacityLimiter(4), started_at=time.time())


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ProjectNamesDir(DirNode):
    """A kind of folder the tree has never heard of: every project, by its name."""

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ProjectsKey(),)

    def identity(self) -> Hashable:
        return "by name"

    def entries(self, context: ListingContext, raws: tuple) -> Listing:
        return Listing({project.name: ProjectDir(mtime=context.started_at, project=project) for project in raws[0]})

    def xattr_values(self) -> dict[str, str]:
        return {"view": "projects by name"}


def test_a_new_kind_of_folder_is_listed_by_the_tree_as_it_is(fake_xnat, conn):
    tree = new_tree(conn)
    by_name = ProjectNamesDir(mtime=0.0)

    async def walk() -> None:
        listing = await tree.children(by_name)
        assert sorted(listing.entries) == sorted(p.name for p in conn.list_projects())
        fake_xnat.reset_counts()
        assert await tree.children(by_name) is listing
        assert fake_xnat.count(method="GET") == 0
        subjects = await tree.children(listing.entries["Sample study one"])
        assert "SUB001" in subjects.entries

    trio.run(walk)
    assert xattrs_for(by_name) == {"user.xnat.view": "projects by name"}


def test_a_warm_listing_is_found_through_keys_worked_out_once(conn):
    tree = new_tree(conn)
    root = tree.root

    async def twice() -> None:
        first = await tree.children(root)
        keys = root.listed()
        assert await tree.children(root) is first
        assert root.listed() is keys
        assert tree.known_nlink(root) == 2 + first.subdir_count

    trio.run(twice)


def test_each_key_loads_what_its_client_call_answers(conn):
    resource = conn.list_resources(paths.project("STUDY01"))[0]
    expected = {
        ProjectsKey(): conn.list_projects(),
        SubjectsKey("STUDY01"): conn.list_subjects("STUDY01"),
        ExperimentsKey("STUDY01"): conn.list_experiments("STUDY01"),
        SubjectKey("STUDY01", "SUB001"): conn.find_subject("STUDY01", "SUB001"),
        SubjectExperimentsKey("STUDY01", "SUB001"): SubjectSessions(
            tuple(conn.list_subject_experiments("STUDY01", "SUB001"))
        ),
        ExperimentContentsKey(EXPERIMENT): conn.get_experiment_contents(EXPERIMENT),
        ExperimentFilesKey(EXPERIMENT): conn.list_files(paths.experiment(EXPERIMENT), all_levels=True),
        ResourcesKey(SUBJECT_URI): conn.list_resources(SUBJECT_URI),
        ResourceFilesKey(resource.uri): conn.list_files(resource.uri),
    }
    for key, answer in expected.items():
        assert key.load(conn) == answer, key
    assert all(answer for answer in expected.values())


def test_keys_are_equal_by_kind_and_value():
    assert SubjectsKey("P") == SubjectsKey("P")
    assert hash(SubjectsKey("P")) == hash(SubjectsKey("P"))
    assert SubjectsKey("P") != ExperimentsKey("P")
    assert len({SubjectsKey("P"), ExperimentsKey("P"), SubjectsKey("Q"), ProjectsKey(), ProjectsKey()}) == 4


def test_a_resource_s_files_are_listed_with_its_session_when_it_has_one():
    assert files_key(f"{paths.scan(EXPERIMENT, '3')}/resources/DICOM") == ExperimentFilesKey(EXPERIMENT)
    assert files_key(f"{SUBJECT_URI}/resources/NOTES") == ResourceFilesKey(f"{SUBJECT_URI}/resources/NOTES")


def test_only_a_subject_s_resources_come_from_the_subjects_search():
    assert ResourcesKey(SUBJECT_URI).search("STUDY01") == SubjectResourcesSearch("STUDY01")
    assert ResourcesKey(paths.project("STUDY01")).search("STUDY01") is None
    found = {"XNAT_S00001": ("NOTES", "MISC")}
    memo: dict = {}
    resources = ResourcesKey(SUBJECT_URI).from_search(found, memo)
    assert [(r.label, r.uri) for r in resources] == [
        ("NOTES", f"{SUBJECT_URI}/resources/NOTES"),
        ("MISC", f"{SUBJECT_URI}/resources/MISC"),
    ]
    assert ResourcesKey(SUBJECT_URI).from_search(found, memo) is resources
    assert ResourcesKey(SUBJECT_URI + "X").from_search(found, memo) is None


def test_a_walk_is_noticed_only_when_siblings_are_opened_in_order(conn):
    walks = new_tree(conn).walks
    siblings = Listing({name: RootDir(mtime=0.0) for name in "abcde"})
    parent = ("P",)
    assert walks.following(parent, "a", siblings) == []
    assert walks.following(parent, "b", siblings) == [siblings.entries[name] for name in "cde"]
    assert walks.following(parent, "d", siblings) == []
    assert walks.following(("Q",), "e", siblings) == []


class RecordingContext:
    """A WriteContext over the real client that keeps what the policies asked to forget."""

    def __init__(self, connection, tree: Tree):
        self.client = connection
        self.settings = MountSettings()
        self.overlay = Overlay(60.0)
        self.tree = tree
        self.forgotten: list[ListingKey] = []

    async def change(self, stale, function, *args, **kwargs):
        try:
            return await trio.to_thread.run_sync(lambda: function(*args, **kwargs))
        finally:
            self.forget(*stale)

    def forget(self, *keys: ListingKey) -> None:
        self.forgotten.extend(keys)
        for key in keys:
            self.tree.forget_listing(key)

    async def listing(self, node) -> Listing:
        return self.overlay.merge(node, await self.tree.children(node))

    def resource_gone(self, resource_uri: str) -> None:
        raise AssertionError("no resource is deleted here")


def refusal(change) -> int:
    """The errno ``change`` (a policy call, awaited if it is a coroutine) is refused with."""

    async def attempt() -> None:
        result = change()
        if inspect.isawaitable(result):
            await result

    try:
        trio.run(attempt)
    except pyfuse3.FUSEError as exc:
        return exc.errno
    raise AssertionError("not refused")


def test_a_new_kind_of_folder_refuses_every_change_unless_it_says_otherwise(conn):
    context = RecordingContext(conn, new_tree(conn))
    by_name = ProjectNamesDir(mtime=0.0)
    assert refusal(lambda: by_name.mkdir(context, "new")) == errno.EPERM
    assert refusal(lambda: by_name.rmdir(context, RootDir(mtime=0.0), "by name")) == errno.EPERM
    assert (
        refusal(lambda: by_name.rename(context, RootDir(mtime=0.0), "other", same_parent=True, replaces=None))
        == errno.EXDEV
    )
    assert refusal(lambda: by_name.create_target("notes.txt", "http://xnat")) == errno.EPERM
    assert by_name.file_place is None and by_name.overlay_place is None
    assert context.forgotten == []


def test_a_subject_folder_makes_an_experiment_and_forgets_the_listing_that_shows_it(fake_xnat, conn):
    tree = new_tree(conn)
    context = RecordingContext(conn, tree)

    async def make() -> Listing:
        project = (await tree.children(tree.root)).entries["STUDY01"]
        subject = (await tree.children(project)).entries["SUB001"]
        await subject.mkdir(context, "SUB001_NEW")
        assert context.forgotten == [ExperimentsKey("STUDY01"), SubjectExperimentsKey("STUDY01", "SUB001")]
        return await tree.children(subject)

    assert "SUB001_NEW" in trio.run(make).entries
    assert "SUB001_NEW" in {e.label for e in conn.list_experiments("STUDY01")}


def test_a_folder_in_a_resource_exists_only_in_the_overlay_until_a_file_is_written(fake_xnat, conn):
    tree = new_tree(conn)
    context = RecordingContext(conn, tree)

    async def make() -> tuple:
        project = (await tree.children(tree.root)).entries["STUDY01"]
        resources = (await tree.children(project)).entries["RESOURCES"]
        resource = next(iter((await tree.children(resources)).entries.values()))
        await tree.children(resource)
        fake_xnat.reset_counts()
        await resource.mkdir(context, "derived")
        made = (await context.listing(resource)).entries["derived"]
        return resource, made

    resource, made = trio.run(make)
    assert fake_xnat.count() == 0 and context.forgotten == []
    assert made.file_place == (resource.resource.uri, ("derived",))
    new_file = made.create_target("snr.csv", "http://xnat")
    assert (new_file.container, new_file.relpath) == (resource.resource.uri, "derived/snr.csv")
    assert new_file.target.kind == "file" and new_file.target.relpath == "derived/snr.csv"


async def walk_everything(tree: Tree, held: list[tuple[int, int]] | None = None) -> dict[tuple[str, ...], list[str]]:
    """Every folder's entries by path, listed through ``tree`` from its root; ``held`` gets the
    rows the tree holds after each folder."""
    seen: dict[tuple[str, ...], list[str]] = {}

    async def into(node: DirNode, path: tuple[str, ...]) -> None:
        listing = await tree.children(node)
        seen[path] = sorted(listing.entries)
        if held is not None:
            held.append((tree.listings.rows_held, tree.memo_rows[0]))
        for name, child in sorted(listing.entries.items()):
            if isinstance(child, DirNode):
                await into(child, path + (name,))

    await into(tree.root, ())
    return seen


def test_a_walk_past_the_memory_bounds_stays_within_them_and_sees_the_same_tree(conn):
    """The tree keeps listings, and what it works out of them, up to a number of rows (a
    file's record each), not of listings: a walk of more lets the oldest go and is listed
    again from the server, and finds what a tree that kept everything finds."""
    everything = new_tree(conn)
    whole = trio.run(walk_everything, everything)
    assert everything.listings.rows_held > 100 and everything.memo_rows[0] > 300  # what the bounds below cut
    # Each folder's memo weighs at least its entries, whatever number of memos they make.
    assert everything.memo_rows[0] >= sum(len(entries) for entries in whole.values())

    bounded = Tree(
        conn, ListingCache(60.0, max_rows=100), trio.CapacityLimiter(4), started_at=time.time(), memo_rows=300
    )
    held: list[tuple[int, int]] = []
    assert trio.run(walk_everything, bounded, held) == whole
    assert max(listings for listings, _ in held) <= 100
    assert max(memos for _, memos in held) <= 300
    assert trio.run(walk_everything, bounded) == whole  # and again, from what is left and the server


def test_what_a_walk_kept_is_let_go_once_its_listings_expire(conn):
    """Listings and the entries worked out of them live no longer than the TTL: after a walk,
    nothing of it stays in memory once the TTL has passed, even while the mount is idle (both
    caches otherwise drop what expired only as new listings come in)."""
    clock = MockClock()

    async def main() -> None:
        tree = Tree(conn, ListingCache(60.0, timer=trio.current_time), trio.CapacityLimiter(4), started_at=time.time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tree.let_expired_go)
            first = await walk_everything(tree)
            # Watched without asking the caches anything (asking drops what expired).
            root_listing = weakref.ref(await tree.children(tree.root))
            clock.jump(59)
            await wait_all_tasks_blocked()
            gc.collect()
            assert root_listing() is not None
            clock.jump(2)
            await wait_all_tasks_blocked()
            gc.collect()
            assert root_listing() is None
            assert (tree.listings.rows_held, tree.memo_rows[0]) == (0, 0)
            assert await walk_everything(tree) == first
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
