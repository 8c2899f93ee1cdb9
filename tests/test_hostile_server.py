"""A server that sends what it should not: the mount stays up and nothing escapes its folder.

Labels and names with ``/``, ``..``, NUL, control characters and 4000 bytes,
duplicate labels, sizes and digests that do not match the bytes, web pages
and garbage where JSON belongs, and a resource of 20 000 files. Labels are
put straight into the fake server's store; what the store refuses (file
paths, broken answers) is made by a relay that rewrites correct answers.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from mountutil import mounted, server_files
from test_reliability_common import Relay, md5, read_or_eio, vmrss_kib

pytestmark = pytest.mark.mount

NAME_MAX = 255
HOSTILE_LABELS = (
    "a/b",
    "..",
    ".",
    "",
    "\x00nul",
    "tab\there",
    "new\nline",
    "bell\x07",
    "del\x7f",
    "x" * 4000,
    "ü" * 1000,
    "RESOURCES",
    "SCANS",
    "a@b",
    "../../../etc",
)
QC_FILES = "/data/experiments/XNAT_E00001/resources/QC/files"
SESSION = "STUDY01/SUB001/SUB001_MR1"


def assert_safe_names(folder: Path) -> list[str]:
    """Every entry of ``folder`` is a plain, distinct name that stays inside it."""
    names = os.listdir(folder)
    assert len(names) == len(set(names))
    for name in names:
        assert name not in (".", "..") and "/" not in name and "\x00" not in name, repr(name)
        assert len(os.fsencode(name)) <= NAME_MAX, repr(name[:40])
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name), repr(name)
        resolved = (folder / name).resolve()
        assert resolved.parent == folder.resolve(), f"{name!r} points outside {folder}"
    return names


def walk_within(root: Path) -> int:
    """Walk everything under ``root``; every path stays under it. Returns the number of entries."""
    count = 0
    top = root.resolve()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            assert top in path.resolve().parents, f"{path} escapes {root}"
            count += 1
    return count


def listing_rows(body: bytes) -> list[dict] | None:
    try:
        document = json.loads(body)
        return document["ResultSet"]["Result"]
    except (ValueError, KeyError, TypeError):
        return None


def with_rows(body: bytes, rows: list[dict]) -> bytes:
    document = json.loads(body)
    document["ResultSet"]["Result"] = rows
    document["ResultSet"]["totalRecords"] = str(len(rows))
    return json.dumps(document).encode()


def file_listing_rewrite(relay: Relay, replace_row):
    """A rewrite that passes every file-listing row of the QC resource through ``replace_row(row)``,
    which returns the rows to list instead (with URIs registered in ``relay.redirect``)."""

    def rewrite(method, path, status, headers, body):
        if method != "GET" or status != 200 or "/files" not in path.split("?", 1)[0]:
            return status, headers, body
        rows = listing_rows(body)
        if rows is None:
            return status, headers, body
        changed = []
        for row in rows:
            if "/resources/" in row.get("URI", "") and row.get("collection") == "QC" and "XNAT_E00001" in row["URI"]:
                changed.extend(replace_row(row))
            else:
                changed.append(row)
        return status, headers, with_rows(body, changed)

    return rewrite


def renamed(relay: Relay, row: dict, raw_name: str, **changes) -> dict:
    """A copy of a file row listed under ``raw_name`` (any characters), still serving the row's bytes."""
    container = row["URI"].split("/files/", 1)[0]
    uri = f"{container}/files/{quote(raw_name, safe='')}"
    relay.redirect[uri] = row["URI"]
    return dict(row, URI=uri, Name=raw_name.rsplit("/", 1)[-1], **changes)


# ---- labels from the store ------------------------------------------------


