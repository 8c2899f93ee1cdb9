"""A series zip that starts before a file of it is opened: when a scan's resource
folder is named outside a walk, while its file listing is still on its way."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from mountutil import mounted
from test_reliability_common import write_config
from waiting import wait_until

pytestmark = pytest.mark.mount

SESSION = ("STUDY01", "SUB001", "SUB001_MR1")


def zip_requests(server) -> list[str]:
    return [target for method, target, _status in server.requests if method == "GET" and "format=zip" in target]


def file_downloads(server) -> list[str]:
    """File downloads (not listings, not zips) the server answered."""
    return [
        target
        for method, target, _status in server.requests
        if method == "GET" and "/files/" in target.split("?", 1)[0] and "format=zip" not in target
    ]


def session_dir(mount) -> Path:
    return mount.path.joinpath(*SESSION)


def scan_resource(mount, scan_prefix: str = "2-") -> Path:
    """The scan's DICOM folder, reached by name below SCANS/ (the scan folder itself is not listed)."""
    scans = session_dir(mount) / "SCANS"
    return next(p for p in scans.iterdir() if p.name.startswith(scan_prefix)) / "DICOM"


def file_listing_prefix(mount) -> str:
    """The session's file listing, as the server's request log shows it."""
    experiment_id = os.getxattr(session_dir(mount), "user.xnat.id").decode()
    return f"/data/experiments/{experiment_id}/files"


def test_the_zip_is_asked_for_before_the_file_listing_answers(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        listing = file_listing_prefix(mount)
        fake_xnat.slow_answers[listing] = 1.5
        listed: list[Path] = []
        lister = threading.Thread(target=lambda: listed.extend(sorted(scan_resource(mount).iterdir())))
        lister.start()
        wait_until(lambda: zip_requests(fake_xnat), "the series zip to be answered")
        assert fake_xnat.count("GET", listing) == 0, "the file listing answered before the zip was asked for"
        lister.join(30)
        assert listed
        for path in listed:
            data = path.read_bytes()
            assert hashlib.md5(data).hexdigest() == os.getxattr(path, "user.xnat.digest").decode()
        # Every file came from the one zip, the first included.
        assert len(zip_requests(fake_xnat)) == 1
        assert file_downloads(fake_xnat) == []


def test_a_resource_its_record_shows_bigger_than_the_bound_starts_no_early_zip(fake_xnat, tmp_path):
    args = write_config(tmp_path / "config.toml", series_early_size="1K")
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        folder = scan_resource(mount)
        names = sorted(os.listdir(folder))
        assert zip_requests(fake_xnat) == []
        # Read, the series is zipped as before.
        assert (folder / names[0]).read_bytes()
        wait_until(lambda: len(zip_requests(fake_xnat)) == 1, "the zip started by the open")


def test_an_early_zip_nobody_opens_a_file_of_is_abandoned_after_its_wait(fake_xnat, tmp_path):
    args = write_config(tmp_path / "config.toml", series_early_wait=0.3)
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        fake_xnat.slow_answers[file_listing_prefix(mount)] = 1.0
        os.listdir(scan_resource(mount))
        assert "no file of it was opened within 0.3 s" in mount.log()
        assert len(zip_requests(fake_xnat)) == 1
        assert not [p for p in (mount.cache_dir / "data").rglob("*") if p.is_file()]


def test_naming_many_series_folders_starts_few_early_zips(fake_xnat, tmp_path):
    args = write_config(tmp_path / "config.toml", series_early_wait=0.5)
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        fake_xnat.slow_answers[file_listing_prefix(mount)] = 1.0
        named = [scan_resource(mount, f"{number}-") for number in (1, 2, 3, 4, 5)]
        for folder in named:
            folder.stat()  # named, never opened
        wait_until(lambda: mount.log().count("no file of it was opened") >= 2, "the early zips to be abandoned")
        assert len(zip_requests(fake_xnat)) == 2


def test_a_walk_starts_no_series_zip(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        found = subprocess.run(
            ["find", str(mount.path / "STUDY01" / "SUB001")], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split("\n")
        assert any("/DICOM/" in line for line in found)
        [folder for folder, _dirs, _files in os.walk(mount.path / "STUDY01" / "SUB002")]
        assert zip_requests(fake_xnat) == []


def test_an_early_zip_member_that_does_not_match_its_listing_is_never_served(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        listing = file_listing_prefix(mount)
        names = sorted(os.listdir(scan_resource(mount)))
        bad = names[1]
        # The listing promises other bytes than the zip holds for this one file.
        fake_xnat.store._db.execute(
            "UPDATE files SET digest = ? WHERE path = ? AND resource_id IN "
            "(SELECT id FROM resources WHERE label = 'DICOM')",
            ("0" * 32, bad),
        )
    fake_xnat.reset_counts()
    with mounted(
        fake_xnat.url, tmp_path, name="mnt2", cache_dir=tmp_path / "cache2", expected_errors=(r"open failed: .*MD5",)
    ) as mount:
        fake_xnat.slow_answers[listing] = 0.5
        folder = scan_resource(mount)
        folder.stat()  # named: the zip starts while the listing is on its way
        wait_until(lambda: zip_requests(fake_xnat), "the early zip")
        with pytest.raises(OSError):
            (folder / bad).read_bytes()
        assert (folder / names[0]).read_bytes()
        assert "does not match the listing" in mount.log()
