"""Synthetic MR sessions written as real DICOM files.

The fake XNAT serves these, so they must be files that dcm2niix, pydicom and
nibabel accept as they would a scanner's: one 2D image per file, MR Image
Storage in Explicit VR Little Endian, proper geometry (ImagePositionPatient
stepping by SliceThickness along the slice normal) and pixel data that looks
like a head (nested ellipsoids: scalp, skull, CSF, grey and white matter,
ventricles, eyes) with Rician noise.

A series may also carry the Siemens CSA image header (private element
(0029,1010)) with the phase-encoding polarity and the bandwidth per pixel in
the phase direction, from which dcm2niix derives ``PhaseEncodingDirection``
(``j`` or ``j-``), ``EffectiveEchoSpacing`` and ``TotalReadoutTime``: a pair
of spin-echo EPI field maps with opposite directions needs them. Only field
maps carry it: dcm2niix 1.0.20260724 crashes (SIGSEGV) on a multi-volume
BOLD series that has this minimal CSA header and a ReproIn protocol name.

Everything is a pure function of the arguments: the same patient, study date
and seed give byte-identical files, so sample data can be regenerated instead
of stored. UIDs are ``2.25.<UUID>`` with a name-based (version 5) UUID.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

logger = logging.getLogger(__name__)

KINDS = ("localizer", "t1w", "t2w", "bold", "dwi", "epi")
# Phase-encoding directions a series may name, as anatomical axes (BIDS ``dir-`` labels).
PHASE_DIRECTIONS = ("", "AP", "PA")
SIZES = ("small", "large")

# Namespace for the name-based UUIDs behind every UID this module makes.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://xnatfs.invalid/dicomgen")

_MANUFACTURER = "SIEMENS"
_MODEL = "Prisma_fit"
_SOFTWARE = "syngo MR E11"
_FIELD_STRENGTH = 3.0
_LARMOR_MHZ = 123.2

# BitsStored is 12, as on most MR scanners.
_MAX_PIXEL = 4095
_PEAK_SIGNAL = 3000.0
_NOISE_SIGMA = 25.0


@dataclass(frozen=True)
class SeriesSpec:
    """One series of a session.

    ``kind`` picks the contrast, geometry and sequence parameters ("epi" is
    a spin-echo EPI field map); ``volumes`` overrides the number of time
    points (bold, epi) or of diffusion volumes, the b=0 volume included
    (dwi). Other kinds have a single volume. ``phase_encoding`` ("AP" or
    "PA"; epi only, where it is required) adds the CSA header that tells the
    phase-encoding polarity; without it the files carry no private elements.
    """

    number: int
    description: str
    kind: str
    volumes: int | None = None
    phase_encoding: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown series kind {self.kind!r}; expected one of {KINDS}")
        if self.number < 1:
            raise ValueError(f"series number must be positive, got {self.number}")
        if self.volumes is not None:
            if self.kind not in ("bold", "dwi", "epi"):
                raise ValueError(f"a {self.kind} series has exactly one volume")
            if self.volumes < (2 if self.kind == "dwi" else 1):
                raise ValueError(f"too few volumes for a {self.kind} series: {self.volumes}")
        if self.phase_encoding not in PHASE_DIRECTIONS:
            raise ValueError(
                f"unknown phase-encoding direction {self.phase_encoding!r}; expected one of {PHASE_DIRECTIONS[1:]}"
            )
        if bool(self.phase_encoding) != (self.kind == "epi"):
            raise ValueError("a phase-encoding direction is given for an epi field map, and only there")


def default_series() -> list[SeriesSpec]:
    """A typical research MR session: localizer, T1w, T2w, resting fMRI, DWI."""
    return [
        SeriesSpec(1, "Localizer", "localizer"),
        SeriesSpec(2, "T1w_MPRAGE", "t1w"),
        SeriesSpec(3, "T2w_SPC", "t2w"),
        SeriesSpec(4, "fMRI_rest", "bold"),
        SeriesSpec(5, "DWI_dir6", "dwi"),
    ]


# ---------------------------------------------------------------- geometry

# (row direction, column direction) in patient coordinates (LPS).
_AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
_SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
_CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


@dataclass(frozen=True)
class _Stack:
    """Parallel, contiguous slices centred on the magnet's isocentre."""

    orientation: tuple[tuple[float, float, float], tuple[float, float, float]]
    rows: int
    cols: int
    pixel_mm: float
    thickness_mm: float
    slices: int

    @property
    def row_dir(self) -> np.ndarray:
        return np.array(self.orientation[0])

    @property
    def col_dir(self) -> np.ndarray:
        return np.array(self.orientation[1])

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def position(self, index: int) -> np.ndarray:
        """ImagePositionPatient (centre of the first pixel) of slice ``index``."""
        return (
            -(self.cols - 1) / 2 * self.pixel_mm * self.row_dir
            - (self.rows - 1) / 2 * self.pixel_mm * self.col_dir
            + (index - (self.slices - 1) / 2) * self.thickness_mm * self.normal
        )