def test_hostile_subject_and_experiment_labels_are_made_safe(fake_xnat, tmp_path):
    store = fake_xnat.store
    subjects = [store.add_subject("STUDY02", label) for label in HOSTILE_LABELS if label]
    for number, subject_id in enumerate(subjects[:6]):
        store.add_experiment("STUDY02", subject_id, HOSTILE_LABELS[number] or "_", xsi_type="xnat:mrSessionData")
    experiment_id = store.experiment_id("STUDY02", "a/b")
    store.add_scan(experiment_id, "7", type="../../../etc/passwd", series_description="../x")
    store.add_scan(experiment_id, "../8", type="T1w")
    store.put_file(experiment_id, "QC", "ok.txt", b"reachable\n")
    with mounted(fake_xnat.url, tmp_path) as mount:
        project = mount.path / "STUDY02"
        names = assert_safe_names(project)
        # Every subject has an entry (SUB101, the shared SUB001, the hostile ones) plus RESOURCES
        # (BIDS is opened by name, not listed).
        assert len(names) == 2 + len(subjects) + 1
        for name in names:
            assert_safe_names(project / name)
        with_session = [n for n in names if os.listdir(project / n) != ["RESOURCES"] and n not in ("RESOURCES", "BIDS")]
        assert len(with_session) >= 6
        entries = walk_within(project)
        assert entries > len(names)
        qc_files = [p for p in project.rglob("ok.txt")]
        assert len(qc_files) == 1 and qc_files[0].read_bytes() == b"reachable\n"
        scans = qc_files[0].parent.parent.parent / "SCANS"
        assert len(assert_safe_names(scans)) == 2
        assert mount.process.poll() is None
        assert "SUB101" in os.listdir(project)


def test_unsafe_names_are_logged(fake_xnat, tmp_path):
    fake_xnat.store.add_subject("STUDY02", "../../escape")
    with mounted(fake_xnat.url, tmp_path) as mount:
        names = os.listdir(mount.path / "STUDY02")
        assert any("escape" in name for name in names)
    assert "escape" in mount.log(), "a name made safe leaves no trace in the log"


# ---- file paths, duplicates and broken answers through the relay ------------


def test_hostile_file_paths_are_made_safe_and_serve_the_right_bytes(fake_xnat, tmp_path):
    hostile = (
        "../../../../etc/passwd",
        "..",
        ".",
        "a/../../b.txt",
        "nul\x00byte.txt",
        "ctl\x01\x1b[31m.txt",
        "line\nbreak.txt",
        "y" * 4000 + ".csv",
        "dup.txt",
        "dup.txt",
        "/absolute/path.txt",
        "back\\slash",
    )
    with Relay(fake_xnat.url) as relay:

        def replace(row: dict) -> list[dict]:
            if row["Name"] != "qc_metrics.csv":
                return [row]
            return [row] + [renamed(relay, row, name) for name in hostile]

        relay.rewrite = file_listing_rewrite(relay, replace)
        original = server_files(fake_xnat)[SESSION + "/RESOURCES/QC/qc_metrics.csv"]
        with mounted(
            relay.url, tmp_path, expected_errors=(r"open failed: server sent more than the \d+ bytes listed",)
        ) as mount:
            qc = mount.path / SESSION / "RESOURCES/QC"
            names = assert_safe_names(qc)
            files = [p for p in qc.rglob("*") if p.is_file()]
            # Every hostile row is shown (made safe) and serves the bytes it stands for.
            assert len(files) >= 2 + len(hostile)
            served = 0
            for path in files:
                assert top_level_inside(path, qc)
                if path.name == "qc_report.pdf":
                    continue
                data = read_or_eio(path)
                if os.getxattr(path, "user.xnat.uri").endswith((b"/files/.", b"/files/..")):
                    # "." and ".." as the last part of an address are dropped by HTTP
                    # libraries before the request is sent: these cannot be fetched.
                    continue
                assert data is not None, f"{path.relative_to(qc)} could not be read"
                assert md5(data) == original.digest, f"{path.relative_to(qc)} served other bytes"
                served += 1
            assert served == len(files) - 3  # all but the PDF and the two dot names
            assert walk_within(mount.path / SESSION) > len(names)
            assert mount.process.poll() is None


