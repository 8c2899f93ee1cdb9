"""A walk on a real mount (`find`): its read-ahead reaches only what the walk goes through.

The walk's requests (project-wide searches, attributes fetched when asked)
are checked without a kernel in test_fsapi_walk.py.
"""

from __future__ import annotations

import subprocess

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount


MANY = "MANY"
MANY_SUBJECTS = 24
SESSIONS_PER_SUBJECT = 2
WALKED_SUBJECTS = 10


@pytest.fixture
def many_subjects_server(fake_xnat_empty):
    """A project of 24 subjects with two sessions each, one file in each session."""
    store = fake_xnat_empty.store
    store.add_project(MANY)
    for number in range(1, MANY_SUBJECTS + 1):
        subject = store.add_subject(MANY, f"M{number:02d}")
        for visit in range(1, SESSIONS_PER_SUBJECT + 1):
            session = store.add_experiment(MANY, subject, f"M{number:02d}_MR{visit}")
            store.put_file(session, "QC", "report.txt", f"{session}\n".encode())
    return fake_xnat_empty


def session_file_listings(requests: list[tuple[str, str, int]]) -> list[str]:
    """The per-session file listings among ``requests`` (``/data/experiments/ID/files``)."""
    return [
        target
        for _method, target, _status in requests
        if target.startswith("/data/experiments/") and target.split("?")[0].endswith("/files")
    ]


def test_a_walk_of_some_subjects_reads_ahead_only_a_few_sessions_past_them(many_subjects_server, tmp_path):
    server = many_subjects_server
    with mounted(server.url, tmp_path) as mount:
        subjects = [mount.path / MANY / f"M{number:02d}" for number in range(1, WALKED_SUBJECTS + 1)]
        server.reset_counts()
        found = subprocess.run(
            ["find", *map(str, subjects)], capture_output=True, text=True, timeout=120, check=True
        ).stdout.split()
    # Counted after the unmount: whatever the read-ahead asked for while the mount was up.
    listings = session_file_listings(server.requests)
    walked_sessions = WALKED_SUBJECTS * SESSIONS_PER_SUBJECT
    assert sum(1 for path in found if path.endswith("report.txt")) == walked_sessions
    assert walked_sessions <= len(listings) <= walked_sessions + 10, listings
    assert len(set(listings)) == len(listings), listings  # none asked for twice
