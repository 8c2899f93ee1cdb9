"""The rows of docs/SEMANTICS.md §2 ("Writing") and §3 ("Errors") not covered in test_mount_write.py, on a real mount.

Each error row is provoked at the server (a change made behind the
mount's back, or an injected status) and checked as the errno a caller sees.
"""

from __future__ import annotations

import errno
import os

import pytest

from mountutil import mounted
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

QC = "/data/experiments/XNAT_E00001/resources/QC"
LONG_TTL = 600.0


def no_retries(tmp_path) -> tuple[str, str]:
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nretries = 0\n")
    return ("--config", str(config))


def refused(action) -> int:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value.errno


def test_mkdir_in_a_subject_makes_an_experiment_of_the_configured_type(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=("--experiment-type", "xnat:petSessionData")) as mount:
        (mount.path / "STUDY01" / "SUB002" / "SUB002_PET1").mkdir()
    with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
        made = {e.label: e.xsi_type for e in conn.list_experiments("STUDY01")}
    assert made["SUB002_PET1"] == "xnat:petSessionData"


def test_rmdir_of_a_subject_is_refused_without_allow_delete(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        subject = mount.path / "STUDY01" / "SUB003"
        assert refused(subject.rmdir) == errno.EPERM
        assert subject.is_dir()
    with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
        assert "SUB003" in {s.label for s in conn.list_subjects("STUDY01")}
    assert "--allow-delete" in mount.log()


def test_not_found_on_the_server_is_enoent(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=LONG_TTL) as mount:
        qc = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC"
        name = next(n for n in os.listdir(qc) if n.endswith(".csv"))
        with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
            conn.delete_file(QC, name)          # behind the mount's back; its listing still has it
        assert refused(lambda: (qc / name).unlink()) == errno.ENOENT


def test_a_label_taken_on_the_server_meanwhile_is_eexist(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=LONG_TTL) as mount:
        project = mount.path / "STUDY01"
        assert "SUB060" not in os.listdir(project)
        with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
            conn.create_subject("STUDY01", "SUB060")
        assert refused(lambda: (project / "SUB060").mkdir()) == errno.EEXIST


def test_server_failures_are_eio_with_a_log_line_naming_url_and_status(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=no_retries(tmp_path)) as mount:
        project = mount.path / "STUDY01"
        os.listdir(project)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(502,))
        try:
            assert refused(lambda: (project / "SUB061").mkdir()) == errno.EIO
        finally:
            fake_xnat.set_faults()
    failures = [line for line in mount.log().splitlines() if "ERROR" in line and "mkdir" in line]
    assert failures, mount.log()[-2000:]
    assert any("/data/projects/STUDY01/subjects/SUB061" in line and "502" in line for line in failures), failures


def test_refused_login_is_eacces(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=no_retries(tmp_path)) as mount:
        project = mount.path / "STUDY01"
        os.listdir(project)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(401,))
        try:
            assert refused(lambda: (project / "SUB062").mkdir()) == errno.EACCES
        finally:
            fake_xnat.set_faults()
    assert "admin:admin" not in mount.log()


def test_fuse_option_ro_refuses_writes_with_erofs(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=("-o", "ro")) as mount:
        qc = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC"
        existing = next(qc.iterdir())
        for attempt in (lambda: (qc / "x.txt").write_bytes(b"x"), lambda: (qc / "new").mkdir(),
                        lambda: existing.unlink(), lambda: open(existing, "r+b")):
            assert refused(attempt) == errno.EROFS
        assert existing.read_bytes()
    with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
        assert existing.name in {f.path for f in conn.list_files(QC)}
