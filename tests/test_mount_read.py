"""A real read-only mount of the fake XNAT: tree, sizes, bytes, attributes, caching."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from mountutil import mounted, server_files
from xnatfs.fs.names import RESERVED

pytestmark = pytest.mark.mount


def downloads(server) -> list[str]:
    """Paths of file downloads (not listings) the server answered."""
    found = []
    for method, target, _status in server.requests:
        path = target.split("?", 1)[0]
        if method == "GET" and "/files/" in path:
            found.append(path)
    return found


def zip_downloads(server) -> list[str]:
    return [target for method, target, _status in server.requests
            if method == "GET" and "format=zip" in target]


def walk_files(root: Path) -> dict[str, os.stat_result]:
    found = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = path.stat()
    return found


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def session_dir(mount) -> Path:
    return mount.path / "STUDY01" / "SUB001" / "SUB001_MR1"


def dicom_dir(mount) -> Path:
    scans = session_dir(mount) / "SCANS"
    return next(p for p in scans.iterdir() if p.name.startswith("2-")) / "DICOM"


def test_tree_sizes_and_bytes_equal_the_server(fake_xnat, tmp_path):
    expected = server_files(fake_xnat)
    assert len(expected) > 20
    # The server's own files; the BIDS view is made by the mount (tests/test_bids_view.py).
    with mounted(fake_xnat.url, tmp_path, args=("--no-bids",)) as mount:
        fake_xnat.reset_counts()
        seen = walk_files(mount.path)
        assert set(seen) == set(expected)
        assert {p: s.st_size for p, s in seen.items()} == {p: e.size for p, e in expected.items()}
        assert downloads(fake_xnat) == [], "stat must never download"
        for relative, record in expected.items():
            size, digest = record.size, record.digest
            data = (mount.path / relative).read_bytes()
            assert len(data) == size
            if digest:
                assert hashlib.md5(data).hexdigest() == digest, relative


def test_listing_costs_one_request_per_level(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = session_dir(mount)
        fake_xnat.reset_counts()
        os.listdir(mount.path / "STUDY01")
        assert fake_xnat.count("GET") == 2          # subjects, experiments of the whole project
        os.listdir(mount.path / "STUDY01" / "SUB001")
        os.listdir(session)
        time.sleep(0.3)                             # the read-ahead of the subject's sessions
        fake_xnat.reset_counts()
        for scan in (session / "SCANS").iterdir():
            for resource in scan.iterdir():
                [entry.stat() for entry in os.scandir(resource)]
        assert fake_xnat.count() == 0, fake_xnat.requests


def test_a_walk_through_subjects_reads_ahead(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        project = mount.path / "STUDY01"
        assert sorted(name for name in os.listdir(project) if name.startswith("SUB")) == ["SUB001", "SUB002", "SUB003"]
        os.listdir(project / "SUB001")
        time.sleep(0.5)
        fake_xnat.reset_counts()
        os.listdir(project / "SUB002")          # in order after SUB001: SUB003 is loaded ahead
        time.sleep(0.5)
        fake_xnat.reset_counts()
        for folder, _dirs, _files in os.walk(project / "SUB003"):
            pass
        assert fake_xnat.count() == 0, fake_xnat.requests


def test_modes_times_and_link_counts(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = session_dir(mount)
        scans = session / "SCANS"
        names = os.listdir(scans)
        info = scans.stat()
        assert info.st_nlink == 2 + len(names)
        assert info.st_mode & 0o777 == 0o755
        assert info.st_uid == os.getuid()
        some_file = next(dicom_dir(mount).iterdir())
        assert some_file.stat().st_mode & 0o777 == 0o644
        assert some_file.stat().st_mtime > 946684800        # an insert date, not the epoch
        shared = mount.path / "STUDY02" / "SUB001" / "SUB001_MR1"
        assert shared.stat().st_mode & 0o777 == 0o555
        shared_file = next(p for p in shared.rglob("*") if p.is_file())
        assert shared_file.stat().st_mode & 0o777 == 0o444


def test_bare_scan_id_resolves_but_is_not_listed(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        scans = session_dir(mount) / "SCANS"
        listed = os.listdir(scans)
        assert "2" not in listed
        assert any(name.startswith("2-") for name in listed)
        assert sorted(os.listdir(scans / "2" / "DICOM")) == sorted(os.listdir(dicom_dir(mount)))
        assert sorted(os.listdir(session_dir(mount))) == sorted(RESERVED)


def test_extended_attributes(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        scan = dicom_dir(mount).parent
        assert os.getxattr(scan, "user.xnat.id") == b"2"
        assert os.getxattr(scan, "user.xnat.type").decode()
        assert os.getxattr(scan, "user.xnat.xsi_type") == b"xnat:mrScanData"
        assert b"/scans/2" in os.getxattr(scan, "user.xnat.uri")
        names = set(os.listxattr(scan))
        assert {"user.xnat.id", "user.xnat.uri", "user.xnat.xsi_type", "user.xnat.type"} <= names
        experiment = session_dir(mount)
        assert os.getxattr(experiment, "user.xnat.label") == b"SUB001_MR1"
        assert os.getxattr(experiment, "user.xnat.id").startswith(b"XNAT_E")
        some_file = sorted(dicom_dir(mount).iterdir())[0]
        assert os.getxattr(some_file, "user.xnat.digest") == md5_of(some_file).encode()
        assert os.getxattr(some_file, "user.xnat.format") == b"DICOM"
        with pytest.raises(OSError) as missing:
            os.getxattr(some_file, "user.xnat.nothing")
        assert missing.value.errno == errno.ENODATA


def test_missing_names_are_enoent(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        for missing in ("NOPROJECT", "STUDY01/NOSUBJECT", "STUDY01/SUB001/SUB001_MR1/SCANS/999",
                        "STUDY01/SUB001/SUB001_MR1/SCANS/2/NORESOURCE/x.dcm"):
            with pytest.raises(FileNotFoundError):
                (mount.path / missing).stat()
        with pytest.raises(NotADirectoryError):
            os.listdir(next(dicom_dir(mount).iterdir()))
        shared = mount.path / "STUDY02" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC"
        with pytest.raises(OSError) as refused:
            open(next(shared.iterdir()), "r+b")
        assert refused.value.errno == errno.EROFS


def test_cache_hit_costs_no_request_and_survives_remount(fake_xnat, tmp_path):
    cache = tmp_path / "shared-cache"
    with mounted(fake_xnat.url, tmp_path, cache_dir=cache) as mount:
        files = sorted(dicom_dir(mount).iterdir())
        first = {f.name: f.read_bytes() for f in files}
        # The first file on its own, the rest of the series as one zip.
        assert len(downloads(fake_xnat)) == 1
        assert len(zip_downloads(fake_xnat)) == 1
        fake_xnat.reset_counts()
        again = {f.name: f.read_bytes() for f in files}
        assert again == first
        assert fake_xnat.count() == 0
    fake_xnat.reset_counts()
    with mounted(fake_xnat.url, tmp_path, cache_dir=cache, name="mnt2") as mount:
        files = sorted(dicom_dir(mount).iterdir())
        assert {f.name: f.read_bytes() for f in files} == first
        assert downloads(fake_xnat) == [] and zip_downloads(fake_xnat) == []


def test_a_series_is_fetched_as_one_zip_and_verified(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        files = sorted(dicom_dir(mount).iterdir())
        for path in files:
            assert md5_of(path) == os.getxattr(path, "user.xnat.digest").decode()
        assert len(downloads(fake_xnat)) == 1
        assert len(zip_downloads(fake_xnat)) == 1
        # A file outside scans (a session resource) is fetched on its own.
        qc = session_dir(mount) / "RESOURCES" / "QC"
        for path in qc.iterdir():
            path.read_bytes()
        assert len(downloads(fake_xnat)) == 1 + len(os.listdir(qc))
        assert len(zip_downloads(fake_xnat)) == 1


def test_concurrent_readers_cause_one_download(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        target = sorted(dicom_dir(mount).iterdir())[0]
        target.stat()
        fake_xnat.latency_ms = 200
        fake_xnat.reset_counts()
        results: list[bytes] = []
        barrier = threading.Barrier(8)

        def reader() -> None:
            barrier.wait()
            with open(target, "rb") as handle:
                results.append(handle.read())

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        fake_xnat.latency_ms = 0
        assert len(results) == 8 and len(set(results)) == 1
        assert len(downloads(fake_xnat)) == 1


def test_ttl_expiry_shows_server_changes(fake_xnat, tmp_path):
    store = fake_xnat.store
    with mounted(fake_xnat.url, tmp_path, ttl=1) as mount:
        qc = session_dir(mount) / "RESOURCES" / "QC"
        before = set(os.listdir(qc))
        csv_name = next(name for name in before if name.endswith(".csv"))
        old = (qc / csv_name).read_bytes()
        experiment_id = os.getxattr(session_dir(mount), "user.xnat.id").decode()
        store.put_file(experiment_id, "QC", "added.txt", b"new file")
        store.put_file(experiment_id, "QC", csv_name, old + b"changed,row\n")
        time.sleep(1.6)
        assert set(os.listdir(qc)) == before | {"added.txt"}
        assert (qc / "added.txt").read_bytes() == b"new file"
        assert (qc / csv_name).stat().st_size == len(old) + 12
        assert (qc / csv_name).read_bytes() == old + b"changed,row\n"


def test_small_cache_evicts_and_stays_bounded(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, cache_size="64K") as mount:
        files = sorted(dicom_dir(mount).iterdir())
        total = sum(f.stat().st_size for f in files)
        assert total > 64 * 1024
        for path in files:
            assert path.read_bytes()
        stored = sum(p.stat().st_size for p in (mount.cache_dir / "data").rglob("*") if p.is_file())
        assert 0 < stored <= 64 * 1024


def test_unsafe_and_colliding_labels_are_shown_safely_and_logged(fake_xnat, tmp_path):
    store = fake_xnat.store
    store.add_subject("STUDY02", "../../escape")
    store.add_subject("STUDY02", "RESOURCES")
    with mounted(fake_xnat.url, tmp_path) as mount:
        names = os.listdir(mount.path / "STUDY02")
        assert ".._.._escape" in names
        assert "RESOURCES" in names and any(name.startswith("RESOURCES@XNAT_S") for name in names)
        assert os.listdir(mount.path / "STUDY02" / ".._.._escape") == ["RESOURCES"]
    log = mount.log()
    assert "'../../escape' is shown as '.._.._escape'" in log
    assert "'RESOURCES' is shown as 'RESOURCES@XNAT_S" in log


def test_series_prefetch_can_be_turned_off(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=("--series-zip-size", "0")) as mount:
        first = sorted(dicom_dir(mount).iterdir())[0]
        fake_xnat.reset_counts()
        first.read_bytes()
        time.sleep(0.3)                         # a zip would have started by now
        assert zip_downloads(fake_xnat) == []
        assert len(downloads(fake_xnat)) == 1
