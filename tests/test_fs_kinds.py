"""Node kinds own their listing and attributes; listing keys own their loading; walks are noticed in one place."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass

import pytest
import trio

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
    SubjectResourcesSearch,
    SubjectsKey,
    files_key,
)
from xnatfs.fs.nodes import DirNode, Listing, ListingContext, ProjectDir, RootDir
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
        return Listing({project.name: ProjectDir(mtime=context.started_at, project=project)
                        for project in raws[0]})

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
        ("NOTES", f"{SUBJECT_URI}/resources/NOTES"), ("MISC", f"{SUBJECT_URI}/resources/MISC")]
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
