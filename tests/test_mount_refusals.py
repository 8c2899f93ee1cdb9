"""What the server will never take is refused once and waits for the user;
names the mount accepts are the names it shows; what XNAT has no
counterpart for is refused the way tools expect."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
import zipfile

import pytest

from fakeutil import cd_export_extras
from mountutil import isolated_env, mounted, xnatfs_command
from xnatfs.cache.spool import UploadSpool
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

QC = "/data/experiments/XNAT_E00001/resources/QC"
SESSION = ("STUDY01", "SUB001", "SUB001_MR1")
CREDENTIALS = {"XNAT_USER": "admin", "XNAT_PASS": "admin"}


def qc_of(mount):
    return mount.path.joinpath(*SESSION, "RESOURCES", "QC")


def server_names(server, resource_uri: str = QC) -> list[str]:
    with XnatConnection(server.url, "admin", "admin") as connection:
        return [remote.path for remote in connection.list_files(resource_uri)]


def uploads(mount, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(xnatfs_command("uploads", *args, "--cache-dir", str(mount.cache_dir)),
                          env=isolated_env(mount.home, **CREDENTIALS), capture_output=True, text=True, timeout=60)


def puts_of(server, name: str) -> int:
    return server.count(method="PUT", path_prefix=f"{QC}/files/{name}")


# ---- permanent refusals --------------------------------------------------------

def test_an_upload_the_server_refuses_is_not_sent_again_and_waits_for_the_user(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        os.listdir(qc)
        handle = open(qc / "refused.csv", "wb")
        handle.write(b"a,b\n1,2\n")
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(400,))
        with pytest.raises(OSError) as failed:
            handle.close()
        fake_xnat.set_faults()
        assert failed.value.errno == errno.EINVAL
        assert os.getxattr(qc / "refused.csv", "user.xnat.upload") == b"refused"
        assert b"400" in os.getxattr(qc / "refused.csv", "user.xnat.upload_error")
        assert (qc / "refused.csv").read_bytes() == b"a,b\n1,2\n"
    # Unmounting sends what is pending; a refused upload is not.
    assert puts_of(fake_xnat, "refused.csv") == 1
    [entry] = UploadSpool(mount.cache_dir / "spool").refused(fake_xnat.url)
    assert entry.state == "refused" and "400" in entry.last_error
    with mounted(fake_xnat.url, tmp_path, name="again") as again:
        # Still shown, still refused, and not sent by the next mount either.
        assert os.getxattr(qc_of(again) / "refused.csv", "user.xnat.upload") == b"refused"
    assert puts_of(fake_xnat, "refused.csv") == 1
    assert "refused.csv" not in server_names(fake_xnat)

    listed = uploads(mount, "list")
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(entry.id)]
    assert row.split()[1] == "refused" and "400" in row
    assert "uploads retry ID" in listed.stdout
    everything = uploads(mount, "retry")
    assert everything.returncode == 0 and "refused by the server" in everything.stderr
    assert puts_of(fake_xnat, "refused.csv") == 1
    # Once the cause is fixed, the user sends it by its ID.
    sent = uploads(mount, "retry", entry.id)
    assert sent.returncode == 0, sent.stderr
    assert "refused.csv" in server_names(fake_xnat)
    assert "no uploads waiting" in uploads(mount, "list").stdout


def test_a_refused_upload_can_be_discarded(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        os.listdir(qc)
        handle = open(qc / "unwanted.csv", "wb")
        handle.write(b"x\n")
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(403,))
        with pytest.raises(OSError) as failed:
            handle.close()
        fake_xnat.set_faults()
        assert failed.value.errno == errno.EACCES
    [entry] = UploadSpool(mount.cache_dir / "spool").refused(fake_xnat.url)
    dropped = uploads(mount, "discard", entry.id, "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert "no uploads waiting" in uploads(mount, "list").stdout
    assert puts_of(fake_xnat, "unwanted.csv") == 1


def test_a_zip_with_a_readme_and_dicomdir_is_imported(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        series = mount.path.joinpath(*SESSION, "SCANS", "3-T2w_SPC", "DICOM")
        archive = tmp_path / "export.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(series.iterdir()):
                bundle.writestr(f"DICOM/{path.name}", path.read_bytes())
            for name, data in cd_export_extras():
                bundle.writestr(name, data)
        target = mount.path / "STUDY01" / "SUB060"
        target.mkdir()
        (target / "SUB060_MR1").mkdir()
        shutil.copyfile(archive, target / "SUB060_MR1" / "SCANS" / "export.zip")
        assert "3-T2w_SPC" in os.listdir(target / "SUB060_MR1" / "SCANS")
        assert sorted(os.listdir(target / "SUB060_MR1" / "SCANS" / "3" / "DICOM")) == sorted(os.listdir(series))
    assert UploadSpool(mount.cache_dir / "spool").refused() == []


# ---- names -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["new\nline.txt", "tab\there.txt", "back\\slash.txt", "bell\x07.txt",
                                  "c1\u0085.txt"])
def test_names_xnat_cannot_store_are_refused_at_once(fake_xnat, tmp_path, name):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        with pytest.raises(OSError) as created:
            open(qc / name, "wb").close()
        assert created.value.errno == errno.EINVAL
        with pytest.raises(OSError) as made:
            (qc / name).mkdir()
        assert made.value.errno == errno.EINVAL
        (qc / "fine.txt").write_bytes(b"fine")
        with pytest.raises(OSError) as renamed:
            (qc / "fine.txt").rename(qc / name)
        assert renamed.value.errno == errno.EINVAL
        assert sorted(os.listdir(qc)) == ["fine.txt", "qc_metrics.csv", "qc_report.pdf"]
        assert "XNAT cannot store the name" in mount.log()
    assert sorted(server_names(fake_xnat)) == ["fine.txt", "qc_metrics.csv", "qc_report.pdf"]
    assert UploadSpool(mount.cache_dir / "spool").pending() == []


def test_subjects_and_experiments_cannot_take_the_names_of_the_mounts_own_folders(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        project = mount.path / "STUDY01"
        subject = project / "SUB001"
        # RESOURCES is there already (EEXIST); SCANS would come back as SCANS@<ID>.
        for parent, child, name, code in ((project, "SUB001", "SCANS", errno.EINVAL),
                                          (project, "SUB001", "RESOURCES", errno.EEXIST),
                                          (subject, "SUB001_MR1", "SCANS", errno.EINVAL),
                                          (subject, "SUB001_MR1", "RESOURCES", errno.EEXIST)):
            with pytest.raises(OSError) as made:
                (parent / name).mkdir()
            assert made.value.errno == code, (parent.name, name)
            with pytest.raises(OSError) as renamed:
                (parent / child).rename(parent / name)
            assert renamed.value.errno == code, (parent.name, name)
        assert "SUB001_MR1" in os.listdir(subject)
    with XnatConnection(fake_xnat.url, "admin", "admin") as connection:
        labels = {experiment.label for experiment in connection.list_experiments("STUDY01")}
        labels |= {subject.label for subject in connection.list_subjects("STUDY01")}
    assert not labels & {"SCANS", "RESOURCES"}


def test_an_accepted_name_is_the_name_shown_once_the_server_lists_it(fake_xnat, tmp_path):
    name = " résumé  final (v2) .txt"
    with mounted(fake_xnat.url, tmp_path, ttl=0.5) as mount:
        qc = qc_of(mount)
        (qc / name).write_bytes(b"kept as named")
        # Once our copy is gone, the entry comes from the server's listing (it has a URI).
        deadline = time.monotonic() + 15
        while True:
            try:
                os.getxattr(qc / name, "user.xnat.uri")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server's listing never showed the file"
                time.sleep(0.1)
        assert sorted(os.listdir(qc)) == sorted([name, "qc_metrics.csv", "qc_report.pdf"])
        assert (qc / name).read_bytes() == b"kept as named"


# ---- what XNAT has no counterpart for -------------------------------------------

def test_links_and_special_files_are_eperm(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        for make in (lambda: os.symlink("qc_metrics.csv", qc / "link.csv"),
                     lambda: os.link(qc / "qc_metrics.csv", qc / "hard.csv"),
                     lambda: os.mkfifo(qc / "fifo")):
            with pytest.raises(OSError) as refused:
                make()
            assert refused.value.errno == errno.EPERM
        assert sorted(os.listdir(qc)) == ["qc_metrics.csv", "qc_report.pdf"]


def test_new_local_folders_count_their_sub_folders(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        os.listdir(qc)
        assert qc.stat().st_nlink == 2
        (qc / "derived").mkdir()
        assert qc.stat().st_nlink == 3
        (qc / "derived" / "a").mkdir()
        (qc / "derived" / "b").mkdir()
        (qc / "derived" / "b" / "deeper").mkdir()
        assert (qc / "derived").stat().st_nlink == 4
        assert (qc / "derived" / "b").stat().st_nlink == 3
        assert (qc / "derived" / "a").stat().st_nlink == 2
        (qc / "derived" / "a").rmdir()
        assert (qc / "derived").stat().st_nlink == 3


def test_a_folder_in_a_resource_is_moved_by_mv_as_copy_and_delete(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        (qc / "old").mkdir()
        (qc / "old" / "one.txt").write_bytes(b"one")
        with pytest.raises(OSError) as renamed:
            (qc / "old").rename(qc / "new")
        assert renamed.value.errno == errno.EXDEV
        moved = subprocess.run(["mv", str(qc / "old"), str(qc / "new")], capture_output=True, text=True,
                               timeout=60)
        assert moved.returncode == 0, moved.stderr
        assert (qc / "new" / "one.txt").read_bytes() == b"one"
        assert not (qc / "old").exists()
    assert sorted(server_names(fake_xnat)) == ["new/one.txt", "qc_metrics.csv", "qc_report.pdf"]
