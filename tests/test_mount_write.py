"""Writing through a real mount: what tools (mv, cp -a, rsync) make of the writing rules.

Each row of the table in docs/SEMANTICS.md §2 is checked without a kernel in test_fsapi_write.py.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from mountutil import mounted
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

E1 = "XNAT_E00001"  # STUDY01/SUB001/SUB001_MR1


@pytest.fixture
def conn(fake_xnat):
    with XnatConnection(fake_xnat.url, "admin", "admin") as connection:
        yield connection


def server_files(conn, resource_uri: str) -> dict[str, bytes]:
    found = {}
    for remote in conn.list_files(resource_uri):
        buffer = io.BytesIO()
        conn.download(remote.uri, buffer)
        found[remote.path] = buffer.getvalue()
    return found


def session(mount) -> Path:
    return mount.path / "STUDY01" / "SUB001" / "SUB001_MR1"


QC = f"/data/experiments/{E1}/resources/QC"


def test_mv_across_resources_falls_back_to_copy_and_delete(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        (session(mount) / "RESOURCES" / "OTHER").mkdir()
        (qc / "moving.txt").write_text("on its way")
        done = subprocess.run(
            ["mv", str(qc / "moving.txt"), str(session(mount) / "RESOURCES" / "OTHER")], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert server_files(conn, f"/data/experiments/{E1}/resources/OTHER") == {"moving.txt": b"on its way"}
        assert "moving.txt" not in server_files(conn, QC)


def test_cp_a_rsync_and_metadata_changes(fake_xnat, conn, tmp_path):
    source = tmp_path / "derived"
    (source / "nested").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "nested" / "b.bin").write_bytes(os.urandom(300_000))
    os.chmod(source / "a.txt", 0o600)
    with mounted(fake_xnat.url, tmp_path) as mount:
        resources = session(mount) / "RESOURCES"
        (resources / "COPY").mkdir()
        done = subprocess.run(["cp", "-a", str(source) + "/.", str(resources / "COPY")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        (resources / "SYNC").mkdir()
        done = subprocess.run(
            ["rsync", "-a", str(source) + "/", str(resources / "SYNC")], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        for label in ("COPY", "SYNC"):
            assert server_files(conn, f"/data/experiments/{E1}/resources/{label}") == {
                "a.txt": b"alpha",
                "nested/b.bin": (source / "nested" / "b.bin").read_bytes(),
            }
        target = resources / "COPY" / "a.txt"
        os.chmod(target, 0o600)
        os.utime(target, (0, 0))
        os.chown(target, os.getuid(), os.getgid())


def test_rename_after_import_with_a_queued_autorun(fake_xnat, conn, tmp_path):
    fake_xnat.autorun_on_import = True
    with mounted(fake_xnat.url, tmp_path) as mount:
        series = session(mount) / "SCANS" / "1-Localizer" / "DICOM"
        archive = tmp_path / "localizer.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(series.iterdir()):
                bundle.writestr(path.name, path.read_bytes())
        subject = mount.path / "STUDY01" / "SUB060"
        subject.mkdir()
        (subject / "SUB060_MR1").mkdir()
        shutil.copyfile(archive, subject / "SUB060_MR1" / "SCANS" / "localizer.zip")
        (subject / "SUB060_MR1").rename(subject / "SUB060_MR1B")
        assert "SUB060_MR1B" in {e.label for e in conn.list_experiments("STUDY01")}
        assert os.listdir(subject / "SUB060_MR1B" / "SCANS")
