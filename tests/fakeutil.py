"""Helpers for tests that drive the fake XNAT (fixtures live in conftest.py)."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from pathlib import Path

from xnatfs.fake.server import FaultInjector


def listing(http, server, path: str, **params) -> dict:
    """The ``ResultSet`` of a listing, checked to be a 200 whose ``totalRecords`` is right."""
    answer = http.get(server.url + path, params={"format": "json", **params})
    assert answer.status_code == 200, answer.text
    result = answer.json()["ResultSet"]
    assert result["totalRecords"] == str(len(result["Result"]))
    return result


def rows(http, server, path: str, **params) -> list[dict]:
    """The rows of a listing (see :func:`listing`)."""
    return listing(http, server, path, **params)["Result"]


def fault_seed(pattern: list[int | str | None], **rates) -> int:
    """A seed for ``set_faults(**rates, seed=...)`` whose first answers go as ``pattern`` says.

    Each item is what happens to one answer: the error status injected,
    ``"drop"`` or ``"truncate"``, or None for an answer left alone.
    """
    injector = FaultInjector()
    for seed in range(100_000):
        injector.configure(**rates, seed=seed)
        if [(fault.error_status or fault.cut) for fault in map(lambda _: injector.pick("GET"), pattern)] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern}")


def cd_export_extras() -> list[tuple[str, bytes]]:
    """What a CD export or a scanner puts in a zip besides the images: a
    README and a DICOMDIR (a DICOM file that is no image of any series)."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory = FileDataset("DICOMDIR", {}, file_meta=meta, preamble=b"\0" * 128)
    directory.FileSetID = "EXPORT"
    directory.DirectoryRecordSequence = []
    encoded = io.BytesIO()
    directory.save_as(encoded, enforce_file_format=True)
    return [("README.txt", b"Exported by the scanner console.\r\n"), ("DICOMDIR", encoded.getvalue())]


class FakeServerProcess:
    """The fake XNAT in a process of its own (``python -m xnatfs.fake``), so a test can
    stop it with SIGSTOP: it then accepts connections and never answers."""

    START_TIMEOUT = 20.0

    def __init__(self, data: Path, log: Path):
        self.username = self.password = "admin"
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xnatfs.fake", "--data", str(data)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        ready = select.select([self.process.stdout], [], [], self.START_TIMEOUT)[0]
        if not ready:
            self.close()
            raise AssertionError(f"the fake server did not start within {self.START_TIMEOUT} s")
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise AssertionError(f"the fake server did not start: {log.read_text()}")

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
