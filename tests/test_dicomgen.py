"""The sample DICOM generator writes series that real tools accept."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import warnings
from collections import defaultdict

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from xnatfs.fake.dicomgen import SeriesSpec, default_series, write_session

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # nibabel: "The DICOM readers are highly experimental"
    from nibabel.nicom import csareader

PATIENT = dict(patient_id="SUB001", patient_name="Sample^One", study_date="20240115")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("session")
    written = write_session(out, series=default_series(), **PATIENT)
    return out, written


@pytest.fixture(scope="module")
def headers(session):
    """Series number → datasets (pixels included), in InstanceNumber order."""
    _, written = session
    return {number: [pydicom.dcmread(path) for path in paths] for number, paths in written.items()}


def normal_of(ds) -> np.ndarray:
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def value_at(datasets, point_lps) -> float:
    """The pixel value nearest a patient-space point, from the slice whose plane is nearest."""
    point = np.asarray(point_lps, dtype=float)

    def distance(ds):
        return abs(normal_of(ds) @ (point - np.array(ds.ImagePositionPatient, dtype=float)))

    ds = min(datasets, key=distance)
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    offset = point - np.array(ds.ImagePositionPatient, dtype=float)
    column = round(offset @ orientation[:3] / float(ds.PixelSpacing[1]))
    row = round(offset @ orientation[3:] / float(ds.PixelSpacing[0]))
    return float(ds.pixel_array[row, column])


def test_returns_sorted_paths_laid_out_by_series(session, headers):
    out, written = session
    assert sorted(written) == [1, 2, 3, 4, 5]
    for number, paths in written.items():
        assert paths == sorted(paths)
        assert sorted((out / str(number)).iterdir()) == paths
        assert [int(ds.InstanceNumber) for ds in headers[number]] == list(range(1, len(paths) + 1))
    counts = {number: len(paths) for number, paths in written.items()}
    assert counts == {1: 9, 2: 20, 3: 20, 4: 12 * 5, 5: 12 * 7}


def test_every_file_is_an_explicit_little_endian_mr_image(session, headers):
    _, written = session
    specs = {spec.number: spec for spec in default_series()}
    for number, datasets in headers.items():
        for path, ds in zip(written[number], datasets):
            assert path.read_bytes()[128:132] == b"DICM"
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPClassUID == MRImageStorage
            assert ds.Modality == "MR"
            assert ds.Manufacturer and ds.ManufacturerModelName
            assert ds.SeriesNumber == number
            assert ds.SeriesDescription == ds.ProtocolName == specs[number].description
            assert ds.PatientID == "SUB001" and str(ds.PatientName) == "Sample^One"
            assert ds.StudyDate == "20240115"
            assert float(ds.RepetitionTime) > 0 and float(ds.EchoTime) > 0
            assert float(ds.FlipAngle) > 0
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint16
            assert pixels.shape == (ds.Rows, ds.Columns)
            assert pixels.max() <= 4095


def test_uids_identify_one_study_and_one_series_each(headers):
    every = [ds for datasets in headers.values() for ds in datasets]
    assert len({ds.StudyInstanceUID for ds in every}) == 1
    assert len({ds.FrameOfReferenceUID for ds in every}) == 1
    series_uids = {number: {ds.SeriesInstanceUID for ds in datasets} for number, datasets in headers.items()}
    assert all(len(uids) == 1 for uids in series_uids.values())
    assert len(set().union(*series_uids.values())) == len(headers)
    sop_uids = [ds.SOPInstanceUID for ds in every]
    assert len(set(sop_uids)) == len(sop_uids)
    for uid in [every[0].StudyInstanceUID, *set().union(*series_uids.values()), *sop_uids]:
        assert UID(uid).is_valid


def test_slices_step_by_their_thickness_along_the_normal(headers):
    for number, datasets in headers.items():
        stacks = defaultdict(list)
        for ds in datasets:
            stacks[(ds.AcquisitionNumber, tuple(ds.ImageOrientationPatient))].append(ds)
        for stack in stacks.values():
            assert len(stack) >= 3
            normal = normal_of(stack[0])
            for before, after in itertools.pairwise(stack):
                step = np.subtract(after.ImagePositionPatient, before.ImagePositionPatient)
                assert np.allclose(step, float(before.SliceThickness) * normal, atol=1e-4), number
                assert float(before.SpacingBetweenSlices) == float(before.SliceThickness)
            for ds in stack:
                position = np.array(ds.ImagePositionPatient, dtype=float)
                assert float(ds.SliceLocation) == pytest.approx(position @ normal, abs=1e-3)
                assert float(ds.PixelSpacing[0]) > 0


def test_localizer_has_three_planes(headers):
    normals = {tuple(np.abs(normal_of(ds))) for ds in headers[1]}
    assert normals == {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)}


def test_fmri_volumes_are_numbered_in_time(headers):
    bold = headers[4]
    assert {int(ds.NumberOfTemporalPositions) for ds in bold} == {5}
    by_volume = defaultdict(list)
    for ds in bold:
        assert ds.TemporalPositionIdentifier == ds.AcquisitionNumber
        by_volume[int(ds.TemporalPositionIdentifier)].append(ds)
    assert sorted(by_volume) == [1, 2, 3, 4, 5]
    positions = [[tuple(ds.ImagePositionPatient) for ds in volume] for volume in by_volume.values()]
    assert all(p == positions[0] for p in positions)
    starts = [min(ds.AcquisitionTime for ds in by_volume[v]) for v in sorted(by_volume)]
    assert starts == sorted(starts) and len(set(starts)) == 5


def test_dwi_carries_b_values_and_gradient_directions(headers):
    by_volume = defaultdict(list)
    for ds in headers[5]:
        by_volume[int(ds.AcquisitionNumber)].append(ds)
    assert sorted(by_volume) == list(range(1, 8))
    b_zero = by_volume[1]
    assert {float(ds.DiffusionBValue) for ds in b_zero} == {0.0}
    assert {ds.DiffusionDirectionality for ds in b_zero} == {"NONE"}
    directions = []
    for volume in range(2, 8):
        assert {float(ds.DiffusionBValue) for ds in by_volume[volume]} == {1000.0}
        vectors = {tuple(ds.DiffusionGradientOrientation) for ds in by_volume[volume]}
        assert len(vectors) == 1
        (vector,) = vectors
        assert np.linalg.norm(vector) == pytest.approx(1.0)
        directions.append(vector)
    assert len(set(directions)) == 6


def test_pixels_show_a_head_with_the_series_contrast(headers):
    # Points of the phantom (patient coordinates, mm): white matter, grey
    # matter beside it, a lateral ventricle, and air in a corner of the field.
    white, grey, csf = (25, 0, 20), (56, 0, 20), (9, 0, 18)
    t1 = {name: value_at(headers[2], point) for name, point in [("white", white), ("grey", grey), ("csf", csf)]}
    t2 = {name: value_at(headers[3], point) for name, point in [("white", white), ("grey", grey), ("csf", csf)]}
    assert t1["white"] > t1["grey"] > t1["csf"]
    assert t2["csf"] > t2["grey"] > t2["white"]
    assert value_at(headers[3], (-120, -120, 20)) < 150
    b0 = [ds for ds in headers[5] if float(ds.DiffusionBValue) == 0]
    b1000 = [ds for ds in headers[5] if int(ds.AcquisitionNumber) == 2]
    assert value_at(b1000, csf) / value_at(b0, csf) < 0.2  # free water fades
    assert value_at(b1000, grey) / value_at(b0, grey) > 0.3


@pytest.fixture(scope="module")
def converted(session, tmp_path_factory):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    out, _ = session
    nifti_dir = tmp_path_factory.mktemp("nifti")
    result = subprocess.run(
        ["dcm2niix", "-z", "n", "-f", "%s", "-o", str(nifti_dir), str(out)], capture_output=True, text=True, timeout=120
    )
    return result, nifti_dir


def test_dcm2niix_converts_every_series(converted):
    result, nifti_dir = converted
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()
    names = sorted(path.name for path in nifti_dir.glob("*.nii"))
    # A three-plane localizer becomes one image per plane, as real ones do.
    assert names == ["1_i00001.nii", "1_i00004.nii", "1_i00007.nii", "2.nii", "3.nii", "4.nii", "5.nii"]
    # dcm2niix turns 3D acquisitions to the nearest canonical orientation, so
    # compare the spatial sizes whatever their order.
    shapes = {name: (*sorted(shape[:3]), *shape[3:]) for name in names for shape in [nib.load(nifti_dir / name).shape]}
    assert shapes == {
        "1_i00001.nii": (3, 64, 64),
        "1_i00004.nii": (3, 64, 64),
        "1_i00007.nii": (3, 64, 64),
        "2.nii": (20, 64, 64),
        "3.nii": (20, 64, 64),
        "4.nii": (12, 64, 64, 5),
        "5.nii": (12, 64, 64, 7),
    }
    assert nib.load(nifti_dir / "4.nii").header.get_zooms() == pytest.approx((3.5, 3.5, 10.0, 2.0))
    bvals = np.loadtxt(nifti_dir / "5.bval")
    bvecs = np.loadtxt(nifti_dir / "5.bvec")
    assert bvals.tolist() == [0.0] + [1000.0] * 6
    assert bvecs.shape == (3, 7)
    assert np.allclose(np.linalg.norm(bvecs[:, 1:], axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("number", [4, 5])
def test_dcm2niix_keeps_volumes_in_acquisition_order(converted, headers, number):
    _, nifti_dir = converted
    data = np.asanyarray(nib.load(nifti_dir / f"{number}.nii").dataobj)
    sums = defaultdict(int)
    for ds in headers[number]:
        sums[int(ds.AcquisitionNumber)] += int(ds.pixel_array.sum(dtype=np.int64))
    expected = [sums[volume] for volume in sorted(sums)]
    assert [int(data[..., v].sum(dtype=np.int64)) for v in range(data.shape[3])] == expected


@pytest.mark.parametrize("number", [2, 3, 4])
def test_nifti_geometry_matches_the_dicom_positions(converted, headers, number):
    _, nifti_dir = converted
    image = nib.load(nifti_dir / f"{number}.nii")
    first_volume = [ds for ds in headers[number] if ds.AcquisitionNumber == 1]
    first, last = first_volume[0], first_volume[-1]
    orientation = np.array(first.ImageOrientationPatient, dtype=float)
    spacing = float(first.PixelSpacing[0])
    dicom_corners = []
    for ds in (first, last):
        for c, r in itertools.product((0, ds.Columns - 1), (0, ds.Rows - 1)):
            lps = (
                np.array(ds.ImagePositionPatient, dtype=float)
                + c * spacing * orientation[:3]
                + r * spacing * orientation[3:]
            )
            dicom_corners.append(lps * [-1, -1, 1])  # DICOM LPS → NIfTI RAS
    nifti_corners = [
        image.affine @ [i, j, k, 1] for i, j, k in itertools.product(*[(0, n - 1) for n in image.shape[:3]])
    ]
    assert np.allclose(
        sorted(map(tuple, dicom_corners)), sorted(tuple(corner[:3]) for corner in nifti_corners), atol=0.01
    )


def test_same_arguments_give_identical_bytes(session, tmp_path):
    out, written = session
    again = write_session(tmp_path, series=default_series(), **PATIENT)
    for number, paths in written.items():
        assert [p.relative_to(tmp_path) for p in again[number]] == [p.relative_to(out) for p in paths]
        for original, copy in zip(paths, again[number]):
            assert original.read_bytes() == copy.read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        dict(patient_id="SUB002"),
        dict(study_date="20240116"),
        dict(seed=1),
    ],
)
def test_other_patient_date_or_seed_gives_other_uids(session, headers, tmp_path, change):
    _, written = session
    arguments = {**PATIENT, "seed": 0, **change}
    other = write_session(tmp_path, series=[SeriesSpec(1, "Localizer", "localizer")], **arguments)
    theirs = [pydicom.dcmread(path) for path in other[1]]
    ours = headers[1]
    assert theirs[0].StudyInstanceUID != ours[0].StudyInstanceUID
    assert theirs[0].SeriesInstanceUID != ours[0].SeriesInstanceUID
    assert not {ds.SOPInstanceUID for ds in theirs} & {ds.SOPInstanceUID for ds in ours}
    assert [p.read_bytes() for p in other[1]] != [p.read_bytes() for p in written[1]]


def test_volume_counts_can_be_chosen(tmp_path):
    written = write_session(
        tmp_path,
        series=[SeriesSpec(7, "fMRI_task", "bold", volumes=3), SeriesSpec(8, "DWI_b0_dir2", "dwi", volumes=3)],
        **PATIENT,
    )
    assert len(written[7]) == 12 * 3 and len(written[8]) == 12 * 3
    last = pydicom.dcmread(written[7][-1], stop_before_pixels=True)
    assert (last.TemporalPositionIdentifier, last.NumberOfTemporalPositions) == (3, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: SeriesSpec(1, "x", "pet"),
        lambda tmp: SeriesSpec(0, "x", "t1w"),
        lambda tmp: SeriesSpec(2, "x", "t1w", volumes=4),
        lambda tmp: SeriesSpec(5, "x", "dwi", volumes=1),
        lambda tmp: write_session(tmp, series=default_series(), size="huge", **PATIENT),
        lambda tmp: write_session(
            tmp, series=default_series(), patient_id="P", patient_name="P", study_date="2024-01-15"
        ),
        lambda tmp: write_session(tmp, series=[SeriesSpec(2, "a", "t1w"), SeriesSpec(2, "b", "t2w")], **PATIENT),
    ],
)
def test_rejects_bad_arguments(tmp_path, make):
    with pytest.raises(ValueError):
        make(tmp_path)
    assert not any(tmp_path.iterdir())


def test_large_t1w_is_a_full_resolution_volume(tmp_path):
    written = write_session(tmp_path / "dicom", series=[SeriesSpec(2, "T1w_MPRAGE", "t1w")], size="large", **PATIENT)
    paths = written[2]
    assert len(paths) >= 200
    assert all(120_000 < path.stat().st_size < 140_000 for path in paths)
    middle = pydicom.dcmread(paths[len(paths) // 2])
    assert (middle.Rows, middle.Columns) == (256, 256)
    assert float(middle.SliceThickness) == 1.0
    if shutil.which("dcm2niix") is None:
        return
    nifti_dir = tmp_path / "nifti"
    nifti_dir.mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "n", "-f", "%s", "-o", str(nifti_dir), str(tmp_path / "dicom")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert sorted(nib.load(nifti_dir / "2.nii").shape) == sorted((256, 256, len(paths)))


def test_epi_field_maps_carry_a_csa_header_with_their_polarity(tmp_path):
    specs = [
        SeriesSpec(1, "fmap-epi_dir-AP", "epi", phase_encoding="AP"),
        SeriesSpec(2, "fmap-epi_dir-PA", "epi", phase_encoding="PA"),
        SeriesSpec(3, "fMRI_rest", "bold", 2),
    ]
    written = write_session(tmp_path, series=specs, **PATIENT)
    polarity = {}
    for number in (1, 2):
        ds = pydicom.dcmread(written[number][0])
        assert ds[0x00290010].value == "SIEMENS CSA HEADER"
        tags = csareader.read(ds[0x00291010].value)["tags"]
        polarity[number] = tags["PhaseEncodingDirectionPositive"]["items"]
        assert tags["BandwidthPerPixelPhaseEncode"]["items"] == [pytest.approx(52.083)]
    assert polarity == {1: [1], 2: [0]}
    assert 0x00291010 not in pydicom.dcmread(written[3][0])


@pytest.mark.parametrize(
    "spec", [dict(kind="epi"), dict(kind="bold", phase_encoding="AP"), dict(kind="epi", phase_encoding="LR")]
)
def test_phase_encoding_is_given_for_epi_field_maps_only(spec):
    with pytest.raises(ValueError):
        SeriesSpec(1, "x", **spec)
