"""What the mount answers when the server fails, and large files served while they arrive."""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount

SESSION = ("STUDY01", "SUB001", "SUB001_MR1")


def config(tmp_path, **values) -> tuple[str, str]:
    path = tmp_path / "config.toml"
    lines = ["[defaults]"] + [f"{key} = {value!r}" for key, value in values.items()]
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return ("--config", str(path))


def test_server_errors_become_eio_with_a_log_line(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, retries=0)) as mount:
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(OSError) as failed:
            os.listdir(mount.path / "STUDY01")
        assert failed.value.errno == errno.EIO
        fake_xnat.set_faults()
        assert "SUB001" in os.listdir(mount.path / "STUDY01")
        assert mount.process.poll() is None
    log = mount.log()
    assert "503" in log and "/data/projects/STUDY01/subjects" in log


def test_forbidden_becomes_eacces(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, retries=0)) as mount:
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(403,))
        with pytest.raises(PermissionError):
            os.listdir(mount.path / "STUDY02")
        fake_xnat.set_faults()


def test_failed_download_is_eio_and_caches_nothing(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, retries=0)) as mount:
        qc = mount.path.joinpath(*SESSION, "RESOURCES", "QC")
        target = next(p for p in qc.iterdir() if p.suffix == ".csv")
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(500,))
        with pytest.raises(OSError) as failed:
            target.read_bytes()
        assert failed.value.errno == errno.EIO
        fake_xnat.set_faults()
        data = target.read_bytes()
        assert hashlib.md5(data).hexdigest() == os.getxattr(target, "user.xnat.digest").decode()


def test_large_file_is_served_while_it_downloads(fake_xnat, tmp_path):
    payload = os.urandom(3 << 20)
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", payload)
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, large_file_size="1M")) as mount:
        big = mount.path.joinpath(*SESSION, "RESOURCES", "RAW", "big.bin")
        assert big.stat().st_size == len(payload)
        fake_xnat.reset_counts()
        pieces: dict[int, bytes] = {}

        def read_at(offset: int) -> None:
            with open(big, "rb") as handle:
                handle.seek(offset)
                pieces[offset] = handle.read(1 << 20)

        readers = [threading.Thread(target=read_at, args=(offset,)) for offset in (0, 1 << 20, 2 << 20)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
        assert b"".join(pieces[offset] for offset in sorted(pieces)) == payload
        assert big.read_bytes() == payload
        downloads = [t for m, t, _s in fake_xnat.requests if m == "GET" and "big.bin" in t]
        assert len(downloads) == 1
