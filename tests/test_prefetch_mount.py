"""``xnatfs prefetch`` through a real mount of the fake XNAT."""

from __future__ import annotations

import logging
import os

import pytest

from mountutil import mounted
from xnatfs.prefetch import inside_xnatfs, run_prefetch, xnatfs_mountpoints

pytestmark = pytest.mark.mount

SESSION = ("STUDY01", "SUB001", "SUB001_MR1")
SESSION_ID = "XNAT_E00001"


def files_under(root):
    return sorted(os.path.join(folder, name) for folder, _dirs, names in os.walk(root) for name in names)


def read_all(paths):
    return sum(len(open(path, "rb").read()) for path in paths)


def test_after_prefetch_reading_the_session_costs_no_request(fake_xnat, tmp_path, caplog):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = mount.path.joinpath(*SESSION)
        assert inside_xnatfs(str(session), xnatfs_mountpoints())
        with caplog.at_level(logging.WARNING, logger="xnatfs.prefetch"):
            report = run_prefetch([str(session)], jobs=4, progress=False)
        assert caplog.records == []
        paths = files_under(session)
        assert report.ok, report.errors
        assert report.files == len(paths) > 20
        assert report.bytes == sum(os.stat(path).st_size for path in paths)

        fake_xnat.reset_counts()
        assert read_all(paths) == report.bytes
        assert fake_xnat.count() == 0


def test_a_file_gone_from_the_server_is_an_error_and_the_rest_is_cached(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = mount.path.joinpath(*SESSION)
        paths = files_under(session)
        gone = str(session / "RESOURCES" / "QC" / "qc_report.pdf")
        assert gone in paths
        assert fake_xnat.store.delete_file(SESSION_ID, "QC", "qc_report.pdf")

        report = run_prefetch([str(session)], jobs=4, progress=False)
        assert [error.path for error in report.errors] == [gone]
        assert not report.ok
        assert report.files == len(paths) - 1

        fake_xnat.reset_counts()
        read_all([path for path in paths if path != gone])
        assert fake_xnat.count() == 0
