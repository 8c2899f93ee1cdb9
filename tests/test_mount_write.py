"""Writing through a real mount: every row of SPEC's "Writing" table, checked on the server."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from mountutil import mounted
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

E1 = "XNAT_E00001"          # STUDY01/SUB001/SUB001_MR1


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


def test_new_file_is_uploaded_on_close_and_listed_at_once(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        (qc / "notes.txt").write_bytes(b"first version\n")
        assert server_files(conn, QC)["notes.txt"] == b"first version\n"
        assert (qc / "notes.txt").stat().st_size == 14
        assert "notes.txt" in os.listdir(qc)
        assert (qc / "notes.txt").read_bytes() == b"first version\n"
        # Overwrite, then append: the server follows each close.
        (qc / "notes.txt").write_bytes(b"second\n")
        assert server_files(conn, QC)["notes.txt"] == b"second\n"
        with open(qc / "notes.txt", "ab") as handle:
            handle.write(b"more\n")
        assert server_files(conn, QC)["notes.txt"] == b"second\nmore\n"
        assert (qc / "notes.txt").stat().st_size == 12
        # An existing server file changed in place.
        csv = next(name for name in os.listdir(qc) if name.endswith(".csv"))
        old = (qc / csv).read_bytes()
        with open(qc / csv, "r+b") as handle:
            handle.seek(0)
            handle.write(b"X")
        assert server_files(conn, QC)[csv] == b"X" + old[1:]


def test_fsync_uploads_before_close(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        path = session(mount) / "RESOURCES" / "QC" / "synced.bin"
        with open(path, "wb") as handle:
            handle.write(b"abc")
            handle.flush()
            os.fsync(handle.fileno())
            assert server_files(conn, QC)["synced.bin"] == b"abc"


def test_local_subfolders_exist_on_xnat_once_a_file_is_in_them(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        (qc / "plots" / "motion").mkdir(parents=True)
        assert (qc / "plots" / "motion").is_dir()
        (qc / "plots" / "motion" / "fd.csv").write_text("0.1\n")
        assert server_files(conn, QC)["plots/motion/fd.csv"] == b"0.1\n"
        (qc / "empty-folder").mkdir()
        (qc / "empty-folder").rmdir()
        assert not (qc / "empty-folder").exists()


def test_mkdir_creates_subjects_experiments_and_resources(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        project = mount.path / "STUDY01"
        (project / "SUB050").mkdir()
        assert "SUB050" in {s.label for s in conn.list_subjects("STUDY01")}
        (project / "SUB050" / "SUB050_MR1").mkdir()
        created = [e for e in conn.list_experiments("STUDY01") if e.label == "SUB050_MR1"]
        assert created and created[0].xsi_type == "xnat:mrSessionData"
        assert sorted(os.listdir(project / "SUB050" / "SUB050_MR1")) == ["RESOURCES", "SCANS"]
        (project / "SUB050" / "SUB050_MR1" / "RESOURCES" / "NIFTI").mkdir()
        contents = conn.get_experiment_contents(created[0].id)
        assert [r.label for r in contents.resources] == ["NIFTI"]
        (session(mount) / "SCANS" / "2" / "DERIVED").mkdir()
        scan = next(s for s in conn.get_experiment_contents(E1).scans if s.id == "2")
        assert "DERIVED" in {r.label for r in scan.resources}
        (project / "RESOURCES" / "DOCS").mkdir()
        assert "DOCS" in {r.label for r in conn.list_resources("/data/projects/STUDY01")}
        (project / "SUB050" / "RESOURCES" / "CONSENT").mkdir()
        (project / "SUB050" / "RESOURCES" / "CONSENT" / "form.txt").write_text("signed")
        assert os.listdir(project / "SUB050" / "RESOURCES" / "CONSENT") == ["form.txt"]
        subject_id = os.getxattr(project / "SUB050", "user.xnat.id").decode()
        assert server_files(conn, f"/data/projects/STUDY01/subjects/{subject_id}/resources/CONSENT") == {
            "form.txt": b"signed"}
        (project / "RESOURCES" / "DOCS" / "readme.md").write_text("# docs")
        assert os.listdir(project / "RESOURCES" / "DOCS") == ["readme.md"]
        assert server_files(conn, "/data/projects/STUDY01/resources/DOCS") == {"readme.md": b"# docs"}
        for bad, code in (("bad label", errno.EINVAL), ("SUB001", errno.EEXIST)):
            with pytest.raises(OSError) as refused:
                (project / bad).mkdir()
            assert refused.value.errno == code
        with pytest.raises(OSError) as refused:
            (session(mount) / "SCANS" / "99").mkdir()
        assert refused.value.errno == errno.EPERM


def test_renames(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        project = mount.path / "STUDY01"
        (project / "SUB003").rename(project / "SUB003B")
        assert "SUB003B" in {s.label for s in conn.list_subjects("STUDY01")}
        assert sorted(os.listdir(project / "SUB003B")) == ["RESOURCES", "SUB003_MR1"]
        (project / "SUB003B" / "SUB003_MR1").rename(project / "SUB003B" / "SUB003B_MR1")
        assert "SUB003B_MR1" in {e.label for e in conn.list_experiments("STUDY01")}
        assert os.listdir(project / "SUB003B" / "SUB003B_MR1" / "SCANS")
        with pytest.raises(OSError) as refused:
            os.rename(project / "SUB002", project / "SUB003B")
        assert refused.value.errno == errno.EEXIST
        with pytest.raises(OSError) as refused:
            os.rename(project / "SUB002" / "SUB002_MR1", project / "SUB003B" / "SUB002_MR1")
        assert refused.value.errno == errno.EXDEV
        with pytest.raises(OSError) as refused:
            os.rename(project / "SUB002", project / "bad label")
        assert refused.value.errno == errno.EINVAL
        qc = session(mount) / "RESOURCES" / "QC"
        csv = next(name for name in os.listdir(qc) if name.endswith(".csv"))
        data = (qc / csv).read_bytes()
        os.rename(qc / csv, qc / "renamed.csv")
        files = server_files(conn, QC)
        assert files["renamed.csv"] == data and csv not in files
        assert (qc / "renamed.csv").read_bytes() == data and not (qc / csv).exists()
        with pytest.raises(OSError) as refused:
            os.rename(qc / "renamed.csv", session(mount) / "SCANS" / "2" / "DICOM" / "renamed.csv")
        assert refused.value.errno == errno.EXDEV


def test_mv_across_resources_falls_back_to_copy_and_delete(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        (session(mount) / "RESOURCES" / "OTHER").mkdir()
        (qc / "moving.txt").write_text("on its way")
        done = subprocess.run(["mv", str(qc / "moving.txt"), str(session(mount) / "RESOURCES" / "OTHER")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert server_files(conn, f"/data/experiments/{E1}/resources/OTHER") == {"moving.txt": b"on its way"}
        assert "moving.txt" not in server_files(conn, QC)


def test_deleting(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        pdf = next(name for name in os.listdir(qc) if name.endswith(".pdf"))
        (qc / pdf).unlink()
        assert pdf not in server_files(conn, QC)
        assert pdf not in os.listdir(qc)
        with pytest.raises(OSError) as refused:
            (qc.parent).joinpath("QC").rmdir()
        assert refused.value.errno == errno.ENOTEMPTY
        for name in os.listdir(qc):
            (qc / name).unlink()
        qc.rmdir()
        assert "QC" not in {r.label for r in conn.get_experiment_contents(E1).resources}
        with pytest.raises(OSError) as refused:
            (mount.path / "STUDY01" / "SUB003" / "SUB003_MR1").rmdir()
        assert refused.value.errno == errno.EPERM
        with pytest.raises(OSError) as refused:
            (mount.path / "STUDY01").rmdir()
        assert refused.value.errno == errno.EPERM


def test_allow_delete_lets_rmdir_delete_experiments_subjects_and_projects(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=("--allow-delete",)) as mount:
        subject = mount.path / "STUDY01" / "SUB003"
        (subject / "SUB003_MR1").rmdir()
        assert "SUB003_MR1" not in {e.label for e in conn.list_experiments("STUDY01")}
        subject.rmdir()
        assert "SUB003" not in {s.label for s in conn.list_subjects("STUDY01")}
        assert "SUB003" not in os.listdir(mount.path / "STUDY01")
        (mount.path / "STUDY02").rmdir()
        assert "STUDY02" not in {p.id for p in conn.list_projects()}
        assert "STUDY02" not in os.listdir(mount.path)


def test_cp_a_rsync_and_metadata_changes(fake_xnat, conn, tmp_path):
    source = tmp_path / "derived"
    (source / "nested").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "nested" / "b.bin").write_bytes(os.urandom(300_000))
    os.chmod(source / "a.txt", 0o600)
    with mounted(fake_xnat.url, tmp_path) as mount:
        resources = session(mount) / "RESOURCES"
        (resources / "COPY").mkdir()
        done = subprocess.run(["cp", "-a", str(source) + "/.", str(resources / "COPY")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        (resources / "SYNC").mkdir()
        done = subprocess.run(["rsync", "-a", str(source) + "/", str(resources / "SYNC")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        for label in ("COPY", "SYNC"):
            assert server_files(conn, f"/data/experiments/{E1}/resources/{label}") == {
                "a.txt": b"alpha", "nested/b.bin": (source / "nested" / "b.bin").read_bytes()}
        target = resources / "COPY" / "a.txt"
        os.chmod(target, 0o600)
        os.utime(target, (0, 0))
        os.chown(target, os.getuid(), os.getgid())


def test_editor_style_save_replaces_the_target(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        (qc / "config.json").write_text('{"v": 1}')
        temporary = qc / ".config.json.swp"
        temporary.write_text('{"v": 2}')
        os.replace(temporary, qc / "config.json")
        files = server_files(conn, QC)
        assert files["config.json"] == b'{"v": 2}'
        assert ".config.json.swp" not in files
        assert (qc / "config.json").read_text() == '{"v": 2}'
        assert ".config.json.swp" not in os.listdir(qc)


def test_zip_in_scans_is_imported_as_dicom(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=1) as mount:
        series = session(mount) / "SCANS" / "3-T2w_SPC" / "DICOM"
        archive = tmp_path / "series.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(series.iterdir()):
                bundle.writestr(path.name, path.read_bytes())
        target = mount.path / "STUDY01" / "SUB050"
        target.mkdir()
        (target / "SUB050_MR1").mkdir()
        shutil.copy(archive, target / "SUB050_MR1" / "SCANS" / "upload.zip")
        assert "3-T2w_SPC" in os.listdir(target / "SUB050_MR1" / "SCANS")
        time.sleep(1.2)     # the zip itself stays listed only briefly
        assert os.listdir(target / "SUB050_MR1" / "SCANS") == ["3-T2w_SPC"]
        assert sorted(os.listdir(target / "SUB050_MR1" / "SCANS" / "3" / "DICOM")) == sorted(os.listdir(series))
        with pytest.raises(OSError) as refused:
            (target / "SUB050_MR1" / "SCANS" / "notes.txt").write_text("no")
        assert refused.value.errno == errno.EPERM
        # After its subject is renamed, an import still goes to the same session.
        target.rename(target.parent / "SUB051")
        subjects = {s.label for s in conn.list_subjects("STUDY01")}
        series2 = session(mount) / "SCANS" / "2-T1w_MPRAGE" / "DICOM"
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(series2.iterdir()):
                bundle.writestr(path.name, path.read_bytes())
        shutil.copyfile(archive, target.parent / "SUB051" / "SUB050_MR1" / "SCANS" / "second.zip")
        assert {s.label for s in conn.list_subjects("STUDY01")} == subjects
        experiment_id = os.getxattr(target.parent / "SUB051" / "SUB050_MR1", "user.xnat.id").decode()
        assert sorted(s.id for s in conn.get_experiment_contents(experiment_id).scans) == ["2", "3"]


def test_read_only_mount_and_shared_experiments_refuse_writes(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=("--read-only",)) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        assert (qc.stat().st_mode & 0o777) == 0o555
        attempts = [lambda: (qc / "x.txt").write_text("x"), lambda: (qc / "new").mkdir(),
                    lambda: next(qc.iterdir()).unlink(), lambda: (mount.path / "STUDY01" / "SUB009").mkdir(),
                    lambda: os.rename(mount.path / "STUDY01" / "SUB001", mount.path / "STUDY01" / "SUB009")]
        for attempt in attempts:
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
    with mounted(fake_xnat.url, tmp_path, name="rw") as mount:
        shared = mount.path / "STUDY02" / "SUB001" / "SUB001_MR1"
        for attempt in (lambda: (shared / "RESOURCES" / "QC" / "x.txt").write_text("x"),
                        lambda: (shared / "RESOURCES" / "NEW").mkdir(),
                        lambda: os.rename(shared, shared.parent / "RENAMED")):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
        assert "QC" in os.listdir(shared / "RESOURCES")


def test_permission_refused_is_eacces(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        project = mount.path / "STUDY01"
        os.listdir(project)
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(403,))
        with pytest.raises(PermissionError):
            (project / "SUB077").mkdir()
        fake_xnat.set_faults()
        assert "refused" in mount.log()


def test_truncate_by_path_and_removing_an_open_file(fake_xnat, conn, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = session(mount) / "RESOURCES" / "QC"
        csv = next(name for name in os.listdir(qc) if name.endswith(".csv"))
        old = (qc / csv).read_bytes()
        os.truncate(qc / csv, 10)
        assert server_files(conn, QC)[csv] == old[:10]
        assert (qc / csv).stat().st_size == 10
        with pytest.raises(OSError) as refused:
            os.truncate(qc / csv, 0)
        assert refused.value.errno == errno.ENOTSUP      # XNAT holds no empty files
        assert (qc / csv).stat().st_size == 10 and server_files(conn, QC)[csv] == old[:10]
        emptied = open(qc / csv, "wb")
        with pytest.raises(OSError) as refused:
            emptied.close()
        assert refused.value.errno == errno.ENOTSUP
        assert (qc / csv).stat().st_size == 10 and (qc / csv).read_bytes() == old[:10]
        handle = open(qc / "scratch.tmp", "w+b")
        handle.write(b"temporary")
        handle.flush()
        (qc / "scratch.tmp").unlink()
        assert os.fstat(handle.fileno()).st_size == 9
        assert os.pread(handle.fileno(), 4, 0) == b"temp"
        handle.close()
        assert "scratch.tmp" not in server_files(conn, QC)
        assert "scratch.tmp" not in os.listdir(qc)


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
