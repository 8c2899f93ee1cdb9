"""SIGKILL of the daemon at the worst moments; the next mount must find everything in order.

Moments: in the middle of a download, in the middle of a series zip, while an
upload is in flight (before it reached the server, and after the server
stored it but before its answer arrived), and at random during a read load.
After each crash the cache must hold only complete entries whose bytes match
their keys, and every upload must land on the server exactly once.
"""

from __future__ import annotations

import io
import os
import random
import signal
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mountutil import mounted, server_files, uploads
from test_reliability_common import (
    Relay,
    cached_entries,
    check_cache,
    known_entries,
    md5,
)
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

SESSION = "STUDY01/SUB001/SUB001_MR1"
QC_URI = "/data/experiments/XNAT_E00001/resources/QC"


def kill(mount) -> None:
    mount.process.send_signal(signal.SIGKILL)
    mount.process.wait(timeout=20)


def kill_holding(mount, *handles) -> None:
    """Kill the daemon while ``handles`` are open on the mount; then close them (a dead
    mount fails their close)."""
    kill(mount)
    for handle in handles:
        try:
            handle.close()
        except OSError:
            pass


def uploads_listed(mount) -> str:
    """What ``xnatfs uploads list`` shows of the mount's spool."""
    listed = uploads(mount, "list")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def data_files(cache_dir) -> list:
    return [path for path in (cache_dir / "data").rglob("*") if path.is_file()]


