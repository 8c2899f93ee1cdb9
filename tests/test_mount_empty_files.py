"""Empty files: XNAT cannot hold one.

The rule: emptying a file the server holds (``truncate(2)`` to 0 bytes, or
``O_TRUNC``/``ftruncate`` and a last close with nothing written) is refused
with ENOTSUP, and the file keeps, and shows, what it held. ``truncate(2)``
answers at once; an open with ``O_TRUNC`` at close, since bytes may still be
written through it. A new file closed empty stays local (one warning).
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import time

import pytest

from mountutil import mounted
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

QC = "/data/experiments/XNAT_E00001/resources/QC"
QC_PATH = ("STUDY01", "SUB001", "SUB001_MR1", "RESOURCES", "QC")
TTL = 1.0


def server_file(server, name: str) -> bytes | None:
    with XnatConnection(server.url, "admin", "admin") as conn:
        for remote in conn.list_files(QC):
            if remote.path == name:
                buffer = io.BytesIO()
                conn.download(remote.uri, buffer)
                return buffer.getvalue()
    return None


def shell(command: str) -> None:
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def shows_for(path, expected: bytes, seconds: float) -> None:
    """``path`` holds ``expected`` now and for ``seconds`` more (past the listing TTL)."""
    until = time.monotonic() + seconds
    while True:
        assert path.stat().st_size == len(expected)
        assert path.read_bytes() == expected
        if time.monotonic() > until:
            return
        time.sleep(0.2)


@pytest.mark.parametrize("origin", ["written through the mount", "on the server"])
def test_emptying_a_file_xnat_holds_is_refused_and_keeps_it(fake_xnat, tmp_path, origin):
    if origin == "on the server":
        fake_xnat.store.put_file("XNAT_E00001", "QC", "kept.txt", b"kept\n")
    with mounted(fake_xnat.url, tmp_path, ttl=TTL) as mount:
        path = mount.path.joinpath(*QC_PATH) / "kept.txt"
        if origin == "written through the mount":
            path.write_bytes(b"kept\n")
        shell(f": > '{path}'")
        shows_for(path, b"kept\n", 0)
        # The shell closes the file twice (its descriptor, then the one it was copied to): one log line.
        assert mount.log().count("XNAT cannot hold an empty file") == 1
        with pytest.raises(OSError) as refused:
            open(path, "wb").close()
        assert refused.value.errno == errno.ENOTSUP
        with pytest.raises(OSError) as refused:
            os.truncate(path, 0)
        assert refused.value.errno == errno.ENOTSUP
        shows_for(path, b"kept\n", TTL + 0.5)
        assert server_file(fake_xnat, "kept.txt") == b"kept\n"
        # Emptied and written again before the close: an ordinary rewrite.
        with open(path, "wb") as handle:
            handle.write(b"new\n")
        assert server_file(fake_xnat, "kept.txt") == b"new\n"


def test_a_redirect_warns_only_when_the_last_descriptor_closes_empty(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        shell(f"echo x > '{qc}/written.txt'")
        assert server_file(fake_xnat, "written.txt") == b"x\n"
        shell(f": > '{qc}/empty.txt'")
        assert (qc / "empty.txt").stat().st_size == 0
        deadline = time.monotonic() + 10
        while "empty.txt is empty" not in mount.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = mount.log()
        assert "written.txt is empty" not in log
        assert log.count("empty.txt is empty and stays local") == 1
        assert server_file(fake_xnat, "empty.txt") is None
