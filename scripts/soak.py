"""Real tools at once through a mount of a misbehaving server, checked against a well-behaved one.

Starts two fake XNATs on copies of the same small sample study: one
well-behaved, one answering with 500s and 503s, connection resets, cut
bodies and stalls (rates below). Each is mounted with ``xnatfs mount``.
Through the faulty mount, at the same time:

* every file of the study is read and hashed;
* ``dcm2niix`` converts a series and writes its output into a new resource;
* ``rsync -a`` copies a folder of 100 one-megabyte files into another new resource;
* ``pydicom`` decodes the pixels of every DICOM file of a subject.

Then the faults stop and the results are checked: every file read through
the faulty mount has the bytes read through the good one, ``dcm2niix``'s
output is the same as a conversion of the good mount's series, and the
faulty server holds exactly the files ``rsync`` copied. Any tool failing or
any difference is reported and makes the exit status 1.

This is the trial that found docs/RELIABILITY.md 50 and 51; it takes a few
minutes, too long for the test suite, and is for trying a change the way
users meet a flaky server::

    .venv/bin/python scripts/soak.py [--seed 7] [--error-rate 0.08]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from profile_ops import start_mount, stop_mount  # noqa: E402

from xnatfs.fake import FakeXnat  # noqa: E402

logger = logging.getLogger("soak")

SESSION = Path("STUDY01/SUB001/SUB001_MR1")
SERIES = SESSION / "SCANS"
PYDICOM_SUBJECT = Path("STUDY01/SUB002")
COPIED_FILES = 100
TOOL_TIMEOUT = 600


def digests(root: Path, names: list[str]) -> dict[str, str]:
    """name → MD5 of the file, or the error reading it gave."""
    found = {}
    for name in names:
        try:
            found[name] = hashlib.md5((root / name).read_bytes()).hexdigest()
        except OSError as exc:
            found[name] = f"error: {exc}"
    return found


def study_files(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(top, name), root)
        for top, _folders, files in os.walk(root / "STUDY01")
        for name in files
    )


def series_folder(root: Path) -> Path:
    scans = root / SERIES
    return scans / sorted(os.listdir(scans))[1] / "DICOM"


def dcm2niix(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    command = ["dcm2niix", "-z", "y", "-f", "%s_%d", "-o", str(target), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=TOOL_TIMEOUT)


def decode_pixels(folder: Path) -> int:
    import pydicom

    count = 0
    for path in sorted(folder.rglob("*.dcm")):
        pydicom.dcmread(path).pixel_array.sum()
        count += 1
    return count


class Jobs:
    """Tools run side by side, each a thread; what failed, by job."""

    def __init__(self) -> None:
        self.failures: dict[str, str] = {}
        self.results: dict[str, object] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, job: Callable[[], object]) -> None:
        def run() -> None:
            try:
                self.results[name] = job()
            except Exception as exc:  # every failure is reported, none stops the others
                self.failures[name] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        for thread in self._threads:
            thread.join(TOOL_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--error-rate", type=float, default=0.08, help="answers that are 500 or 503")
    parser.add_argument("--drop-rate", type=float, default=0.04, help="connections reset mid-answer")
    parser.add_argument("--truncate-rate", type=float, default=0.03, help="bodies cut short")
    parser.add_argument("--stall-rate", type=float, default=0.02, help="answers held back 3 s")
    parser.add_argument("--latency-ms", type=float, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="xnatfs-soak-") as scratch:
        work = Path(scratch)
        local = work / "local"
        local.mkdir()
        for index in range(COPIED_FILES):
            (local / f"f{index:03d}.bin").write_bytes(os.urandom(1_000_000))
        with (
            FakeXnat(work / "good-server", sample="small", latency_ms=args.latency_ms) as good_server,
            FakeXnat(work / "faulty-server", sample="small", latency_ms=args.latency_ms) as faulty_server,
        ):
            (work / "good").mkdir()
            (work / "faulty").mkdir()
            good = start_mount(good_server.url, work / "good", None)
            faulty = start_mount(faulty_server.url, work / "faulty", None)
            good_root, faulty_root = work / "good" / "mnt", work / "faulty" / "mnt"
            try:
                names = study_files(good_root)
                faulty_server.set_faults(
                    error_rate=args.error_rate,
                    error_statuses=(500, 503),
                    drop_rate=args.drop_rate,
                    truncate_rate=args.truncate_rate,
                    stall_ms=3000,
                    stall_rate=args.stall_rate,
                    seed=args.seed,
                )
                jobs = Jobs()
                jobs.start("read every file", lambda: digests(faulty_root, names))
                converted = faulty_root / SESSION / "RESOURCES" / "SOAK_NIFTI"
                jobs.start("dcm2niix into the mount", lambda: dcm2niix(series_folder(faulty_root), converted))
                copied = faulty_root / SESSION / "RESOURCES" / "SOAK_RSYNC"
                jobs.start(
                    "rsync -a into the mount",
                    lambda: subprocess.run(
                        ["rsync", "-a", f"{local}/", f"{copied}/"],
                        check=True,
                        capture_output=True,
                        timeout=TOOL_TIMEOUT,
                    ),
                )
                jobs.start("pydicom", lambda: decode_pixels(faulty_root / PYDICOM_SUBJECT))
                jobs.wait()
                faults = [status for _m, _t, status in faulty_server.requests if status >= 500]
                faulty_server.set_faults()
                logger.info("the faulty server answered %d requests with 5xx", len(faults))
                problems += [f"{name} failed: {why}" for name, why in jobs.failures.items()]
                read = jobs.results.get("read every file")
                if isinstance(read, dict):
                    expected = digests(good_root, names)
                    problems += [
                        f"{name}: {read[name]} through the faulty mount"
                        for name in names
                        if read[name] != expected[name]
                    ]
                reference = work / "reference"
                dcm2niix(series_folder(good_root), reference)
                for output in sorted(reference.iterdir()):
                    mounted = converted / output.name
                    if not mounted.exists() or mounted.read_bytes() != output.read_bytes():
                        problems.append(f"dcm2niix output {output.name} differs from the good mount's conversion")
                for source in sorted(local.iterdir()):
                    target = copied / source.name
                    if not target.exists() or target.read_bytes() != source.read_bytes():
                        problems.append(f"rsync: {source.name} is not on the server as copied")
                left = sorted(name for name in os.listdir(copied) if not (local / name).exists())
                problems += [f"rsync: {name} left in the resource" for name in left]
            finally:
                stop_mount(faulty, faulty_root)
                stop_mount(good, good_root)
            log = (work / "faulty" / "mount.log").read_text(errors="replace")
            problems += [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
            shutil.copy(work / "faulty" / "mount.log", Path(tempfile.gettempdir()) / "xnatfs-soak-mount.log")
    for problem in problems:
        logger.error("%s", problem)
    logger.info(
        "%s; the faulty mount's log: %s",
        "PASSED" if not problems else f"{len(problems)} problems",
        Path(tempfile.gettempdir()) / "xnatfs-soak-mount.log",
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