class _SlicePlane:
    """Functions of patient coordinates evaluated over one slice's pixels.

    A pixel at (row r, column c) sits at ``origin + c·Δ·row_dir + r·Δ·col_dir``,
    so linear and quadratic functions of position split into a part that
    depends on the row, one that depends on the column and (only for oblique
    slices) a cross term. Summing those with broadcasting costs a few passes
    over the image instead of one per coordinate per shape.
    """

    def __init__(self, stack: _Stack, index: int) -> None:
        self.origin = stack.position(index)
        self.normal = stack.normal
        self.u = stack.row_dir
        self.v = stack.col_dir
        self.c_mm = np.arange(stack.cols) * stack.pixel_mm
        self.r_mm = np.arange(stack.rows) * stack.pixel_mm

    def linear(self, gradient: np.ndarray, offset: float) -> np.ndarray:
        """``offset + gradient · p`` at every pixel p."""
        by_col = offset + gradient @ self.origin + self.c_mm * (gradient @ self.u)
        by_row = self.r_mm * (gradient @ self.v)
        return (by_row[:, None] + by_col[None, :]).astype(np.float32)

    def cuts(self, centre: np.ndarray, radii: np.ndarray) -> bool:
        """Whether the slice's plane meets the axis-aligned ellipsoid."""
        return abs(self.normal @ (self.origin - centre)) <= np.linalg.norm(radii * self.normal)

    def ellipsoid(self, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """``Σ ((p - centre) / radii)²`` at every pixel p: ≤ 1 inside the ellipsoid."""
        d = (self.origin - centre) / radii
        u = self.u / radii
        v = self.v / radii
        by_col = ((d[None, :] + self.c_mm[:, None] * u) ** 2).sum(axis=1)
        by_row = (self.r_mm**2) * (v @ v) + self.r_mm * (2 * (d @ v))
        form = by_row[:, None].astype(np.float32) + by_col[None, :].astype(np.float32)
        cross = 2 * (u @ v)
        if cross:
            form += (cross * np.outer(self.r_mm, self.c_mm)).astype(np.float32)
        return form


@dataclass(frozen=True)
class _Protocol:
    """How a kind of series is acquired and what its images look like."""

    stacks: dict[str, tuple[_Stack, ...]]  # size → stacks
    volumes: dict[str, int]  # size → default volume count
    sequence_name: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None
    flip_deg: float
    scanning_sequence: str
    sequence_variant: str
    scan_options: str
    acquisition_type: str
    image_type: tuple[str, ...]
    contrast: tuple[float, ...]  # relative signal per tissue label
    minutes: float  # scanner time besides the repeated volumes (set-up, shimming)


# Tissue labels of the phantom, indexes into _Protocol.contrast; 0 is air.
_SCALP, _BONE, _CSF, _GREY, _WHITE, _EYE = range(1, 7)

_PROTOCOLS = {
    "localizer": _Protocol(
        stacks={
            size: tuple(_Stack(o, n, n, px, 8.0, 3) for o in (_SAGITTAL, _CORONAL, _AXIAL))
            for size, n, px in (("small", 64, 4.0), ("large", 256, 1.0))
        },
        volumes={"small": 1, "large": 1},
        sequence_name="*fl2d1",
        tr_ms=8.6,
        te_ms=4.0,
        ti_ms=None,
        flip_deg=20.0,
        scanning_sequence="GR",
        sequence_variant="SP",
        scan_options="",
        acquisition_type="2D",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        contrast=(0.0, 0.8, 0.1, 0.35, 0.5, 0.6, 0.4),
        minutes=0.5,
    ),
    "t1w": _Protocol(
        stacks={
            "small": (_Stack(_SAGITTAL, 64, 64, 4.0, 8.0, 20),),
            "large": (_Stack(_SAGITTAL, 256, 256, 1.0, 1.0, 208),),
        },
        volumes={"small": 1, "large": 1},
        sequence_name="*tfl3d1_16ns",
        tr_ms=2300.0,
        te_ms=2.98,
        ti_ms=900.0,
        flip_deg=9.0,
        scanning_sequence="GR\\IR",
        sequence_variant="SK\\SP\\MP",
        scan_options="IR",
        acquisition_type="3D",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
        contrast=(0.0, 0.9, 0.05, 0.1, 0.45, 0.7, 0.12),
        minutes=5.5,
    ),
    "t2w": _Protocol(
        stacks={
            "small": (_Stack(_AXIAL, 64, 64, 4.0, 8.0, 20),),
            "large": (_Stack(_AXIAL, 256, 256, 1.0, 1.0, 176),),
        },
        volumes={"small": 1, "large": 1},
        sequence_name="*spcR_282ns",
        tr_ms=3200.0,
        te_ms=409.0,
        ti_ms=None,
        flip_deg=120.0,
        scanning_sequence="SE",
        sequence_variant="SK\\SP\\OSP",
        scan_options="",
        acquisition_type="3D",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
        contrast=(0.0, 0.5, 0.05, 1.0, 0.55, 0.4, 0.95),
        minutes=4.5,
    ),
    "bold": _Protocol(
        stacks={
            "small": (_Stack(_AXIAL, 64, 64, 3.5, 10.0, 12),),
            "large": (_Stack(_AXIAL, 64, 64, 3.5, 3.5, 36),),
        },
        volumes={"small": 5, "large": 20},
        sequence_name="*epfid2d1_64",
        tr_ms=2000.0,
        te_ms=30.0,
        ti_ms=None,
        flip_deg=90.0,
        scanning_sequence="EP",
        sequence_variant="SK\\SS",
        scan_options="FS",
        acquisition_type="2D",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        contrast=(0.0, 0.15, 0.02, 0.9, 0.6, 0.45, 0.8),
        minutes=1.0,
    ),
    "dwi": _Protocol(
        stacks={
            "small": (_Stack(_AXIAL, 64, 64, 4.0, 10.0, 12),),
            "large": (_Stack(_AXIAL, 96, 96, 2.5, 2.5, 50),),
        },
        volumes={"small": 7, "large": 7},
        sequence_name="*ep_b",  # completed per volume with the b-value, as Siemens does
        tr_ms=8000.0,
        te_ms=90.0,
        ti_ms=None,
        flip_deg=90.0,
        scanning_sequence="EP",
        sequence_variant="SK\\SP",
        scan_options="FS",
        acquisition_type="2D",
        image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"),
        contrast=(0.0, 0.1, 0.02, 1.0, 0.6, 0.5, 0.9),
        minutes=1.0,
    ),
    "epi": _Protocol(
        stacks={
            "small": (_Stack(_AXIAL, 64, 64, 3.5, 10.0, 12),),
            "large": (_Stack(_AXIAL, 64, 64, 3.5, 3.5, 36),),
        },
        volumes={"small": 1, "large": 3},
        sequence_name="*epse2d1_64",
        tr_ms=8000.0,
        te_ms=66.0,
        ti_ms=None,
        flip_deg=90.0,
        scanning_sequence="EP",
        sequence_variant="SK",
        scan_options="FS",
        acquisition_type="2D",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        contrast=(0.0, 0.1, 0.02, 1.0, 0.6, 0.5, 0.9),
        minutes=0.5,
    ),
}

# Bandwidth per pixel along the phase-encoding axis (Hz) that the CSA header
# reports for EPI: with a 64-line readout, 0.3 ms echo spacing.
_EPI_PHASE_BANDWIDTH_HZ = 52.083

_B_VALUE = 1000.0  # s/mm²
# Apparent diffusion coefficient per tissue (mm²/s); white matter is anisotropic.
_ADC = np.array([0.0, 0.1e-3, 0.5e-3, 3.0e-3, 0.8e-3, 0.0, 3.0e-3], dtype=np.float32)
_WM_AXIAL, _WM_RADIAL = 1.7e-3, 0.3e-3
_WM_FIBRE = np.array([1.0, 0.0, 0.0], dtype=np.float32)  # left-right, like the corpus callosum


def _gradient_directions(count: int) -> np.ndarray:
    """``count`` unit vectors spread over a hemisphere (a Fibonacci spiral)."""
    k = np.arange(count) + 0.5
    z = 1.0 - k / count
    azimuth = np.pi * (3.0 - np.sqrt(5.0)) * k
    radial = np.sqrt(1.0 - z * z)
    return np.stack([radial * np.cos(azimuth), radial * np.sin(azimuth), z], axis=1)


# ----------------------------------------------------------------- phantom


@dataclass(frozen=True)
class _Ellipsoid:
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    tissue: int


# Painted in order, later shapes over earlier ones; millimetres, LPS.
_HEAD = (
    _Ellipsoid((0, 0, 0), (78, 98, 95), _SCALP),
    _Ellipsoid((0, 0, 3), (72, 92, 88), _BONE),
    _Ellipsoid((0, 0, 5), (67, 87, 82), _CSF),
    _Ellipsoid((0, 0, 5), (64, 84, 78), _GREY),
    _Ellipsoid((0, 0, 10), (50, 68, 55), _WHITE),
    _Ellipsoid((0, 12, -48), (14, 16, 30), _WHITE),  # brainstem
    _Ellipsoid((-9, 0, 18), (6, 26, 12), _CSF),  # lateral ventricles
    _Ellipsoid((9, 0, 18), (6, 26, 12), _CSF),
    _Ellipsoid((-32, -72, -28), (12, 12, 12), _EYE),
    _Ellipsoid((32, -72, -28), (12, 12, 12), _EYE),
)
# Resting-state "network" whose signal fluctuates in the fMRI series.
_ACTIVE_CENTRE = np.array([0.0, 70.0, 10.0])
_ACTIVE_RADII = np.array([30.0, 30.0, 30.0])


def _tissue_labels(plane: _SlicePlane, scale: float) -> np.ndarray:
    labels = np.zeros((plane.r_mm.size, plane.c_mm.size), dtype=np.uint8)
    for shape in _HEAD:
        centre = np.asarray(shape.centre, dtype=float) * scale
        radii = np.asarray(shape.radii, dtype=float) * scale
        if plane.cuts(centre, radii):
            labels[plane.ellipsoid(centre, radii) <= 1.0] = shape.tissue
    return labels


def _bias_field(plane: _SlicePlane) -> np.ndarray:
    """The smooth receive-coil shading every real MR image has."""
    return plane.linear(np.array([0.0, -0.0005, 0.0008]), 1.0)


def _with_rician_noise(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * _NOISE_SIGMA
    magnitude = np.hypot(signal + noise[0], noise[1])
    return np.clip(np.rint(magnitude), 0, _MAX_PIXEL).astype("<u2")


# ------------------------------------------------------------------- writing


def _uid(*parts: object) -> str:
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}"


def _digest_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _da(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: dt.datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _ds(values: Iterable[float]) -> list[float]:
    """Numbers for a DS element, rounded so they fit its 16 characters."""
    return [float(f"{v:.6g}") + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class _Session:
    patient_id: str
    patient_name: str
    start: dt.datetime
    seed: int
    study_uid: str
    frame_uid: str
    head_scale: float
    age_years: int
    sex: str
    weight_kg: int
    accession: str


def _session(patient_id: str, patient_name: str, study_date: str, seed: int) -> _Session:
    try:
        day = dt.datetime.strptime(study_date, "%Y%m%d")
    except ValueError:
        raise ValueError(f"study_date must be YYYYMMDD, got {study_date!r}") from None
    person = _digest_int(patient_id)
    visit = _digest_int(f"{patient_id}/{study_date}/{seed}")
    age = 20 + person % 50
    return _Session(
        patient_id=patient_id,
        patient_name=patient_name,
        start=day + dt.timedelta(hours=8, minutes=visit % 480),
        seed=seed,
        study_uid=_uid(patient_id, study_date, seed, "study"),
        frame_uid=_uid(patient_id, study_date, seed, "frame"),
        head_scale=0.93 + (person % 1000) / 1000 * 0.14,
        age_years=age,
        sex="FM"[(person >> 10) & 1],
        weight_kg=50 + (person >> 16) % 50,
        accession=f"A{visit % 10**8:08d}",
    )


def _series_header(
    session: _Session, spec: SeriesSpec, protocol: _Protocol, start: dt.datetime, volumes: int
) -> Dataset:
    """The elements every image of a series shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(protocol.image_type)
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = _da(session.start)
    ds.SeriesDate = _da(start)
    ds.StudyTime = _tm(session.start)
    ds.SeriesTime = _tm(start)
    ds.AccessionNumber = session.accession
    ds.Modality = "MR"
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = "Sample Imaging Centre"
    ds.ReferringPhysicianName = ""
    ds.StationName = "MRC35100"
    ds.StudyDescription = "Research^Brain"
    ds.SeriesDescription = spec.description
    ds.ManufacturerModelName = _MODEL
    ds.PatientName = session.patient_name
    ds.PatientID = session.patient_id
    ds.PatientBirthDate = f"{session.start.year - session.age_years}0101"
    ds.PatientSex = session.sex
    ds.PatientAge = f"{session.age_years:03d}Y"
    ds.PatientWeight = session.weight_kg
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = protocol.scanning_sequence
    ds.SequenceVariant = protocol.sequence_variant
    ds.ScanOptions = protocol.scan_options
    ds.MRAcquisitionType = protocol.acquisition_type
    ds.SequenceName = protocol.sequence_name
    ds.RepetitionTime = protocol.tr_ms
    ds.EchoTime = protocol.te_ms
    if protocol.ti_ms is not None:
        ds.InversionTime = protocol.ti_ms
    ds.NumberOfAverages = 1
    ds.ImagingFrequency = _LARMOR_MHZ
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = _FIELD_STRENGTH
    ds.SoftwareVersions = _SOFTWARE
    ds.ProtocolName = spec.description
    ds.TransmitCoilName = "Body"
    ds.FlipAngle = protocol.flip_deg
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = session.study_uid
    ds.SeriesInstanceUID = _uid(session.study_uid, spec.number, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = spec.number
    ds.FrameOfReferenceUID = session.frame_uid
    ds.PositionReferenceIndicator = ""
    if spec.kind == "bold":
        ds.NumberOfTemporalPositions = volumes
    if spec.phase_encoding:
        ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
        ds.add_new(
            0x00291010,
            "OB",
            _csa_image_header(
                {
                    # With these axial images dcm2niix reports polarity 1 as "j-" (A>P), 0 as "j" (P>A).
                    "PhaseEncodingDirectionPositive": ("IS", "1" if spec.phase_encoding == "AP" else "0"),
                    "BandwidthPerPixelPhaseEncode": ("FD", f"{_EPI_PHASE_BANDWIDTH_HZ:.6f}"),
                }
            ),
        )
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = round(_PEAK_SIGNAL * max(protocol.contrast) / 2)
    ds.WindowWidth = round(_PEAK_SIGNAL * max(protocol.contrast))
    return ds


def _csa_image_header(tags: dict[str, tuple[str, str]]) -> bytes:
    """A Siemens CSA2 ("SV10") header holding ``name → (VR, value)``, one
    value each: after the magic and the tag count, each tag is a fixed
    record (name, multiplicity, VR, type, item count) and each item is its
    length (given three times) followed by the NUL-ended text padded to 4 bytes."""
    check = 77  # the constant Siemens writes into every unused field
    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(tags), check))
    for name, (vr, value) in tags.items():
        text = value.encode("ascii") + b"\0"
        out += struct.pack("<64si4s3i", name.encode("ascii"), 1, vr.encode("ascii"), 0, 1, check)
        out += struct.pack("<4i", len(text), len(text), check, len(text))
        out += text + b"\0" * (-len(text) % 4)
    return bytes(out)


def _image_fields(ds: Dataset, stack: _Stack, index: int, instance: int, acquired: dt.datetime) -> None:
    """The elements that differ from one image of a series to the next."""
    position = stack.position(index)
    ds.AcquisitionDate = ds.ContentDate = _da(acquired)
    ds.AcquisitionTime = ds.ContentTime = _tm(acquired)
    ds.InstanceNumber = instance
    ds.SliceThickness = stack.thickness_mm
    ds.SpacingBetweenSlices = stack.thickness_mm
    ds.ImagePositionPatient = _ds(position)
    ds.ImageOrientationPatient = _ds(np.concatenate([stack.row_dir, stack.col_dir]))
    ds.SliceLocation = _ds([position @ stack.normal])[0]
    ds.Rows = stack.rows
    ds.Columns = stack.cols
    ds.PixelSpacing = [stack.pixel_mm, stack.pixel_mm]
    ds.AcquisitionMatrix = [0, stack.cols, stack.rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW" if stack.orientation == _SAGITTAL else "COL"


def _volume_fields(ds: Dataset, protocol: _Protocol, kind: str, volume: int, directions: np.ndarray) -> None:
    ds.AcquisitionNumber = volume + 1
    if kind == "bold":
        ds.TemporalPositionIdentifier = volume + 1
    elif kind == "dwi" and volume == 0:
        ds.SequenceName = f"{protocol.sequence_name}0"
        ds.DiffusionDirectionality = "NONE"
        ds.DiffusionBValue = 0.0
    elif kind == "dwi":
        ds.SequenceName = f"{protocol.sequence_name}{_B_VALUE:.0f}#{volume}"
        ds.DiffusionDirectionality = "DIRECTIONAL"
        ds.DiffusionBValue = _B_VALUE
        ds.DiffusionGradientOrientation = [float(v) for v in directions[volume - 1]]


def _slice_offset(protocol: _Protocol, stack: _Stack, index: int) -> dt.timedelta:
    """When, within a volume, a slice is acquired; dcm2niix derives slice
    timing from these. 3D sequences acquire all slices together. 2D EPI
    interleaves the slices over one TR (even slices first, then odd); other 2D
    sequences take one k-space line per TR, slice after slice."""
    if protocol.acquisition_type == "3D":
        return dt.timedelta(0)
    if "EP" not in protocol.scanning_sequence:
        return dt.timedelta(milliseconds=protocol.tr_ms * stack.rows * index)
    evens = (stack.slices + 1) // 2
    order = index // 2 if index % 2 == 0 else evens + index // 2
    return dt.timedelta(milliseconds=protocol.tr_ms * order / stack.slices)


def _encode(ds: Dataset) -> dict[int, bytes]:
    """Each element of ``ds`` as Explicit VR Little Endian bytes, by tag.

    Encoding element by element lets a series encode its shared header once
    instead of once per file; pydicom's whole-dataset writer would redo it.
    """
    encodings = convert_encodings(["ISO_IR 100"])
    encoded: dict[int, bytes] = {}
    for element in ds:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_data_element(buffer, element, encodings)
        encoded[element.tag] = buffer.getvalue()
    return encoded


def _file_bytes(sop_uid: str, elements: dict[int, bytes]) -> bytes:
    """A DICOM Part 10 file: preamble, file meta, then the elements in tag order."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    body = b"".join(elements[tag] for tag in sorted(elements))
    return b"\0" * 128 + b"DICM" + buffer.getvalue() + body


def _pixels(
    plane: _SlicePlane,
    kind: str,
    contrast: np.ndarray,
    scale: float,
    volume: int,
    directions: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One image: the phantom's tissues in this series' contrast, changed as
    this volume of a time series or diffusion series would be, plus noise."""
    labels = _tissue_labels(plane, scale)
    signal = contrast[labels] * _bias_field(plane)
    if kind == "bold":
        inside = plane.ellipsoid(_ACTIVE_CENTRE * scale, _ACTIVE_RADII * scale) <= 1.0
        active = inside & (labels == _GREY)
        signal *= np.where(active, np.float32(1.0 + 0.04 * np.sin(volume * np.pi / 2)), 1.0)
    elif kind == "dwi" and volume > 0:
        gradient = directions[volume - 1]
        along_fibre = float(gradient @ _WM_FIBRE) ** 2
        adc = _ADC.copy()
        adc[_WHITE] = _WM_RADIAL + (_WM_AXIAL - _WM_RADIAL) * along_fibre
        signal *= np.exp(-_B_VALUE * adc)[labels]
    return _with_rician_noise(signal, rng)


def _volume_count(spec: SeriesSpec, size: str) -> int:
    return spec.volumes or _PROTOCOLS[spec.kind].volumes[size]


def _duration(spec: SeriesSpec, size: str) -> dt.timedelta:
    """Scanner time of a series, so the next one starts after it."""
    protocol = _PROTOCOLS[spec.kind]
    repeats_ms = protocol.tr_ms * _volume_count(spec, size)
    return dt.timedelta(minutes=protocol.minutes) + dt.timedelta(milliseconds=repeats_ms)


def _write_series(out_dir: Path, session: _Session, spec: SeriesSpec, start: dt.datetime, size: str) -> list[Path]:
    protocol = _PROTOCOLS[spec.kind]
    stacks = protocol.stacks[size]
    volumes = _volume_count(spec, size)
    directions = _gradient_directions(max(volumes - 1, 0))
    contrast = np.asarray(protocol.contrast, dtype=np.float32) * _PEAK_SIGNAL
    rng = np.random.default_rng([session.seed, _digest_int(session.patient_id), spec.number])
    header = _series_header(session, spec, protocol, start, volumes)
    shared = _encode(header)
    series_dir = out_dir / str(spec.number)
    series_dir.mkdir(parents=True, exist_ok=True)

    digits = max(4, len(str(volumes * sum(stack.slices for stack in stacks))))
    paths = []
    instance = 0
    for volume in range(volumes):
        volume_start = start + dt.timedelta(milliseconds=protocol.tr_ms * volume)
        for stack in stacks:
            for index in range(stack.slices):
                instance += 1
                image = Dataset()
                image.SOPInstanceUID = _uid(header.SeriesInstanceUID, instance)
                _image_fields(image, stack, index, instance, volume_start + _slice_offset(protocol, stack, index))
                _volume_fields(image, protocol, spec.kind, volume, directions)
                plane = _SlicePlane(stack, index)
                pixels = _pixels(plane, spec.kind, contrast, session.head_scale, volume, directions, rng)
                image.add_new(0x7FE00010, "OW", pixels.tobytes())  # PixelData; OB/OW settled here
                path = series_dir / f"{spec.number}-{instance:0{digits}d}.dcm"
                path.write_bytes(_file_bytes(image.SOPInstanceUID, shared | _encode(image)))
                paths.append(path)
    logger.debug("wrote series %d (%s): %d files", spec.number, spec.description, len(paths))
    return paths


def write_session(
    out_dir: Path,
    *,
    patient_id: str,
    patient_name: str,
    study_date: str,
    series: Sequence[SeriesSpec],
    size: str = "small",
    seed: int = 0,
) -> dict[int, list[Path]]:
    """Write one MR session as DICOM files, ``out_dir/<series number>/*.dcm``.

    ``study_date`` is ``YYYYMMDD``. ``size`` is "small" (64×64 images, tens
    of files per series: for tests) or "large" (T1w 256×256×208 at
    1 mm, about 130 KB per file: for benchmarks). UIDs depend on
    ``patient_id``, ``study_date`` and ``seed`` only, so two sessions of one
    patient on one day need different seeds.

    Files are named ``<series number>-<instance number>.dcm``, the instance
    number zero-padded to four digits or more. Returns series number → the
    written paths, sorted (which is also InstanceNumber order).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    numbers = [spec.number for spec in series]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"series numbers repeat: {numbers}")
    session = _session(patient_id, patient_name, study_date, seed)
    out_dir = Path(out_dir)
    written = {}
    start = session.start
    for spec in series:
        written[spec.number] = sorted(_write_series(out_dir, session, spec, start, size))
        start += _duration(spec, size)
    return written
