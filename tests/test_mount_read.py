"""A real read-only mount of the fake XNAT: tree, sizes, bytes, attributes, caching."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from mountutil import mounted
from test_reliability_common import write_config
from waiting import wait_until

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
    return [target for method, target, _status in server.requests if method == "GET" and "format=zip" in target]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def session_dir(mount) -> Path:
    return mount.path / "STUDY01" / "SUB001" / "SUB001_MR1"


def read_ahead(server, *requests: str) -> None:
    """Wait until the server has answered each of these loads ahead (a later look joins one still
    being read rather than asking again)."""
    wait_until(lambda: all(server.count("GET", request) for request in requests), f"the loads ahead {requests}")


def dicom_dir(mount) -> Path:
    scans = session_dir(mount) / "SCANS"
    return next(p for p in scans.iterdir() if p.name.startswith("2-")) / "DICOM"


def test_listing_costs_one_request_per_level(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = session_dir(mount)
        fake_xnat.reset_counts()
        os.listdir(mount.path / "STUDY01")
        assert fake_xnat.count("GET") == 2  # subjects, experiments of the whole project
        os.listdir(mount.path / "STUDY01" / "SUB001")
        os.listdir(session)
        # The sibling session is loaded ahead too, its item JSON beside its files.
        read_ahead(
            fake_xnat,
            "/data/experiments/XNAT_E00001/files",
            "/data/experiments/XNAT_E00002/files",
            "/data/experiments/XNAT_E00002?",
        )
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
        read_ahead(
            fake_xnat,
            "/data/experiments/XNAT_E00001/files",
            "/data/experiments/XNAT_E00002/files",
            "/data/experiments/XNAT_E00002?",
        )
        fake_xnat.reset_counts()
        os.listdir(project / "SUB002")  # in order after SUB001: SUB003 is loaded ahead
        read_ahead(
            fake_xnat,
            "/data/experiments/XNAT_E00004/files",
            "/data/projects/STUDY01/subjects?columns=",  # the subjects' resources
            "/data/experiments?columns=ID%2Cxnat%3Aimagescandata",  # the project's scans
            "/data/experiments?columns=ID%2Cxnat%3Aexperimentdata",
        )  # its sessions' resources
        fake_xnat.reset_counts()
        for _folder, _dirs, _files in os.walk(project / "SUB003"):
            pass
        assert fake_xnat.count() == 0, fake_xnat.requests


def test_cache_hit_costs_no_request_and_survives_remount(fake_xnat, tmp_path):
    cache = tmp_path / "shared-cache"
    with mounted(fake_xnat.url, tmp_path, cache_dir=cache) as mount:
        files = sorted(dicom_dir(mount).iterdir())
        first = {f.name: f.read_bytes() for f in files}
        # Its folder named, the whole series comes as one zip started before the first open.
        assert downloads(fake_xnat) == []
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
        assert downloads(fake_xnat) == []
        assert len(zip_downloads(fake_xnat)) == 1
        # A file outside scans (a session resource) is fetched on its own.
        qc = session_dir(mount) / "RESOURCES" / "QC"
        for path in qc.iterdir():
            path.read_bytes()
        assert len(downloads(fake_xnat)) == len(os.listdir(qc))
        assert len(zip_downloads(fake_xnat)) == 1


def test_concurrent_readers_cause_one_download(fake_xnat, tmp_path):
    # No zip before the first open: the readers must share the file's own download.
    args = write_config(tmp_path / "config.toml", series_early_size=0)
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
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
        # The listing and the kernel's entries expire a TTL after they were loaded.
        wait_until(
            lambda: "added.txt" in os.listdir(qc) and (qc / csv_name).stat().st_size == len(old) + 12,
            "the server's changes to show once the TTL has passed",
        )
        assert set(os.listdir(qc)) == before | {"added.txt"}
        assert (qc / "added.txt").read_bytes() == b"new file"
        assert (qc / csv_name).stat().st_size == len(old) + 12
        assert (qc / csv_name).read_bytes() == old + b"changed,row\n"


def test_a_series_file_changed_on_the_server_is_read_anew(fake_xnat, tmp_path):
    """Read through its zip, a series sits in the kernel's page cache and, for a while, in the
    daemon's memory: a file of it changed on the server is read as it is now once its listing
    expires."""
    with mounted(fake_xnat.url, tmp_path, ttl=1) as mount:
        folder = dicom_dir(mount)
        files = sorted(folder.iterdir())
        old = {path.name: path.read_bytes() for path in files}
        assert len(zip_downloads(fake_xnat)) == 1
        target = files[len(files) // 2]
        changed = b"changed on the server" + old[target.name]
        experiment_id = os.getxattr(session_dir(mount), "user.xnat.id").decode()
        fake_xnat.store.put_file(experiment_id, "DICOM", target.name, changed, scan_id="2")
        wait_until(lambda: target.stat().st_size == len(changed), "the change to show once the TTL has passed")
        assert target.read_bytes() == changed
        assert {path.name: path.read_bytes() for path in files if path != target} == {
            name: data for name, data in old.items() if name != target.name
        }


def test_small_cache_evicts_and_stays_bounded(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, cache_size="64K") as mount:
        files = sorted(dicom_dir(mount).iterdir())
        total = sum(f.stat().st_size for f in files)
        assert total > 64 * 1024
        for path in files:
            assert path.read_bytes()
        stored = sum(p.stat().st_size for p in (mount.cache_dir / "data").rglob("*") if p.is_file())
        assert 0 < stored <= 64 * 1024