def background(function, *args) -> threading.Thread:
    """Run ``function`` in a daemon thread, ignoring the errors a dying mount gives it."""

    def run() -> None:
        try:
            function(*args)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_file(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def write_file(path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def check_data_entries(cache_dir, url, files) -> int:
    """The complete entries (not the unfinished downloads) hold the right bytes."""
    expected = known_entries(url, files)
    entries = cached_entries(cache_dir)
    for entry in entries:
        assert entry.name in expected, f"unknown cache entry {entry}"
        assert md5(entry.read_bytes()) == expected[entry.name], f"{entry} holds the wrong bytes"
    return len(entries)


def qc_file_on_server(server, name: str) -> bytes | None:
    with XnatConnection(server.url, server.username, server.password) as conn:
        for remote in conn.list_files(QC_URI):
            if remote.path == name:
                buffer = io.BytesIO()
                conn.download(remote.uri, buffer)
                return buffer.getvalue()
    return None


def uploads_of(server, name: str) -> int:
    return sum(
        1
        for method, target, status in server.requests
        if method == "PUT" and target.split("?", 1)[0].endswith("/files/" + name) and status < 300
    )


def imports_of(server) -> int:
    return sum(
        1 for method, target, _s in server.requests if method == "POST" and target.startswith("/data/services/import")
    )


def test_sigkill_during_a_download(fake_xnat, tmp_path):
    payload = os.urandom(4 << 20)
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", payload)
    big = server_files(fake_xnat, projects=("STUDY01",))[SESSION + "/RESOURCES/RAW/big.bin"]
    with Relay(fake_xnat.url, throttle=2 << 20) as relay:
        with mounted(relay.url, tmp_path) as mount:
            path = mount.path / SESSION / "RESOURCES/RAW/big.bin"
            assert path.stat().st_size == len(payload)
            reader = background(read_file, path)
            tmp_dir = mount.cache_dir / "tmp"
            wait_until(
                lambda: any(p.stat().st_size > 0 for p in tmp_dir.glob("*.part")), what="the download to start writing"
            )
            kill(mount)
            reader.join(20)
        assert list((mount.cache_dir / "tmp").glob("*.part")), "the crash left no unfinished download?"
        assert check_data_entries(mount.cache_dir, relay.url, []) == 0, "a partial download entered the cache"
        with mounted(relay.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
            assert md5(read_file(again.path / SESSION / "RESOURCES/RAW/big.bin")) == big.digest
        assert check_cache(mount.cache_dir, relay.url, [big]) == 1


def test_sigkill_during_a_series_zip(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    series = {r: f for r, f in files.items() if "/SUB002_MR1/SCANS/5-" in r}
    assert len(series) > 50
    with Relay(fake_xnat.url, throttle=256 << 10) as relay:
        with mounted(relay.url, tmp_path) as mount:
            first = sorted(series)[0]
            assert read_file(mount.path / first)
            wait_until(
                lambda: any("format=zip" in target for _m, target, _s in relay.log), what="the series zip to start"
            )
            # Killed once the cache has begun writing the zip's files (after the zip's end, as
            # memory allows: see the next test for a kill while the zip streams).
            wait_until(lambda: len(data_files(mount.cache_dir)) > 2, what="the zip's first files in the cache")
            kill(mount)
        check_data_entries(mount.cache_dir, relay.url, series.values())
        with mounted(relay.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
            for relative, info in sorted(series.items()):
                assert md5(read_file(again.path / relative)) == info.digest, relative
        assert check_cache(mount.cache_dir, relay.url, series.values()) == len(series)


def test_sigkill_while_a_series_zip_streams_and_serves_from_memory(fake_xnat, tmp_path):
    """The cache writes a zip's files after the zip's end; until then its readers are served
    from memory. Killed then, the cache holds only what was written, and the next mount
    reads every file right."""
    fake_xnat.store.add_scan("XNAT_E00001", "90", type="KILLTEST")
    for number in range(40):
        fake_xnat.store.put_file("XNAT_E00001", "DICOM", f"slice{number:03d}.dcm", os.urandom(100_000), scan_id="90")
    files = server_files(fake_xnat, projects=("STUDY01",))
    series = {r: f for r, f in files.items() if "/SCANS/90-" in r}
    assert len(series) == 40
    names = sorted(series)
    with Relay(fake_xnat.url, throttle=1 << 20) as relay:
        with mounted(relay.url, tmp_path) as mount:
            read: list[str] = []

            def read_in_order() -> None:
                for name in names:
                    assert md5(read_file(mount.path / name)) == series[name].digest, name
                    read.append(name)

            background(read_in_order)
            wait_until(lambda: len(read) >= 5, what="files of the zip served to a reader")
            assert any("format=zip" in target for _m, target, _s in relay.log)
            written = len(data_files(mount.cache_dir))
            assert len(read) < len(names), "the zip ended before the kill"
            kill(mount)
        # At most the first file, fetched on its own beside the zip, was written.
        assert written <= 1
        check_data_entries(mount.cache_dir, relay.url, series.values())
        with mounted(relay.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
            for name in names:
                assert md5(read_file(again.path / name)) == series[name].digest, name
        assert check_cache(mount.cache_dir, relay.url, series.values()) == len(series)


def test_sigkill_before_the_upload_reached_the_server(fake_xnat, tmp_path):
    payload = os.urandom(100_000)
    holding = {"on": True}

    def hold(method: str, path: str) -> bool:
        return holding["on"] and method == "PUT" and "crash.bin" in path

    with Relay(fake_xnat.url, hold=hold) as relay:
        with mounted(relay.url, tmp_path) as mount:
            writer = background(write_file, mount.path / SESSION / "RESOURCES/QC/crash.bin", payload)
            assert relay.held.wait(15), "the upload was never sent"
            kill(mount)
            holding["on"] = False
            relay.release()
            writer.join(20)
        assert qc_file_on_server(fake_xnat, "crash.bin") is None
        # The spool belongs to the server address it was written for: mount that again.
        with mounted(relay.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
            wait_until(lambda: qc_file_on_server(fake_xnat, "crash.bin") is not None, 20, "the upload to land")
            assert (again.path / SESSION / "RESOURCES/QC/crash.bin").read_bytes() == payload
    assert qc_file_on_server(fake_xnat, "crash.bin") == payload
    assert uploads_of(fake_xnat, "crash.bin") == 1
    assert list((mount.cache_dir / "spool" / "records").glob("*.json")) == []


def test_sigkill_after_the_server_stored_the_upload_but_before_it_answered(fake_xnat, tmp_path):
    payload = os.urandom(100_000)
    resource = fake_xnat.store.find_resource("experiment", "XNAT_E00001", "QC")
    with mounted(fake_xnat.url, tmp_path) as mount:
        target = mount.path / SESSION / "RESOURCES/QC/stored.bin"
        os.listdir(target.parent)
        fake_xnat.set_faults(stall_ms=3000, stall_rate=1.0)
        writer = background(write_file, target, payload)
        wait_until(
            lambda: fake_xnat.store.file(resource["id"], "stored.bin") is not None,
            what="the server to store the upload",
        )
        kill(mount)
        fake_xnat.set_faults()
        writer.join(20)
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again"):
        wait_until(lambda: not list((mount.cache_dir / "spool" / "records").glob("*.json")), 20, "the spool to empty")
    # Sent again (the answer never came), which for a file upload is an overwrite: one file, right bytes.
    assert qc_file_on_server(fake_xnat, "stored.bin") == payload
    names = [row["path"] for row in fake_xnat.store.files(resource["id"])]
    assert names.count("stored.bin") == 1
    # The server logs the first PUT only once its held-back answer is given up on.
    wait_until(lambda: uploads_of(fake_xnat, "stored.bin") == 2, 10, "both uploads to be logged")


def test_sigkill_during_a_dicom_import_does_not_duplicate_scans(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        series = mount.path / SESSION / "SCANS/3-T2w_SPC/DICOM"
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(series.iterdir()):
                bundle.writestr(path.name, path.read_bytes())
        dicom_count = len(os.listdir(series))
        new_session = mount.path / "STUDY01/SUB001/SUB001_MR7"
        new_session.mkdir()
        fake_xnat.set_faults(stall_ms=3000, stall_rate=1.0)
        writer = background(write_file, new_session / "SCANS" / "upload.zip", archive.getvalue())
        wait_until(
            lambda: (
                fake_xnat.store.experiment_id("STUDY01", "SUB001_MR7") is not None
                and fake_xnat.store.scans(fake_xnat.store.experiment_id("STUDY01", "SUB001_MR7"))
            ),
            what="the server to import the zip",
        )
        kill(mount)
        fake_xnat.set_faults()
        writer.join(20)
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again"):
        wait_until(lambda: not list((mount.cache_dir / "spool" / "records").glob("*.json")), 20, "the spool to empty")
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "SUB001_MR7")
    scans = fake_xnat.store.scans(experiment_id)
    assert len(scans) == 1, "the import created scans twice"
    wait_until(lambda: imports_of(fake_xnat) == 2, 10, "the import to be sent again after the crash")
    resource = fake_xnat.store.find_resource("scan", str(scans[0]["pk"]), "DICOM")
    assert len(fake_xnat.store.files(resource["id"])) == dicom_count


@pytest.mark.slow
def test_random_sigkills_during_reads_leave_a_consistent_cache(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    chosen = dict(sorted(files.items())[::3])
    shuffle = random.Random(5)
    cache_dir = tmp_path / "cache"
    for round_number in range(4):
        with mounted(fake_xnat.url, tmp_path, cache_dir=cache_dir, name=f"round{round_number}") as mount:
            order = list(chosen)
            shuffle.shuffle(order)
            pool = ThreadPoolExecutor(8)
            for relative in order:
                pool.submit(read_file, mount.path / relative)
            time.sleep(shuffle.uniform(0.3, 1.2))
            kill(mount)
            pool.shutdown(wait=True, cancel_futures=True)
        # A series zip also caches the files of the series nobody asked for yet.
        check_data_entries(cache_dir, fake_xnat.url, files.values())
    with mounted(fake_xnat.url, tmp_path, cache_dir=cache_dir, name="final") as mount:
        for relative, info in sorted(chosen.items()):
            assert md5(read_file(mount.path / relative)) == info.digest, relative
    assert check_cache(cache_dir, fake_xnat.url, files.values()) >= len(chosen)


def test_half_rewritten_file_does_not_replace_the_server_copy_after_a_crash(fake_xnat, tmp_path):
    original = qc_file_on_server(fake_xnat, "qc_metrics.csv")
    assert original
    with mounted(fake_xnat.url, tmp_path) as mount:
        handle = open(mount.path / SESSION / "RESOURCES/QC/qc_metrics.csv", "wb")
        handle.write(b"subject,snr\nSUB001,")  # cut off in the middle of a row
        handle.flush()
        kill_holding(mount, handle)
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
        # The background retry's first look at the spool sets the entry aside, never to be sent alone.
        wait_until(
            lambda: "qc_metrics.csv, 19 bytes) was still being written" in again.log(),
            what="the half-written upload to be set aside",
        )
    assert qc_file_on_server(fake_xnat, "qc_metrics.csv") == original
    # Not lost either: kept in the spool, listed for the user to send or drop.
    listed = uploads_listed(mount)
    assert "qc_metrics.csv" in listed and "unclosed" in listed


def test_a_file_renamed_while_open_is_on_the_server_under_its_new_name_before_a_crash(fake_xnat, tmp_path):
    """Renamed while a program still has it open, but with nothing written since its last
    close: the server holds it under the new name at once, as for a file nobody has open.
    Was: under neither name until the last close, and after a crash only in the spool, set
    aside as possibly incomplete and shown under neither name."""
    payload = os.urandom(50_000)
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path / SESSION / "RESOURCES/QC"
        (qc / "kept.bin").write_bytes(payload)
        reader = open(qc / "kept.bin", "rb")
        os.rename(qc / "kept.bin", qc / "moved.bin")
        assert qc_file_on_server(fake_xnat, "moved.bin") == payload
        assert qc_file_on_server(fake_xnat, "kept.bin") is None
        kill_holding(mount, reader)
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
        qc = again.path / SESSION / "RESOURCES/QC"
        assert (qc / "moved.bin").read_bytes() == payload
        assert not (qc / "kept.bin").exists()
    assert "moved.bin" not in uploads_listed(mount)


def test_a_file_renamed_while_being_rewritten_keeps_its_last_closed_version_through_a_crash(fake_xnat, tmp_path):
    """Renamed while a program is rewriting it: the server keeps the last closed version
    under the old name until the file is closed (it is only then whole). A crash before
    that leaves the old name as it was, and what was written since in the spool, unsent.
    Was: the old name deleted at the rename, so the crash left the last complete version
    nowhere but in the spool, under the new name, set aside as possibly incomplete."""
    original = b"subject,snr\nSUB001,41.5\nSUB002,39.0\n"
    fake_xnat.store.put_file("XNAT_E00001", "QC", "metrics.csv", original)
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path / SESSION / "RESOURCES/QC"
        handle = open(qc / "metrics.csv", "r+b")
        handle.write(b"subject,snr,cnr\nSUB0")  # cut off in the middle of a row
        handle.flush()
        os.rename(qc / "metrics.csv", qc / "metrics-v2.csv")
        assert sorted(n for n in os.listdir(qc) if n.startswith("metrics")) == ["metrics-v2.csv"]
        assert qc_file_on_server(fake_xnat, "metrics.csv") == original
        kill_holding(mount, handle)
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
        qc = again.path / SESSION / "RESOURCES/QC"
        assert (qc / "metrics.csv").read_bytes() == original
        wait_until(
            lambda: "metrics-v2.csv, " in again.log() and "was still being written" in again.log(),
            what="the half-written file to be set aside",
        )
    assert qc_file_on_server(fake_xnat, "metrics-v2.csv") is None
    listed = uploads_listed(mount)
    assert "metrics-v2.csv" in listed and "unclosed" in listed


def test_a_file_opened_for_writing_and_not_written_leaves_nothing_behind_after_a_crash(fake_xnat, tmp_path):
    """Opened for writing (sqlite3, an editor) but not written when the daemon dies: the copy
    it was given holds nothing new, so the next mount drops it rather than keeping it as a
    possibly incomplete upload for the user to sort out. One written in place is kept."""
    fake_xnat.store.put_file("XNAT_E00001", "QC", "untouched.csv", b"a,b\n1,2\n")
    fake_xnat.store.put_file("XNAT_E00001", "QC", "touched.csv", b"a,b\n1,2\n")
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path / SESSION / "RESOURCES/QC"
        untouched = open(qc / "untouched.csv", "r+b")
        touched = open(qc / "touched.csv", "r+b")
        touched.write(b"A,B")
        touched.flush()
        kill_holding(mount, untouched, touched)
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
        wait_until(
            lambda: "files/touched.csv, 8 bytes) was still being written" in again.log(), what="the spool looked at"
        )
    listed = uploads_listed(mount)
    assert "untouched.csv" not in listed, listed
    assert "touched.csv" in listed and "unclosed" in listed
    assert qc_file_on_server(fake_xnat, "untouched.csv") == b"a,b\n1,2\n"


def _download_under_way(folder: Path) -> bool:
    """A partial download in ``folder`` holds bytes (one may be finished and gone between listing and stat)."""
    for part in folder.glob("*.part"):
        try:
            if part.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


def test_sigkill_of_one_of_two_mounts_sharing_a_cache(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    chosen = {r: f for r, f in files.items() if "/SUB002_MR1/" in r}
    cache_dir = tmp_path / "shared-cache"
    # Both mounts through one slow relay: same addresses, so the same cache entries,
    # and downloads still running when the first daemon dies.
    with (
        Relay(fake_xnat.url, throttle=512 << 10) as relay,
        mounted(relay.url, tmp_path, cache_dir=cache_dir, name="first") as first,
        mounted(relay.url, tmp_path, cache_dir=cache_dir, name="second") as second,
    ):
        doomed = ThreadPoolExecutor(8)
        for relative in sorted(chosen):
            doomed.submit(read_file, first.path / relative)
        survivors = ThreadPoolExecutor(8)
        results = {relative: survivors.submit(read_file, second.path / relative) for relative in sorted(chosen)}
        # A file fetched alone streams into a partial entry; a series zip's bodies (the files of
        # a series whose zip started before any was opened) show only on the wire.
        wait_until(
            lambda: _download_under_way(cache_dir / "tmp") or any("format=zip" in path for path in relay.sending),
            what="the first mount's downloads to be under way",
        )
        assert not all(future.done() for future in results.values()), "nothing was left to read after the kill"
        kill(first)
        doomed.shutdown(wait=True, cancel_futures=True)
        for relative, future in results.items():
            assert md5(future.result(timeout=120)) == chosen[relative].digest, relative
        survivors.shutdown()
        assert second.process.poll() is None
    assert check_cache(cache_dir, relay.url, files.values()) >= len(chosen)
