"""Load and stress: many readers over overlapping series and a writer, and stress-ng.

The load run lasts a fixed time; afterwards there must have been no error and
no wrong byte, no file downloaded more than once, every written file on the
server, and the daemon's resident memory flat once warmed up.

stress-ng runs the stressors that suit a file system whose writes become
uploads on close (see docs/RELIABILITY.md for which and why), each bounded
by its own time limit.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mountutil import mounted, server_files
from test_reliability_common import md5, vmrss_kib
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

LOAD_SECONDS = 10.0
READERS = 32
SESSION = "STUDY01/SUB001/SUB001_MR1"


def single_file_downloads(server) -> Counter:
    return Counter(
        target.split("?", 1)[0]
        for method, target, status in server.requests
        if method == "GET" and "/files/" in target and "format=zip" not in target and status == 200
    )


def zip_downloads(server) -> Counter:
    return Counter(
        target.split("?", 1)[0] for method, target, _s in server.requests if method == "GET" and "format=zip" in target
    )


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.25):
        super().__init__(daemon=True)
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(self.period):
            try:
                self.samples.append((time.monotonic() - started, vmrss_kib(self.pid)))
            except (OSError, AssertionError):
                return


@pytest.mark.slow
def test_32_readers_and_a_writer(fake_xnat, tmp_path):
    files = server_files(fake_xnat, projects=("STUDY01",))
    series: dict[str, list[str]] = {}
    for relative in files:
        if ("/SUB001_MR1/SCANS/" in relative or "/SUB002_MR1/SCANS/" in relative) and "/DICOM/" in relative:
            series.setdefault(relative.rsplit("/", 1)[0], []).append(relative)
    assert len(series) >= 8
    errors: list[str] = []
    reads = Counter()
    written: dict[str, bytes] = {}
    deadline = time.monotonic() + LOAD_SECONDS
    fake_xnat.latency_ms = 10
    with mounted(fake_xnat.url, tmp_path) as mount:
        sampler = MemorySampler(mount.process.pid)
        sampler.start()

        def reader(number: int) -> None:
            chooser = random.Random(number)
            while time.monotonic() < deadline:
                folder = chooser.choice(sorted(series))
                members = list(series[folder])
                chooser.shuffle(members)
                for relative in members:
                    try:
                        data = (mount.path / relative).read_bytes()
                    except OSError as exc:
                        errors.append(f"{relative}: {exc}")
                        return
                    if md5(data) != files[relative].digest:
                        errors.append(f"{relative}: wrong bytes")
                        return
                    reads[number] += 1
                    if time.monotonic() >= deadline:
                        return

        def writer() -> None:
            target = mount.path / SESSION / "RESOURCES" / "LOAD"
            target.mkdir()
            chooser = random.Random(99)
            index = 0
            while time.monotonic() < deadline:
                name = f"derived_{index:04d}.bin"
                payload = chooser.randbytes(chooser.randint(1, 256 << 10))
                try:
                    (target / name).write_bytes(payload)
                    if (target / name).read_bytes() != payload:
                        errors.append(f"{name}: read back other bytes")
                        return
                except OSError as exc:
                    errors.append(f"writing {name}: {exc}")
                    return
                written[name] = payload
                index += 1

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
        threads.append(threading.Thread(target=writer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LOAD_SECONDS + 60)
        sampler.stop.set()
        sampler.join(5)
        fake_xnat.latency_ms = 0
        assert not any(thread.is_alive() for thread in threads), "a reader or the writer hung"
        assert errors == []
        assert mount.process.poll() is None
    # About 4 reads of each file every 9 s: well below the pace of a loaded 2-core machine.
    assert sum(reads.values()) > len(files) * LOAD_SECONDS * 4 / 9, (
        f"only {sum(reads.values())} reads in {LOAD_SECONDS} s"
    )
    assert len(reads) == READERS
    assert len(written) >= 10
    again = [path for path, count in single_file_downloads(fake_xnat).items() if count > 1]
    assert again == [], f"downloaded more than once: {again[:5]}"
    assert all(count == 1 for count in zip_downloads(fake_xnat).values()), zip_downloads(fake_xnat)
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as conn:
        remote = {f.path: f for f in conn.list_files("/data/experiments/XNAT_E00001/resources/LOAD")}
        assert set(remote) == set(written)
        for name, payload in written.items():
            assert remote[name].size == len(payload) and remote[name].digest == md5(payload), name
    uploads = Counter(t.split("?", 1)[0] for m, t, s in fake_xnat.requests if m == "PUT" and "/LOAD/files/" in t)
    assert all(count == 1 for count in uploads.values()), "a file was uploaded more than once"
    warm = [kib for at, kib in sampler.samples if at > LOAD_SECONDS / 3]
    assert len(warm) > 10
    third = len(warm) // 3
    early, late = max(warm[:third]), max(warm[-third:])
    assert late - early < 32 * 1024, f"resident memory grew from {early} to {late} KiB under a steady load"


# ---- stress-ng --------------------------------------------------------------

STRESS_NG = shutil.which("stress-ng")
STRESS_SECONDS = 6
needs_stress_ng = pytest.mark.skipif(STRESS_NG is None, reason="stress-ng is not installed")


def stress_ng(folder: Path, *stressors: str, seconds: int) -> subprocess.CompletedProcess:
    command = [
        STRESS_NG,
        *stressors,
        "--verify",
        "--timeout",
        f"{seconds}s",
        "--temp-path",
        str(folder),
        "--metrics-brief",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, cwd=str(folder))


def check_stress_report(done: subprocess.CompletedProcess, stressors: tuple[str, ...]) -> None:
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "successful run completed" in report
    for stressor in stressors:
        assert f" {stressor} " in report, f"{stressor} did not run"


def check_mount_after_the_storm(mount, server, folder: Path) -> None:
    assert os.listdir(folder) == [], "stress-ng left files behind"
    assert mount.process.poll() is None
    qc = mount.path / SESSION / "RESOURCES" / "QC"
    expected = server_files(server, projects=("STUDY01",))
    for path in sorted(qc.iterdir()):
        assert md5(path.read_bytes()) == expected[f"{SESSION}/RESOURCES/QC/{path.name}"].digest


@needs_stress_ng
@pytest.mark.slow
def test_stress_ng_metadata_stressors(fake_xnat, tmp_path):
    stressors = ("dentry", "rename", "open", "chmod", "dirdeep", "filename")
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = mount.path / SESSION / "RESOURCES" / "STRESS"
        folder.mkdir()
        done = stress_ng(
            folder,
            "--dentry",
            "2",
            "--dentries",
            "64",
            "--rename",
            "1",
            "--open",
            "1",
            "--chmod",
            "1",
            "--dirdeep",
            "1",
            "--dirdeep-dirs",
            "1",
            "--filename",
            "1",
            seconds=STRESS_SECONDS,
        )
        check_stress_report(done, stressors)
        check_mount_after_the_storm(mount, fake_xnat, folder)
    log = mount.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@needs_stress_ng
@pytest.mark.slow
def test_stress_ng_data_stressors(fake_xnat, tmp_path):
    """Stressors that write data and read it back (--verify checks every byte)."""
    stressors = ("hdd", "seek", "readahead", "iomix", "sync-file", "fallocate", "mmap")
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = mount.path / SESSION / "RESOURCES" / "DATA"
        folder.mkdir()
        done = stress_ng(
            folder,
            "--hdd",
            "2",
            "--hdd-bytes",
            "1M",
            "--hdd-write-size",
            "64K",
            "--seek",
            "1",
            "--seek-size",
            "1M",
            "--readahead",
            "1",
            "--readahead-bytes",
            "1M",
            "--iomix",
            "1",
            "--iomix-bytes",
            "1M",
            "--sync-file",
            "1",
            "--sync-file-bytes",
            "1M",
            "--fallocate",
            "1",
            "--fallocate-bytes",
            "1M",
            "--mmap",
            "1",
            "--mmap-bytes",
            "1M",
            "--mmap-file",
            seconds=STRESS_SECONDS,
        )
        check_stress_report(done, stressors)
        check_mount_after_the_storm(mount, fake_xnat, folder)
    log = mount.log()
    assert "Traceback" not in log, log[-3000:]


def test_a_file_unlinked_while_open_stays_usable(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        path = mount.path / SESSION / "RESOURCES" / "QC" / "scratch.tmp"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"temporary data")
            os.unlink(path)
            assert not path.exists()
            assert os.fstat(fd).st_size == 14
            assert os.pread(fd, 9, 0) == b"temporary"
            os.ftruncate(fd, 4)
            assert os.pread(fd, 100, 0) == b"temp"
        finally:
            os.close(fd)


def test_tempfile_in_a_resource(fake_xnat, tmp_path):
    """What tools do most: write a temporary file, then rename it into place."""
    import tempfile

    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = mount.path / SESSION / "RESOURCES" / "QC"
        payload = os.urandom(300_000)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as handle:
            handle.write(payload)
        os.rename(handle.name, folder / "report.bin")
        assert (folder / "report.bin").read_bytes() == payload
        assert not Path(handle.name).exists()
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as conn:
        remote = {f.path: f for f in conn.list_files("/data/experiments/XNAT_E00001/resources/QC")}
        assert "report.bin" in remote and remote["report.bin"].digest == md5(payload)
        assert not any(name.endswith(".part") for name in remote)
        buffer = io.BytesIO()
        conn.download(remote["report.bin"].uri, buffer)
        assert buffer.getvalue() == payload
