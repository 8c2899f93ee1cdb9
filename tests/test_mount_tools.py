"""Everyday tools pointed straight at the mount: dcm2niix, pydicom, nibabel, find, du, rsync."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount


def t1_series(mount) -> Path:
    scans = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1" / "SCANS"
    return scans / "2-T1w_MPRAGE" / "DICOM"


def convert(source: Path, out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True)
    done = subprocess.run(
        ["dcm2niix", "-d", "0", "-z", "n", "-o", str(out), str(source)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_dcm2niix_on_the_mount_equals_a_local_copy(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        series = t1_series(mount)
        local = tmp_path / "local" / "DICOM"
        shutil.copytree(series, local)
        from_mount = convert(series, tmp_path / "out-mount")
        from_copy = convert(local, tmp_path / "out-local")
    assert any(name.endswith(".nii") for name in from_mount)
    assert from_mount == from_copy


def test_pydicom_reads_a_series_from_the_mount(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        files = sorted(t1_series(mount).iterdir())
        datasets = [pydicom.dcmread(path) for path in files]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert all(ds.pixel_array.shape == (ds.Rows, ds.Columns) for ds in datasets)
    assert sorted(int(ds.InstanceNumber) for ds in datasets) == list(range(1, len(files) + 1))


def test_nibabel_reads_a_nifti_from_the_mount(fake_xnat, tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nibabel.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0]))
    local = tmp_path / "t1.nii"
    nibabel.save(image, local)
    fake_xnat.store.put_file("XNAT_E00001", "NIFTI", "t1.nii", local.read_bytes(), scan_id="2")
    with mounted(fake_xnat.url, tmp_path) as mount:
        loaded = nibabel.load(t1_series(mount).parent / "NIFTI" / "t1.nii")
        assert np.array_equal(np.asarray(loaded.dataobj), volume)
        assert np.allclose(loaded.affine, image.affine)


def test_find_du_and_rsync(fake_xnat, tmp_path):
    with mounted(fake_xnat.url, tmp_path) as mount:
        session = mount.path / "STUDY01" / "SUB001" / "SUB001_MR1"
        found = subprocess.run(["find", str(session), "-type", "f"], capture_output=True, text=True, check=True)
        files = [Path(line) for line in found.stdout.splitlines()]
        assert len(files) > 100
        apparent = subprocess.run(["du", "-s", "-b", str(session)], capture_output=True, text=True, check=True)
        assert int(apparent.stdout.split()[0]) == sum(path.stat().st_size for path in files)
        target = tmp_path / "copy"
        synced = subprocess.run(
            ["rsync", "-a", str(session) + "/", str(target)], capture_output=True, text=True, timeout=120
        )
        assert synced.returncode == 0, synced.stderr
        comparison = filecmp.dircmp(session, target)
        assert _identical(comparison)


def _identical(comparison: filecmp.dircmp) -> bool:
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(
        comparison.left, comparison.right, comparison.common_files, shallow=False
    )
    if mismatch or errors:
        return False
    return all(_identical(sub) for sub in comparison.subdirs.values())
