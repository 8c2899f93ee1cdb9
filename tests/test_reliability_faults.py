"""Reading through the mount while the server misbehaves: right bytes or EIO, never wrong bytes.

Faults come from the fake server's switches: 503 answers, connections reset
in the middle of a body, bodies cut short of their Content-Length, answers
held back for 2 s, sessions ended behind the client's back, and the server
going away and coming back. After each run the cache folder is inspected:
every entry must hold exactly the bytes its key names, and no unfinished
download may be left.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mountutil import ServerFile, mounted, server_files
from test_reliability_common import check_cache, md5, read_or_eio, write_config
from waiting import wait_until
from xnatfs.client.connection import XnatConnection
from xnatfs.fake.server import FaultInjector

pytestmark = pytest.mark.mount


def read_all(root, files, *, workers: int = 8) -> tuple[int, list[str]]:
    """Read every file in ``files`` under ``root``; return (correct reads, paths that failed with EIO).

    A read that returns bytes other than the server's fails the test at once.
    """
    lock = threading.Lock()
    good = 0
    failed: list[str] = []

    def one(item) -> None:
        nonlocal good
        relative, info = item
        data = read_or_eio(root / relative)
        with lock:
            if data is None:
                failed.append(relative)
                return
            assert len(data) == info.size and md5(data) == info.digest, f"wrong bytes for {relative}"
            good += 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, sorted(files.items())))
    return good, failed


class SessionKiller:
    """Ends every server session every ``period`` seconds, in a bounded background thread."""

    def __init__(self, server, period: float, limit: float = 120.0):
        self.server = server
        self.period = period
        self.limit = limit
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.wait(self.period) and time.monotonic() < deadline:
            self.server.auth.end_all_sessions()
            self.kills += 1

    def __enter__(self) -> SessionKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.slow
def test_mixed_faults_give_right_bytes_or_eio_and_a_clean_cache(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    assert len(files) > 500
    # Series zips off: one request per file, so that hundreds of requests meet the faults.
    args = write_config(tmp_path / "config.toml", series_zip_size="1K")
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        # On only once mounted: the start-up check retries little, on purpose.
        fake_xnat.set_faults(
            error_rate=0.10,
            error_statuses=(503,),
            drop_rate=0.03,
            truncate_rate=0.03,
            stall_ms=2000,
            stall_rate=0.01,
            seed=7,
        )
        good, failed = read_all(mount.path, files)
        faulty = [r for r in fake_xnat.requests if r[2] == 503]
        fake_xnat.set_faults()
        assert mount.process.poll() is None, "the daemon died under faults"
        assert len(faulty) > 30, "the faults did not happen"
        # Retries hide almost all faults; what is left must be EIO, and few.
        assert good >= 0.9 * len(files), f"{len(failed)} of {len(files)} reads failed"
        good_after, failed_after = read_all(mount.path, {r: files[r] for r in failed})
        assert failed_after == [] and good_after == len(failed)
    stored = check_cache(mount.cache_dir, fake_xnat.url, files.values())
    assert stored >= good
    assert "Traceback" not in mount.log()


def test_sessions_ended_several_times_a_second_are_renewed(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    args = write_config(tmp_path / "config.toml", series_zip_size="1K")
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        fake_xnat.latency_ms = 20
        fake_xnat.reset_counts()
        with SessionKiller(fake_xnat, period=0.3) as killer:
            good, failed = read_all(mount.path, files)
        fake_xnat.latency_ms = 0
        assert killer.kills >= 2, "the reads ended before sessions were ended"
        assert fake_xnat.count("POST", "/data/JSESSION") >= 2, "sessions were not renewed"
        assert failed == [] and good == len(files)
    check_cache(mount.cache_dir, fake_xnat.url, files.values())


def test_truncated_and_dropped_bodies_never_enter_the_cache(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    some = {r: f for r, f in files.items() if "/SUB001_MR1/" in r}
    # No zip before the faults: looking the series' folders up must not cache them.
    args = write_config(tmp_path / "config.toml", retries=0, series_early_size=0)
    with mounted(
        fake_xnat.url, tmp_path, args=args, expected_errors=(r"download incomplete after \d+ attempts",)
    ) as mount:
        for relative in some:
            (mount.path / relative).stat()
        fake_xnat.set_faults(drop_rate=0.5, truncate_rate=0.5, seed=3)
        good, failed = read_all(mount.path, some)
        fake_xnat.set_faults()
        # Every single-file body is cut; a small series zip may end before the cut point
        # and arrive whole, so some files may be read (right, as read_all checks).
        assert good + len(failed) == len(some)
        assert len(failed) > len(some) / 2, "the faults did not cut the downloads"
        assert mount.process.poll() is None
    check_cache(mount.cache_dir, fake_xnat.url, some.values())
    with mounted(fake_xnat.url, tmp_path, cache_dir=mount.cache_dir, name="again") as again:
        good, failed = read_all(again.path, some)
        assert failed == [] and good == len(some)
    assert check_cache(mount.cache_dir, fake_xnat.url, some.values()) == len(some)


@pytest.mark.slow
def test_server_restart_mid_run(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    outage_done = threading.Event()

    def restart() -> None:
        wait_until(
            lambda: sum("/files/" in target for _m, target, _s in fake_xnat.requests) >= 5, "the reads to be under way"
        )
        fake_xnat.stop()
        wait_until(lambda: "connection failed; retrying" in mount.log(), "a request to meet the outage")
        # A restarted XNAT knows none of the sessions it had handed out.
        fake_xnat.auth.end_all_sessions()
        fake_xnat.start()
        outage_done.set()

    # One request per file and some latency, so that the reads are still going when the server stops.
    args = write_config(tmp_path / "config.toml", series_zip_size="1K")
    with mounted(fake_xnat.url, tmp_path, args=args) as mount:
        fake_xnat.latency_ms = 20
        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        good, failed = read_all(mount.path, files, workers=4)
        restarter.join(30)
        fake_xnat.latency_ms = 0
        assert outage_done.is_set()
        assert mount.process.poll() is None
        assert good + len(failed) == len(files)
        assert "connection failed; retrying" in mount.log(), "the outage came too late to matter"
        _good_after, failed_after = read_all(mount.path, {r: files[r] for r in failed})
        assert failed_after == []
        # The listings still work after the restart, through a fresh session.
        assert "SUB001" in os.listdir(mount.path / "STUDY01")
    check_cache(mount.cache_dir, fake_xnat.url, files.values())


def test_series_zip_cut_short_is_retried_or_dropped(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    series = {r: f for r, f in files.items() if "/SUB002_MR1/SCANS/5-" in r}
    assert len(series) > 50
    with mounted(fake_xnat.url, tmp_path) as mount:
        for relative in series:
            (mount.path / relative).stat()
        fake_xnat.set_faults(drop_rate=0.15, truncate_rate=0.15, seed=11)
        _good, failed = read_all(mount.path, series, workers=4)
        fake_xnat.set_faults()
        zips = [t for m, t, _s in fake_xnat.requests if "format=zip" in t]
        assert zips, "the series was never fetched as a zip"
        _good_after, failed_after = read_all(mount.path, {r: series[r] for r in failed})
        assert failed_after == []
    check_cache(mount.cache_dir, fake_xnat.url, series.values())


def seed_giving(pattern: list[int | None], error_rate: float = 0.5) -> int:
    """A fault seed whose first answers fail exactly as ``pattern`` says (None: no fault)."""
    injector = FaultInjector()
    for seed in range(100_000):
        injector.configure(error_rate=error_rate, error_statuses=(503,), seed=seed)
        if [injector.pick("GET").error_status for _ in pattern] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern}")


def test_session_expiring_again_during_retries_is_renewed(fake_xnat):
    fake_xnat.session_timeout = 0.2
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as conn:
        conn.list_projects()
        time.sleep(0.3)
        # Answers: 401 (expired), login, 503, then (after a backoff longer than the
        # session timeout) 401 again, then success.
        fake_xnat.set_faults(
            error_rate=0.5, error_statuses=(503,), seed=seed_giving([None, None, 503, None, None, None])
        )
        projects = conn.list_projects()
    assert {p.id for p in projects} == {"STUDY01", "STUDY02"}
    statuses = [status for _m, _t, status in fake_xnat.requests]
    assert statuses.count(401) >= 2


def test_large_file_resumed_after_a_server_change_is_not_served_spliced(fake_xnat, tmp_path):
    """A large file is served while it downloads. If its body is cut short and the file
    changes on the server before the resumed (ranged) request, a reader of the part after
    the cut must get the listed version's bytes or EIO, never the other version's."""
    # Big enough that the rest of the body is still arriving when the reader wakes up.
    old = os.urandom(24 << 20)
    new = os.urandom(24 << 20)
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", old)
    fake_xnat.honour_range = True
    args = write_config(tmp_path / "config.toml", large_file_size="1M")
    with mounted(
        fake_xnat.url,
        tmp_path,
        args=args,
        expected_errors=(r"the file changed on the server while it was being downloaded",),
    ) as mount:
        big = mount.path / "STUDY01/SUB001/SUB001_MR1/RESOURCES/RAW/big.bin"
        assert big.stat().st_size == len(old)
        fake_xnat.reset_counts()
        fake_xnat.set_faults(truncate_rate=1.0)
        outcome: list = []
        part = slice(13 << 20, (13 << 20) + (256 << 10))

        def read_part() -> None:
            with open(big, "rb") as handle:
                try:
                    outcome.append(os.pread(handle.fileno(), part.stop - part.start, part.start))
                except OSError as exc:
                    outcome.append(exc.errno)

        reader = threading.Thread(target=read_part)
        reader.start()
        deadline = time.monotonic() + 10
        while not any("big.bin" in target for _m, target, _s in fake_xnat.requests):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.005)
        # The client now waits before resuming: change the file meanwhile (with a
        # Last-Modified that differs from the first answer's).
        fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", new, mtime=time.time() + 10)
        fake_xnat.set_faults()
        reader.join(30)
        statuses = [s for _m, t, s in fake_xnat.requests if "big.bin" in t]
        assert statuses[:2] == [200, 206], "the download was not resumed with a range"
        assert outcome, "the reader did not finish"
        got = outcome[0]
        assert got != new[part], "served the changed version's bytes as part of the listed version"
        assert got in (errno.EIO, old[part])
    check_cache(mount.cache_dir, fake_xnat.url, [])


@pytest.mark.slow
def test_uploads_under_faults_land_exactly_once_or_stay_in_the_spool(fake_xnat, tmp_path):
    payloads = {f"upload_{index:02d}.bin": os.urandom(1000 + index * 7919) for index in range(30)}
    resource = "/data/experiments/XNAT_E00001/resources/FAULTY"
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = mount.path / "STUDY01/SUB001/SUB001_MR1/RESOURCES/FAULTY"
        folder.mkdir()
        fake_xnat.set_faults(
            error_rate=0.10,
            error_statuses=(500, 503),
            drop_rate=0.05,
            truncate_rate=0.05,
            stall_ms=2000,
            stall_rate=0.02,
            seed=21,
        )
        refused = []
        for name, data in payloads.items():
            try:
                with open(folder / name, "wb") as handle:
                    handle.write(data)
            except OSError as exc:
                assert exc.errno == errno.EIO, (name, exc)
                refused.append(name)
        fake_xnat.set_faults()
        assert mount.process.poll() is None
        met = {r[2] for r in fake_xnat.requests if r[0] == "PUT" and r[2] >= 500}
        assert 500 in met, f"no upload met a 500: {met}"
        records = mount.cache_dir / "spool" / "records"
        # What close refused waits in the spool; the background retry sends it.
        deadline = time.monotonic() + 60
        while list(records.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert list(records.glob("*.json")) == [], "uploads stuck in the spool"
        for name, data in payloads.items():
            assert (folder / name).read_bytes() == data, name
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as conn:
        remote = conn.list_files(resource)
    assert sorted(f.path for f in remote) == sorted(payloads), "missing or extra files on the server"
    for item in remote:
        assert item.size == len(payloads[item.path]) and item.digest == md5(payloads[item.path]), item.path
    check_cache(mount.cache_dir, fake_xnat.url, [ServerFile(item.size, item.digest, item.uri) for item in remote])


@pytest.mark.mount
def test_an_upload_carried_out_after_the_mount_gave_up_does_not_overtake_a_newer_one(fake_xnat, tmp_path):
    config = write_config(tmp_path / "config.toml", retries=0, timeout=1.0)
    with mounted(fake_xnat.url, tmp_path, args=config, expected_errors=("timed out|no answer",)) as mount:
        target = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC" / "notes.txt"
        first = b"first version"
        # The PUT waits behind a lock on the server for longer than the mount waits for an answer.
        fake_xnat.set_faults(stall_rate=1.0, stall_ms=2500, methods=("PUT",), stall_first=True)
        try:
            with pytest.raises(OSError) as failed:
                target.write_bytes(first)
        finally:
            fake_xnat.set_faults()
        assert failed.value.errno == errno.EIO
        second = b"second version, sent and answered at once"
        target.write_bytes(second)
        wait_until(lambda: server_notes(fake_xnat) == len(first), what="the first PUT carried out", interval=0.1)
        # The mount looks again 1, 2 and 4 timeouts after the second upload, and sends it again.
        wait_until(lambda: server_notes(fake_xnat) == len(second), what="the second version sent again", interval=0.1)
        assert target.read_bytes() == second
        time.sleep(1.0)
        assert server_notes(fake_xnat) == len(second)
        assert "sending the last one again" in mount.log()


@pytest.mark.mount
def test_a_deletion_carried_out_after_the_mount_gave_up_does_not_remove_the_file_written_since(fake_xnat, tmp_path):
    config = write_config(tmp_path / "config.toml", retries=0, timeout=1.0)
    with mounted(fake_xnat.url, tmp_path, args=config, expected_errors=("timed out|no answer",)) as mount:
        qc = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC"
        (qc / "notes.txt").write_bytes(b"old notes")
        fake_xnat.set_faults(stall_rate=1.0, stall_ms=2500, methods=("DELETE",), stall_first=True)
        try:
            with pytest.raises(OSError) as failed:
                (qc / "notes.txt").unlink()
        finally:
            fake_xnat.set_faults()
        assert failed.value.errno == errno.EIO
        (qc / "notes.txt").write_bytes(b"new notes, written after the rm failed")
        wait_until(lambda: server_notes(fake_xnat) is None, what="the deletion carried out", interval=0.1)
        wait_until(lambda: server_notes(fake_xnat) is not None, what="the new notes sent again", interval=0.1)
        assert (qc / "notes.txt").read_bytes() == b"new notes, written after the rm failed"
        assert "sending the last one again" in mount.log()


@pytest.mark.mount
@pytest.mark.parametrize("back", [False, True], ids=["renamed", "renamed back"])
def test_an_upload_carried_out_after_its_file_was_renamed_does_not_bring_the_old_name_back(fake_xnat, tmp_path, back):
    # Renamed back at once, the file under the old name is the user's again: left alone.
    config = write_config(tmp_path / "config.toml", retries=0, timeout=1.0)
    with mounted(fake_xnat.url, tmp_path, args=config, expected_errors=("timed out|no answer",)) as mount:
        qc = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC"
        fake_xnat.set_faults(stall_rate=1.0, stall_ms=2500, methods=("PUT",), stall_first=True)
        try:
            with pytest.raises(OSError) as failed:
                (qc / "notes.txt").write_bytes(b"notes")
        finally:
            fake_xnat.set_faults()
        assert failed.value.errno == errno.EIO
        (qc / "notes.txt").rename(qc / "renamed.txt")
        if back:
            (qc / "renamed.txt").rename(qc / "notes.txt")
            time.sleep(7.5)  # past the mount's last look at the old name (1, 2 and 4 timeouts)
            assert (qc / "notes.txt").read_bytes() == b"notes"
            assert (server_notes(fake_xnat), server_notes(fake_xnat, "renamed.txt")) == (len(b"notes"), None)
            assert "deleting it again" not in mount.log()
            return
        wait_until(lambda: server_notes(fake_xnat) is not None, what="the first PUT carried out", interval=0.1)
        wait_until(lambda: server_notes(fake_xnat) is None, what="the old name deleted again", interval=0.1)
        assert (qc / "renamed.txt").read_bytes() == b"notes"
        assert "deleting it again" in mount.log()
    assert server_notes(fake_xnat, "renamed.txt") == len(b"notes")


def server_notes(server, name: str = "notes.txt") -> int | None:
    with XnatConnection(server.url, "admin", "admin") as conn:
        listed = {f.path: f.size for f in conn.list_files("/data/experiments/XNAT_E00001/resources/QC")}
    return listed.get(name)