def top_level_inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def test_duplicate_labels_get_distinct_names_and_the_right_contents(fake_xnat, tmp_path):
    def rewrite(method, path, status, headers, body):
        base = path.split("?", 1)[0]
        rows = listing_rows(body) if status == 200 else None
        if rows is None:
            return status, headers, body
        if base == "/data/projects/STUDY01/subjects":
            for row in rows:
                if row["label"] == "SUB002":
                    row["label"] = "SUB001"
            rows.append(dict(rows[-1]))  # the same row twice, as some servers send shares
            return status, headers, with_rows(body, rows)
        if base == "/data/projects/STUDY01/experiments":
            for row in rows:
                if row["label"] == "SUB002_MR1":
                    row["label"] = "SUB001_MR1"
            return status, headers, with_rows(body, rows)
        return status, headers, body

    with Relay(fake_xnat.url, rewrite=rewrite) as relay, mounted(relay.url, tmp_path) as mount:
        project = mount.path / "STUDY01"
        names = assert_safe_names(project)
        first, second = sorted(n for n in names if n.startswith("SUB001"))[:2]
        assert first != second
        contents = {name: sorted(os.listdir(project / name)) for name in (first, second)}
        assert sorted(map(tuple, contents.values())) == sorted(
            [("RESOURCES", "SUB001_MR1", "SUB001_MR2"), ("RESOURCES", "SUB001_MR1")]
        )
        for name in (first, second):
            assert os.getxattr(project / name, "user.xnat.id").startswith(b"XNAT_S")
        ids = {os.getxattr(project / n, "user.xnat.id") for n in (first, second)}
        assert ids == {b"XNAT_S00001", b"XNAT_S00002"}
        assert mount.process.poll() is None


def test_wrong_sizes_and_digests_give_eio_never_wrong_bytes(fake_xnat, tmp_path):
    with Relay(fake_xnat.url) as relay:

        def replace(row: dict) -> list[dict]:
            if row["Name"] != "qc_metrics.csv":
                return [row]
            size = int(row["Size"])
            return [
                row,
                renamed(relay, row, "bigger.csv", Size=str(size + 10)),
                renamed(relay, row, "smaller.csv", Size=str(size - 10)),
                renamed(relay, row, "bad-digest.csv", digest="0" * 32),
            ]

        relay.rewrite = file_listing_rewrite(relay, replace)
        original = server_files(fake_xnat)[SESSION + "/RESOURCES/QC/qc_metrics.csv"]
        with mounted(
            relay.url,
            tmp_path,
            expected_errors=(
                r"open failed: (download ended after|downloaded file does not match its MD5|"
                r"server sent more than)",
            ),
        ) as mount:
            qc = mount.path / SESSION / "RESOURCES/QC"
            assert md5((qc / "qc_metrics.csv").read_bytes()) == original.digest
            for name in ("bigger.csv", "smaller.csv", "bad-digest.csv"):
                assert (qc / name).stat().st_size > 0
                assert read_or_eio(qc / name) is None, f"{name} was served although it does not match its listing"
            assert mount.process.poll() is None
        cache_names = [p for p in (mount.cache_dir / "data").rglob("*") if p.is_file()]
        assert cache_names and all(md5(p.read_bytes()) == original.digest for p in cache_names)


def test_unusable_sizes_are_skipped_or_read_right(fake_xnat, tmp_path):
    with Relay(fake_xnat.url) as relay:

        def replace(row: dict) -> list[dict]:
            if row["Name"] != "qc_metrics.csv":
                return [row]
            return [
                row,
                renamed(relay, row, "negative.csv", Size="-5"),
                renamed(relay, row, "garbage-size.csv", Size="lots"),
                renamed(relay, row, "empty-size.csv", Size=""),
            ]

        relay.rewrite = file_listing_rewrite(relay, replace)
        original = server_files(fake_xnat)[SESSION + "/RESOURCES/QC/qc_metrics.csv"]
        with mounted(relay.url, tmp_path) as mount:
            qc = mount.path / SESSION / "RESOURCES/QC"
            for name in ("negative.csv", "garbage-size.csv", "empty-size.csv"):
                if name not in os.listdir(qc):
                    continue  # skipped: fine
                (qc / name).stat()  # listed: it must be usable
                data = read_or_eio(qc / name)
                assert data is None or md5(data) == original.digest, f"{name} served wrong bytes"


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html><head><title>Login</title></head><body>Please log in</body></html>",
        b'{"ResultSet": {"Result": [{"ID": "XNAT_S00001", "label": "SUB0',
        b'{"ResultSet": {"Result": "not a list"}}',
        b"[1, 2, 3]",
        b"",
    ],
    ids=["html", "cut-json", "result-not-a-list", "wrong-shape", "empty"],
)
def test_web_pages_and_garbage_instead_of_json_are_eio_and_the_mount_recovers(fake_xnat, tmp_path, body):
    broken = {"on": False}

    def rewrite(method, path, status, headers, original):
        if broken["on"] and path.startswith("/data/projects/STUDY01/subjects"):
            return (
                200,
                [(k, v) for k, v in headers if k.lower() != "content-type"]
                + [("Content-Type", "text/html" if body.startswith(b"<") else "application/json")],
                body,
            )
        return status, headers, original

    with (
        Relay(fake_xnat.url, rewrite=rewrite) as relay,
        mounted(
            relay.url,
            tmp_path,
            ttl=1,
            expected_errors=(
                r"opendir failed: (server answered with a web page|server answer is not valid "
                r"JSON|listing answer)",
            ),
        ) as mount,
    ):
        broken["on"] = True
        with pytest.raises(OSError) as failed:
            os.listdir(mount.path / "STUDY01")
        assert failed.value.errno == errno.EIO
        broken["on"] = False
        assert "SUB001" in os.listdir(mount.path / "STUDY01")
        assert mount.process.poll() is None


