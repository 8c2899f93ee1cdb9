"""The ``-o ro`` FUSE option on a real mount: the command line turns it into a read-only mount.

The other writing and error rows are checked without a kernel in test_fsapi_write.py and
test_fsapi_errors.py.
"""

from __future__ import annotations

import errno

import pytest

from mountutil import mounted
from xnatfs.client.connection import XnatConnection

pytestmark = pytest.mark.mount

QC = "/data/experiments/XNAT_E00001/resources/QC"


def refused(action) -> int:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value.errno


def test_fuse_option_ro_refuses_writes_with_erofs(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path, args=("-o", "ro")) as mount:
        qc = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "RESOURCES" / "QC"
        existing = next(qc.iterdir())
        for attempt in (
            lambda: (qc / "x.txt").write_bytes(b"x"),
            lambda: (qc / "new").mkdir(),
            lambda: existing.unlink(),
            lambda: open(existing, "r+b"),
        ):
            assert refused(attempt) == errno.EROFS
        # Its first close told the kernel to flush no more (ENOSYS): closes go on succeeding.
        for _ in range(2):
            for path in qc.iterdir():
                with open(path, "rb") as f:
                    assert f.read(), path
    with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
        assert existing.name in {f.path for f in conn.list_files(QC)}
