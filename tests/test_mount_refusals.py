"""What the server will never take is refused once and waits for the user
(``xnatfs uploads``), and ``mv`` of a folder in a resource, on a real mount.

Names and the refusals of links and special files are checked without a
kernel in test_fsapi_write.py."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import zipfile

import pytest

from fakeutil import cd_export_extras
from mountutil import mounted, uploads
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


def puts_of(server, name: str) -> int:
    return server.count(method="PUT", path_prefix=f"{QC}/files/{name}")


# ---- permanent refusals --------------------------------------------------------


def test_an_upload_the_server_refuses_is_not_sent_again_and_waits_for_the_user(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, expected_errors=(r"refused\.csv.* refused",)) as mount:
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

    listed = uploads(mount, "list", **CREDENTIALS)
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(entry.id)]
    assert row.split()[1] == "refused" and "400" in row
    assert "uploads retry ID" in listed.stdout
    everything = uploads(mount, "retry", **CREDENTIALS)
    assert everything.returncode == 0 and "refused by the server" in everything.stderr
    assert puts_of(fake_xnat, "refused.csv") == 1
    # Once the cause is fixed, the user sends it by its ID.
    sent = uploads(mount, "retry", entry.id, **CREDENTIALS)
    assert sent.returncode == 0, sent.stderr
    assert "refused.csv" in server_names(fake_xnat)
    assert "no uploads waiting" in uploads(mount, "list", **CREDENTIALS).stdout


def test_a_refused_upload_can_be_discarded(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, expected_errors=(r"unwanted\.csv.* refused",)) as mount:
        qc = qc_of(mount)
        os.listdir(qc)
        handle = open(qc / "unwanted.csv", "wb")
        handle.write(b"x\n")
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(403,))
        with pytest.raises(OSError) as failed:
            handle.close()
        fake_xnat.set_faults()
        assert failed.value.errno == errno.EACCES
        assert os.getxattr(qc / "unwanted.csv", "user.xnat.upload") == b"refused"
        [entry] = UploadSpool(mount.cache_dir / "spool").refused(fake_xnat.url)
        dropped = uploads(mount, "discard", entry.id, "--yes", **CREDENTIALS)
        assert dropped.returncode == 0, dropped.stderr
        # The mount heard of it at once: the file is the server's to show, and it has none.
        assert "unwanted.csv" not in os.listdir(qc)
        assert not (qc / "unwanted.csv").exists()
    assert "no uploads waiting" in uploads(mount, "list", **CREDENTIALS).stdout
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


# ---- what XNAT has no counterpart for -------------------------------------------


def test_a_folder_in_a_resource_is_moved_by_mv_as_copy_and_delete(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = qc_of(mount)
        (qc / "old").mkdir()
        (qc / "old" / "one.txt").write_bytes(b"one")
        with pytest.raises(OSError) as renamed:
            (qc / "old").rename(qc / "new")
        assert renamed.value.errno == errno.EXDEV
        moved = subprocess.run(["mv", str(qc / "old"), str(qc / "new")], capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0, moved.stderr
        assert (qc / "new" / "one.txt").read_bytes() == b"one"
        assert not (qc / "old").exists()
    assert sorted(server_names(fake_xnat)) == ["new/one.txt", "qc_metrics.csv", "qc_report.pdf"]
