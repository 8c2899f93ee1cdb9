"""A path opened by name outside a walk: its project is not listed on the way.

A subject is found from its own row and its own sessions listing, a session
from that listing; what they show is what the project's listing shows later.
"""

from __future__ import annotations

import errno

from fsapi import errno_of
from test_fsapi_walk import PROJECT, SUBJECTS, walk, walk_server
from xnatfs.fs.control import refresh
from xnatfs.fs.keys import ExperimentsKey, SubjectsKey

__all__ = ["walk_server"]  # the fixture, shared with the walk tests

FILE = f"{PROJECT}/S03/S03_MR1/SCANS/1-T1w/NIFTI/part0.txt"
WIDE_LISTINGS = (f"/data/projects/{PROJECT}/subjects", f"/data/projects/{PROJECT}/experiments")


def listings_asked(server) -> list[str]:
    """The listings (not files, not zips) the server answered, path and query."""
    return [
        target
        for method, target, _status in server.requests
        if method == "GET" and "/files/" not in target and "format=zip" not in target
    ]


def project_wide(server) -> list[str]:
    """Requests for the project's whole subject or session listing (a subject asked by label is not one)."""
    return [
        target
        for target in listings_asked(server)
        if target.split("?", 1)[0] in WIDE_LISTINGS and "label=" not in target
    ]


def per_subject(server) -> list[str]:
    """Requests for one subject's row or one subject's sessions."""
    prefix = f"/data/projects/{PROJECT}/subjects"
    return [
        target
        for target in listings_asked(server)
        if "label=" in target or (target.startswith(prefix + "/") and target.split("?", 1)[0].endswith("/experiments"))
    ]


def described(attrs) -> tuple:
    """Everything ``stat`` shows of an entry."""
    return (attrs.st_ino, attrs.st_mode, attrs.st_nlink, attrs.st_size, attrs.st_mtime_ns, attrs.st_ctime_ns)


async def xattrs(fs, path: str) -> dict[str, bytes]:
    return {name: await fs.getxattr(path, name) for name in await fs.listxattr(path)}


def test_a_file_named_by_its_path_is_read_without_listing_its_project(walk_server, run_fs):
    async def body(fs):
        await fs.lookup(PROJECT)
        walk_server.reset_counts()
        data = await fs.read(FILE)
        session_id = (await fs.getxattr(f"{PROJECT}/S03/S03_MR1", "user.xnat.id")).decode()
        assert data == f"{session_id} 1 0\n".encode()
        assert project_wide(walk_server) == []
        assert len(per_subject(walk_server)) == 2  # the subject's row and its sessions

    run_fs(body, server=walk_server)


def test_a_missing_subject_or_session_is_not_found_and_the_listing_decides_a_subject(walk_server, run_fs):
    async def body(fs):
        await fs.lookup(PROJECT)
        walk_server.reset_counts()
        assert not await fs.exists(f"{PROJECT}/S99")
        # Its own answers did not find it; the project's listing, which can show a subject
        # no single answer names (only some of its sessions shared into the project), decides.
        assert len(per_subject(walk_server)) == 2
        assert project_wide(walk_server) != []
        asked = len(listings_asked(walk_server))
        assert not await fs.exists(f"{PROJECT}/S98")  # the listing is held now: nothing more asked
        assert len(listings_asked(walk_server)) == asked
        await fs.lookup(f"{PROJECT}/S03")
        walk_server.reset_counts()
        assert not await fs.exists(f"{PROJECT}/S03/S03_MR9")
        assert walk_server.requests == []

    run_fs(body, server=walk_server)


def test_entries_named_before_their_folder_is_listed_are_the_entries_the_listing_shows(walk_server, run_fs):
    paths = [f"{PROJECT}/S04", f"{PROJECT}/S04/S04_MR1", f"{PROJECT}/S04/RESOURCES", f"{PROJECT}/RESOURCES"]

    async def body(fs):
        named = {path: described(await fs.lookup(path)) for path in paths}
        named_xattrs = {path: await xattrs(fs, path) for path in paths}
        assert project_wide(walk_server) == []
        assert named[f"{PROJECT}/S04"][2] == 4  # ".", "..", its one session and RESOURCES
        listed = {f"{PROJECT}/{name}": described(attrs) for name, attrs in await fs.entries(PROJECT)}
        listed.update({f"{PROJECT}/S04/{name}": described(attrs) for name, attrs in await fs.entries(f"{PROJECT}/S04")})
        assert project_wide(walk_server) != []
        assert len([name for name in listed if name.count("/") == 1]) == SUBJECTS + 3  # ".", "..", RESOURCES
        for path in paths:
            assert listed[path] == named[path], path
            assert described(await fs.stat(path)) == named[path], path
            assert await xattrs(fs, path) == named_xattrs[path], path

    run_fs(body, server=walk_server)


