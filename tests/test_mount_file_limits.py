"""What one file may stage: the spool's free space (ENOSPC) and the mount's
largest file size (EFBIG), checked whenever a write or truncate would grow
it, so nothing huge is staged or sent at close.

The kernel answers fallocate(2) itself (EOPNOTSUPP: pyfuse3 has no handler
for it); posix_fallocate then writes one byte per block, and those writes
meet the same bounds. With the spool's free space as the only bound that
takes long, so the test below bounds the file size instead.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount

QC_PATH = ("STUDY01", "SUB001", "SUB001_MR1", "RESOURCES", "QC")


def config(tmp_path, max_file_size: str) -> tuple[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(f'[defaults]\nmax_file_size = "{max_file_size}"\n')
    return ("--config", str(path))


def spool_records(mount) -> list:
    return list((mount.cache_dir / "spool" / "records").glob("*.json"))


def test_growing_past_the_spools_free_space_is_enospc(fake_xnat, tmp_path):
    fake_xnat.store.put_file("XNAT_E00001", "QC", "remote.txt", b"remote")
    huge = 1 << 49  # more than any disk the spool sits on
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, "1P")) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        (qc / "ours.txt").write_bytes(b"ours")
        for name, content in (("ours.txt", b"ours"), ("remote.txt", b"remote")):
            with pytest.raises(OSError) as refused:
                os.truncate(qc / name, huge)
            assert refused.value.errno == errno.ENOSPC
            assert (qc / name).read_bytes() == content
        with open(qc / "ours.txt", "r+b") as handle:
            with pytest.raises(OSError) as refused:
                os.ftruncate(handle.fileno(), huge)
            assert refused.value.errno == errno.ENOSPC
        assert (qc / "ours.txt").stat().st_size == 4
        deadline = time.monotonic() + 10
        while spool_records(mount) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spool_records(mount) == []


def test_growing_past_the_largest_file_size_is_efbig(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, "1M")) as mount:
        qc = mount.path.joinpath(*QC_PATH)
        fd = os.open(qc / "big.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"start")
            with pytest.raises(OSError) as refused:
                os.posix_fallocate(fd, 0, 1 << 40)
            assert refused.value.errno == errno.EFBIG
            with pytest.raises(OSError) as refused:
                os.pwrite(fd, b"x", 1 << 20)
            assert refused.value.errno == errno.EFBIG
            with pytest.raises(OSError) as refused:
                os.ftruncate(fd, (1 << 20) + 1)
            assert refused.value.errno == errno.EFBIG
            assert os.fstat(fd).st_size <= 1 << 20
        finally:
            os.unlink(qc / "big.bin")
            os.close(fd)
        assert not (qc / "big.bin").exists()
