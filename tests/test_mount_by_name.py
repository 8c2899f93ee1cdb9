"""A file opened by its path on a cold mount: nothing project-wide is listed to find it."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount

PROJECT = "STUDY01"
SESSION = (PROJECT, "SUB001", "SUB001_MR1")


def project_wide(server) -> list[str]:
    """Requests for the project's whole subject or session listing (a subject asked by label is not one)."""
    wide = (f"/data/projects/{PROJECT}/subjects", f"/data/projects/{PROJECT}/experiments")
    return [
        target
        for method, target, _status in server.requests
        if method == "GET" and target.split("?", 1)[0] in wide and "label=" not in target
    ]


def test_a_file_read_by_its_path_on_a_cold_mount_lists_nothing_project_wide(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        scans = mount.path.joinpath(*SESSION, "SCANS")
        resource = next(p for p in scans.iterdir() if p.name.startswith("2-")) / "DICOM"
        relative = resource.relative_to(mount.path) / sorted(os.listdir(resource))[0]
    fake_xnat.reset_counts()
    # A new mount (and cache), and the path handed to a tool as it is.
    with mounted(fake_xnat.url, tmp_path / "again") as mount:
        path = mount.path / relative
        data = subprocess.run(["cat", str(path)], capture_output=True, check=True, timeout=60).stdout
        assert data
        assert hashlib.md5(data).hexdigest() == os.getxattr(path, "user.xnat.digest").decode()
        assert project_wide(fake_xnat) == []
        # Listed afterwards, the project shows the subject the path went through.
        assert "SUB001" in os.listdir(mount.path / PROJECT)
        assert project_wide(fake_xnat) != []
