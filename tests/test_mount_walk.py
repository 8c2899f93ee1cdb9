"""A walk of a whole project: project-wide searches instead of one request per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount

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
                store.put_file(session, "NIFTI", f"part{index}.txt", f"{session} {scan_id} {index}\n".encode(),
                               scan_id=scan_id)
        store.put_file(session, "QC", "report.txt", b"fine\n" * number)
        if number % 4 == 0:
            store.put_subject_file(subject, "NOTES", "consent.txt", b"signed\n")
    return fake_xnat_empty


def walk(root: Path) -> dict[str, int | None]:
    """Every path below ``root`` with its size (None for folders), as find -ls sees them."""
    found: dict[str, int | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_size
    return found


def test_a_walk_costs_one_file_listing_per_session_and_shows_the_same_tree(walk_server, tmp_path):
    with mounted(walk_server.url, tmp_path, name="searching") as mount:
        walk_server.reset_counts()
        searched = walk(mount.path / PROJECT)
        requests = list(walk_server.requests)
    searches = [target for _method, target, _status in requests if "imagescandata" in target or "resource%2Flabel" in target]
    assert len(searches) == 3, searches                   # scans, session resources, subject resources
    per_session = [target for _method, target, _status in requests if target.split("?")[0].count("/") == 3
                   and target.startswith("/data/experiments/")]
    assert len(per_session) <= 4, per_session             # only sessions looked at before the walk showed
    assert len(requests) <= SUBJECTS + 12, requests

    walk_server.child_searches = False
    with mounted(walk_server.url, tmp_path, name="plain") as mount:
        walk_server.reset_counts()
        plain = walk(mount.path / PROJECT)
        plain_requests = len(walk_server.requests)
    assert searched == plain
    assert plain_requests >= 3 * SUBJECTS              # item, files and resources of each
    # Each subject's 7 files (and some NOTES), and in BIDS/ the 4 dataset files and each subject's
    # two tables (its scans have no DICOM, so it has no datatype folders).
    assert sum(1 for size in searched.values() if size is not None) == SUBJECTS * 7 + SUBJECTS // 4 + 4 + 2 * SUBJECTS


def test_a_session_changed_through_the_mount_is_listed_afresh(walk_server, tmp_path):
    with mounted(walk_server.url, tmp_path, ttl=600) as mount:
        walk(mount.path / PROJECT)
        session = mount.path / PROJECT / "S11" / "S11_MR1"
        (session / "RESOURCES" / "EXTRA").mkdir()
        (session / "SCANS" / "1-T1w" / "MORE").mkdir()
        assert "EXTRA" in os.listdir(session / "RESOURCES")
        assert sorted(os.listdir(session / "SCANS" / "1-T1w")) == ["MORE", "NIFTI"]
        subject_resources = mount.path / PROJECT / "S10" / "RESOURCES"
        (subject_resources / "FORMS").mkdir()
        assert "FORMS" in os.listdir(subject_resources)
        store = walk_server.store
        assert store.find_resource("experiment", store.experiment_id(PROJECT, "S11_MR1"), "EXTRA") is not None


def test_attributes_the_searches_lack_are_fetched_when_asked_for(walk_server, tmp_path):
    with mounted(walk_server.url, tmp_path) as mount:
        walk(mount.path / PROJECT)
        store = walk_server.store
        session_id = store.experiment_id(PROJECT, "S09_MR1")
        scan = mount.path / PROJECT / "S09" / "S09_MR1" / "SCANS" / "2-rest"
        walk_server.reset_counts()
        assert os.getxattr(scan, "user.xnat.type") == b"rest"
        assert walk_server.count() == 0                       # the search had it
        assert os.getxattr(scan, "user.xnat.xsi_type") == b"xnat:mrScanData"
        resource = store.find_resource("scan", str(store.scan(session_id, "2")["pk"]), "NIFTI")
        assert os.getxattr(scan / "NIFTI", "user.xnat.id") == str(resource["id"]).encode()
        assert walk_server.count() == 1, walk_server.requests  # the session's item, once
        subject_id = store.subject_id(PROJECT, "S08")
        notes = store.find_resource("subject", subject_id, "NOTES")
        assert os.getxattr(mount.path / PROJECT / "S08" / "RESOURCES" / "NOTES", "user.xnat.id") == \
            str(notes["id"]).encode()
        assert "user.xnat.xsi_type" in os.listxattr(mount.path / PROJECT / "S10" / "S10_MR1" / "SCANS" / "1-T1w")
