"""A walk of a whole project without a kernel: project-wide searches instead of one request per session."""

from __future__ import annotations

import stat

import pytest

from xnatfs.fs.keys import SubjectsKey

PROJECT = "WALK"
SUBJECTS = 12


@pytest.fixture
def walk_server(fake_xnat_empty):
    """A project of 12 subjects with one session each: two scans with files, a session resource."""
    store = fake_xnat_empty.store
    store.add_project(PROJECT)
    for number in range(1, SUBJECTS + 1):
        subject = store.add_subject(PROJECT, f"S{number:02d}")
        session = store.add_experiment(PROJECT, subject, f"S{number:02d}_MR1")
        for scan_id, scan_type in (("1", "T1w"), ("2", "rest")):
            store.add_scan(session, scan_id, type=scan_type)
            for index in range(3):
                store.put_file(
                    session, "NIFTI", f"part{index}.txt", f"{session} {scan_id} {index}\n".encode(), scan_id=scan_id
                )
        store.put_file(session, "QC", "report.txt", b"fine\n" * number)
        if number % 4 == 0:
            store.put_subject_file(subject, "NOTES", "consent.txt", b"signed\n")
    return fake_xnat_empty


async def walk(fs, folder: str) -> dict[str, int | None]:
    """Every path below ``folder`` with its size (None for folders), in the order ``find`` visits them."""
    found: dict[str, int | None] = {}
    below = []
    for name, attrs in await fs.entries(folder):
        if name in (".", ".."):
            continue
        path = f"{folder}/{name}"
        relative = path[len(PROJECT) + 1 :]
        if stat.S_ISDIR(attrs.st_mode):
            found[relative] = None
            below.append(path)
        else:
            found[relative] = (await fs.lookup(path)).st_size
    for path in below:
        found.update(await walk(fs, path))
    return found


def test_a_walk_costs_one_file_listing_per_session_and_shows_the_same_tree(walk_server, tmp_path, run_fs):
    trees = {}

    def walking(name: str):
        async def body(fs):
            walk_server.reset_counts()
            trees[name] = await walk(fs, PROJECT)
            trees[name + " requests"] = list(walk_server.requests)

        return body

    run_fs(walking("searching"), server=walk_server, cache_dir=tmp_path / "searching")
    requests = trees["searching requests"]
    searches = [
        target for _method, target, _status in requests if "imagescandata" in target or "resource%2Flabel" in target
    ]
    assert len(searches) == 3, searches  # scans, session resources, subject resources
    per_session = [
        target
        for _method, target, _status in requests
        if target.split("?")[0].count("/") == 3 and target.startswith("/data/experiments/")
    ]
    assert len(per_session) <= 4, per_session  # only sessions looked at before the walk showed
    assert len(requests) <= SUBJECTS + 12, requests

    walk_server.child_searches = False
    run_fs(walking("plain"), server=walk_server, cache_dir=tmp_path / "plain")
    assert trees["searching"] == trees["plain"]
    assert len(trees["plain requests"]) >= 3 * SUBJECTS  # item, files and resources of each
    # Each subject's 7 files (and some NOTES); the walk does not enter BIDS/, which is not listed.
    assert sum(1 for size in trees["searching"].values() if size is not None) == SUBJECTS * 7 + SUBJECTS // 4
    assert not any(path.split("/")[0] == "BIDS" for path in trees["searching"])


def test_a_session_changed_through_the_mount_is_listed_afresh(walk_server, run_fs):
    async def body(fs):
        await walk(fs, PROJECT)
        session = f"{PROJECT}/S11/S11_MR1"
        await fs.mkdir(f"{session}/RESOURCES/EXTRA")
        await fs.mkdir(f"{session}/SCANS/1-T1w/MORE")
        assert "EXTRA" in await fs.listdir(f"{session}/RESOURCES")
        assert sorted(await fs.listdir(f"{session}/SCANS/1-T1w")) == ["MORE", "NIFTI"]
        await fs.mkdir(f"{PROJECT}/S10/RESOURCES/FORMS")
        assert "FORMS" in await fs.listdir(f"{PROJECT}/S10/RESOURCES")

    run_fs(body, server=walk_server, ttl=600)
    store = walk_server.store
    assert store.find_resource("experiment", store.experiment_id(PROJECT, "S11_MR1"), "EXTRA") is not None


def test_attributes_the_searches_lack_are_fetched_when_asked_for(walk_server, run_fs):
    store = walk_server.store

    async def body(fs):
        await walk(fs, PROJECT)
        session_id = store.experiment_id(PROJECT, "S09_MR1")
        scan = f"{PROJECT}/S09/S09_MR1/SCANS/2-rest"
        walk_server.reset_counts()
        assert await fs.getxattr(scan, "user.xnat.type") == b"rest"
        assert walk_server.count() == 0  # the search had it
        assert await fs.getxattr(scan, "user.xnat.xsi_type") == b"xnat:mrScanData"
        resource = store.find_resource("scan", str(store.scan(session_id, "2")["pk"]), "NIFTI")
        assert await fs.getxattr(f"{scan}/NIFTI", "user.xnat.id") == str(resource["id"]).encode()
        assert walk_server.count() == 1, walk_server.requests  # the session's item, once
        notes = store.find_resource("subject", store.subject_id(PROJECT, "S08"), "NOTES")
        assert await fs.getxattr(f"{PROJECT}/S08/RESOURCES/NOTES", "user.xnat.id") == str(notes["id"]).encode()
        assert "user.xnat.xsi_type" in await fs.listxattr(f"{PROJECT}/S10/S10_MR1/SCANS/1-T1w")

    run_fs(body, server=walk_server)


def test_a_warm_walk_looks_up_no_listing_until_one_changes(walk_server, run_fs):
    async def body(fs):
        first = await walk(fs, PROJECT)
        # The first walk's read-ahead may store listings after the folders were looked at.
        assert await walk(fs, PROJECT) == first
        listings = fs.ops.tree.listings
        looked_up = []
        for name in ("get", "get_until"):
            original = getattr(listings, name)
            setattr(listings, name, lambda key, original=original: looked_up.append(key) or original(key))
        assert await walk(fs, PROJECT) == first
        assert looked_up == []  # every folder's entries kept since the first walk
        # A listing stored anew (a change made through the mount does so) is looked at again.
        fs.ops.tree.forget_listing(SubjectsKey(PROJECT))
        assert await walk(fs, PROJECT) == first
        assert SubjectsKey(PROJECT) in looked_up
        looked_up.clear()
        assert await walk(fs, PROJECT) == first
        assert looked_up == []

    run_fs(body, server=walk_server)
