"""Names a user (or a tool such as stress-ng --filename) writes that XNAT cannot hold.

XNAT stores file names as UTF-8 text; a name made of other bytes cannot be
sent, so it has to be refused when the file is created, not discovered at
close when the data is already staged, and whatever happens must reach the
log intact.
"""

from __future__ import annotations

import errno
import os

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount

QC = "STUDY01/SUB001/SUB001_MR1/RESOURCES/QC"
NOT_UTF8 = b"weird\xff\xfename.bin"


def try_create(folder: bytes, name: bytes) -> int | None:
    """errno of creating and writing ``name`` in ``folder``, None when that worked."""
    try:
        with open(folder + b"/" + name, "wb") as handle:
            handle.write(b"data")
    except OSError as exc:
        return exc.errno
    return None


def test_names_that_are_not_utf8_are_refused_at_create(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = os.fsencode(mount.path / QC)
        assert try_create(folder, NOT_UTF8) == errno.EINVAL
        assert NOT_UTF8 not in os.listdir(folder)
        assert mount.process.poll() is None
    assert list((mount.cache_dir / "spool" / "records").glob("*.json")) == []


def test_names_that_are_not_utf8_reach_the_log(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        try_create(os.fsencode(mount.path / QC), NOT_UTF8)
        assert mount.process.poll() is None
    assert "weird" in mount.log(), "nothing about the name reached the log"


def test_overlong_names_are_refused_at_create(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = os.fsencode(mount.path / QC)
        assert try_create(folder, b"x" * 256) == errno.ENAMETOOLONG
    assert list((mount.cache_dir / "spool" / "records").glob("*.json")) == []


def test_names_with_control_characters_spaces_and_accents(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = os.fsencode(mount.path / QC)
        outcomes = {name: try_create(folder, name) for name in (b"tab\there.txt", b"nl\nname.txt",
                                                                b"spaces in name.txt", b"\xc3\xbcml.txt")}
        for name, outcome in outcomes.items():
            # XNAT takes any UTF-8 file name; a refusal must be a clear one, never EIO.
            assert outcome in (None, errno.EINVAL), (name, outcome)
            if outcome is None:
                with open(folder + b"/" + name, "rb") as handle:
                    assert handle.read() == b"data"
        assert mount.process.poll() is None


def test_mkdir_and_mv_refuse_names_xnat_cannot_hold(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        folder = os.fsencode(mount.path / QC)
        with open(folder + b"/kept.txt", "wb") as handle:
            handle.write(b"data")
        for name, code in ((NOT_UTF8, errno.EINVAL), (b"y" * 256, errno.ENAMETOOLONG)):
            with pytest.raises(OSError) as made:
                os.mkdir(folder + b"/" + name)
            assert made.value.errno == code
            with pytest.raises(OSError) as moved:
                os.rename(folder + b"/kept.txt", folder + b"/" + name)
            assert moved.value.errno == code
        assert b"kept.txt" in os.listdir(folder)
        assert not any(name.startswith((b"weird", b"yyy")) for name in os.listdir(folder))
        assert mount.process.poll() is None
    assert "mkdir refused" in mount.log() and "mv refused" in mount.log()


def test_names_with_url_characters_round_trip_through_the_mount(fake_xnat, tmp_path):
    # XNAT lists these in a file's URI unencoded; each must reach the server as the same name.
    names = ("%41.txt", "b0dwi+00001.dcm", "sp ace.txt", "ha#sh.txt")
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "SUB001_MR1")
    resource_id = fake_xnat.store.find_resource("experiment", experiment_id, "QC")["id"]

    def stored() -> set[str]:
        return {row["path"] for row in fake_xnat.store.files(resource_id)}

    with mounted(fake_xnat.url, tmp_path, name="writer") as mount:
        for name in names:
            (mount.path / QC / name).write_bytes(name.encode())
    assert set(names) <= stored()
    with mounted(fake_xnat.url, tmp_path, name="reader", cache_dir=tmp_path / "fresh-cache") as mount:
        folder = mount.path / QC
        assert set(names) <= set(os.listdir(folder))
        for name in names:
            assert (folder / name).read_bytes() == name.encode(), name
        os.rename(folder / "b0dwi+00001.dcm", folder / "b0dwi+00002.dcm")
        os.unlink(folder / "ha#sh.txt")
        assert (folder / "b0dwi+00002.dcm").read_bytes() == b"b0dwi+00001.dcm"
    assert {"b0dwi+00002.dcm", "%41.txt", "sp ace.txt"} <= stored()
    assert not {"b0dwi+00001.dcm", "ha#sh.txt"} & stored()