def test_a_walk_of_the_project_asks_for_no_subject_by_itself(walk_server, run_fs):
    async def body(fs):
        found = await walk(fs, PROJECT)
        assert "S05/S05_MR1/SCANS/2-rest/NIFTI/part2.txt" in found
        assert per_subject(walk_server) == []
        assert {target.split("?", 1)[0] for target in project_wide(walk_server)} == set(WIDE_LISTINGS)
        # Its listings dropped while the walk goes on, the project is listed again, as a walk wants.
        for key in (SubjectsKey(PROJECT), ExperimentsKey(PROJECT)):
            fs.ops.tree.forget_listing(key)
        walk_server.reset_counts()
        assert (await fs.lookup(f"{PROJECT}/S07")).st_nlink == 4
        assert per_subject(walk_server) == []
        assert {target.split("?", 1)[0] for target in project_wide(walk_server)} == set(WIDE_LISTINGS)

    run_fs(body, server=walk_server)


def test_a_session_or_subject_changed_through_the_mount_is_found_by_its_new_name_only(walk_server, run_fs):
    async def body(fs):
        # Each name was asked for before the change: neither "there" nor "missing" may outlive it.
        assert await fs.exists(f"{PROJECT}/S03/S03_MR1")
        assert not await fs.exists(f"{PROJECT}/S03/S03_MR2")
        await fs.rename(f"{PROJECT}/S03/S03_MR1", f"{PROJECT}/S03/S03_MR2")
        assert not await fs.exists(f"{PROJECT}/S03/S03_MR1")
        assert await fs.exists(f"{PROJECT}/S03/S03_MR2")
        await fs.rmdir(f"{PROJECT}/S03/S03_MR2")
        assert not await fs.exists(f"{PROJECT}/S03/S03_MR2")
        assert (await fs.lookup(f"{PROJECT}/S03")).st_nlink == 3

        assert not await fs.exists(f"{PROJECT}/S06B")
        await fs.rename(f"{PROJECT}/S06", f"{PROJECT}/S06B")
        assert not await fs.exists(f"{PROJECT}/S06")
        assert await fs.exists(f"{PROJECT}/S06B/S06_MR1")

        assert not await fs.exists(f"{PROJECT}/NEW01")
        await fs.mkdir(f"{PROJECT}/NEW01")
        assert await fs.exists(f"{PROJECT}/NEW01")
        await fs.mkdir(f"{PROJECT}/NEW01/NEW01_MR1")
        assert await fs.exists(f"{PROJECT}/NEW01/NEW01_MR1")
        await fs.rmdir(f"{PROJECT}/NEW01/NEW01_MR1")
        await fs.rmdir(f"{PROJECT}/NEW01")
        assert await errno_of(fs.lookup(f"{PROJECT}/NEW01")) == errno.ENOENT

    run_fs(body, server=walk_server, allow_delete=True)


def test_a_refresh_of_the_project_forgets_a_subject_it_was_told_is_missing(walk_server, run_fs):
    async def body(fs):
        assert not await fs.exists(f"{PROJECT}/S77")
        walk_server.store.add_subject(PROJECT, "S77")
        assert not await fs.exists(f"{PROJECT}/S77")
        await refresh(fs.ops, PROJECT, recursive=False)
        assert await fs.exists(f"{PROJECT}/S77")
        # A session made in another subject drops the project's sessions listing, and
        # subjects are named from their own answers again.
        await fs.mkdir(f"{PROJECT}/S01/S01_MR2")
        assert await fs.exists(f"{PROJECT}/S77")

    run_fs(body, server=walk_server, ttl=600)


def test_subjects_named_one_after_another_are_found_from_the_project_s_listing_after_the_first(walk_server, run_fs):
    # `find P/S01 P/S02 ...`, or a script going through a list of subjects: one subject's
    # own answers for the first, then the project's listing, as a walk of it would use.
    async def body(fs):
        await fs.lookup(PROJECT)
        walk_server.reset_counts()
        for index in range(1, 6):
            assert await fs.listdir(f"{PROJECT}/S{index:02d}")
        assert len(per_subject(walk_server)) == 2  # the first subject's row and sessions
        assert sorted(target.split("?", 1)[0] for target in project_wide(walk_server)) == sorted(WIDE_LISTINGS)

    run_fs(body, server=walk_server)