def test_rows_without_the_fields_they_need_are_skipped(fake_xnat, tmp_path):
    def rewrite(method, path, status, headers, body):
        if path.split("?", 1)[0] == "/data/projects/STUDY01/subjects" and status == 200:
            rows = listing_rows(body)
            rows += [
                None,
                7,
                "text",
                [],
                {},
                {"label": "NOID"},
                {"ID": "", "label": ""},
                {"ID": 12345, "label": ["not", "text"]},
            ]
            return status, headers, with_rows(body, rows)
        return status, headers, body

    with Relay(fake_xnat.url, rewrite=rewrite) as relay, mounted(relay.url, tmp_path) as mount:
        names = assert_safe_names(mount.path / "STUDY01")
        assert {"SUB001", "SUB002", "SUB003", "RESOURCES"} <= set(names)
        assert mount.process.poll() is None


@pytest.mark.slow
def test_a_resource_of_20000_files(fake_xnat, tmp_path):
    count = 20_000
    with Relay(fake_xnat.url) as relay:

        def replace(row: dict) -> list[dict]:
            if row["Name"] != "qc_metrics.csv":
                return [row]
            return [
                renamed(relay, row, f"part{index:05d}/file{index:05d}.csv" if index % 2 else f"file{index:05d}.csv")
                for index in range(count)
            ]

        relay.rewrite = file_listing_rewrite(relay, replace)
        original = server_files(fake_xnat)[SESSION + "/RESOURCES/QC/qc_metrics.csv"]
        with mounted(relay.url, tmp_path) as mount:
            qc = mount.path / SESSION / "RESOURCES/QC"
            before = vmrss_kib(mount.process.pid)
            started = time.monotonic()
            names = os.listdir(qc)
            took = time.monotonic() - started
            assert len(names) == count // 2 + count // 2 + 1  # files, folders, the PDF
            assert took < 20, f"listing 20 000 files took {took:.1f} s"
            sizes = [entry.stat().st_size for entry in os.scandir(qc) if entry.is_file()]
            assert len(sizes) == count // 2 + 1
            for name in ("file00000.csv", "part00001/file00001.csv", "file19998.csv"):
                assert md5((qc / name).read_bytes()) == original.digest
            grown = vmrss_kib(mount.process.pid) - before
            assert grown < 200_000, f"the daemon grew by {grown} KiB for one listing"
            assert mount.process.poll() is None


def test_an_endless_listing_is_eio_and_the_daemon_stays_small(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, ttl=1, expected_errors=(r"answer larger than \d+ bytes",)) as mount:
        assert "STUDY01" in os.listdir(mount.path)
        before = vmrss_kib(mount.process.pid)
        fake_xnat.endless_answers = "/data/projects/STUDY02/subjects"
        with pytest.raises(OSError) as failed:
            os.listdir(mount.path / "STUDY02")
        assert failed.value.errno == errno.EIO
        # The default bound is 64 MiB; without one the daemon grows by gigabytes.
        assert vmrss_kib(mount.process.pid) - before < 256 * 1024
        fake_xnat.endless_answers = None
        assert "SUB101" in os.listdir(mount.path / "STUDY02")
        assert mount.process.poll() is None
    assert "answer larger than" in mount.log()
