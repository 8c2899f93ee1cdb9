"""Sample studies for the fake XNAT: ``fill_sample(store, "small" | "bids" | "large")``.

Everything is deterministic: the same size gives the same labels,
accession IDs, dates and file bytes.

**small** (tests, the demo; fills in about a second, about 8 MB)::

    STUDY01  "Sample study one"   PI Ada Lovelace
      RESOURCES/PROTOCOLS         protocol.txt, acquisition_protocol.pdf
      SUB001  XNAT_S00001         subject resource NOTES: notes.txt
        SUB001_MR1  XNAT_E00001   2024-01-05   scans 1-5
        SUB001_MR2  XNAT_E00002   2024-03-08   scans 1, 2, 4
      SUB002  XNAT_S00002
        SUB002_MR1  XNAT_E00003   2024-01-12   scans 1-6 (6 is "T1w_MPRAGE repeat",
                                               quality "questionable")
      SUB003  XNAT_S00003
        SUB003_MR1  XNAT_E00004   2024-01-19   scans 1-4
    STUDY02  "Sample study two"
      SUB101  XNAT_S00004
        SUB101_MR1  XNAT_E00005   2024-02-02   scans 1-3
      SUB001 (shared from STUDY01, same label)
        SUB001_MR1 (shared from STUDY01, same label)

Scans, by number (type = series description): 1 ``Localizer`` (9 files),
2 ``T1w_MPRAGE`` (20), 3 ``T2w_SPC`` (20), 4 ``fMRI_rest`` (60), 5 ``DWI_dir6``
(84), 6 ``T1w_MPRAGE repeat`` (20). Every scan has a ``DICOM`` resource
(format DICOM, content RAW) of real 64×64 MR DICOM files named
``<series>-<instance>.dcm``. Scans 2 and 3 also have ``SNAPSHOTS``
(format PNG): ``<scan>_qc.png`` and ``<scan>_qc_t.png``, pictures of the
middle slice. Every session has a session resource ``QC`` with
``qc_report.pdf`` and ``qc_metrics.csv``.

**bids** (tests of the BIDS view; about 2 s, 3 MB) is one project only, made
so that every kind of series a BIDS dataset has is there and converts::

    BIDS01   "BIDS sample study"
      P01                         (XNAT_S00001 in "bids")
        P01_MR1                   2024-06-10   scans 1-9
        P01_MR2                   2024-09-12   scans 1-8

    scan  series description      kind       files  in
    1     Localizer               localizer  9      MR1, MR2   (3 planes: left out of BIDS)
    2     T1w_MPRAGE              t1w        20     MR1, MR2
    3     T2w_SPC                 t2w        20     MR1, MR2
    4     fmap-epi_dir-AP         epi        12     MR1, MR2   (ReproIn name; PE "j-")
    5     fmap-epi_dir-PA         epi        12     MR1, MR2   (ReproIn name; PE "j")
    6     func-bold_task-nback    bold ×3    36     MR1        (ReproIn name)
    6     fMRI_rest               bold ×3    36     MR2
    7     fMRI_rest               bold ×3    36     MR1        (run-1 of two)
    7     DWI_dir3                dwi ×4     48     MR2
    8     fMRI_rest               bold ×3    36     MR1        (the repeat: run-2)
    8     T1w_MPRAGE              t1w        20     MR2        (quality "unusable")
    9     DWI_dir3                dwi ×4     48     MR1

(×N: volumes; the dwi series has one b=0 and three b=1000 directions.) The
BOLD series have a RepetitionTime of 2 s, the field maps are spin-echo EPI
whose CSA header gives dcm2niix the phase-encoding polarity and readout time.
Every scan has a DICOM resource, scans 2 and 3 SNAPSHOTS too, as in the small
study; there are no session resources. Scan 3 of P01_MR2 also has a NIFTI
resource (format NIFTI), as a site's dcm2niix container adds:
``3_T2w_SPC.nii.gz`` and ``3_T2w_SPC.json``, made with the dcm2niix wheel.

**large** (benchmarks; about a minute and 1.4 GB on disk) is the small study, the
bids project (accession IDs following the small study's: P01 XNAT_S00005,
P01_MR1 XNAT_E00006, P01_MR2 XNAT_E00007), plus::

    BENCH    "Benchmark project"
      B0001 .. B0500               500 subjects, accession IDs in that order
        B0001_MR1, B0001_MR2 ...   2 sessions each, scans 1-6, DICOM resources whose
                                   files are hard links to one generated session
                                   (scans 1 Localizer 9 files, 2 T1w 20, 3 T2w 20,
                                   4 fMRI 24, 5 DWI 24, 6 T1w repeat 20: 117 files)
      HIRES
        HIRES_MR1                  scan 1 Localizer (small), scan 2 T1w_MPRAGE: 208 files of
                                   256×256 (about 130 KB each); session resource RAW
                                   holding raw_data.bin, 1 GiB of pseudo-random bytes
    SCALE    "Scale project"       (costs as the work grows; accession IDs after HIRES)
      DTI
        DTI_MR1                    scan 1 DWI_dir95: 4 800 files (50 slices of 96×96 × 96
                                   volumes, about 20 KB each, 96 MB)
      PAR
        PAR_MR1 .. PAR_MR8         scan 2 T1w_MPRAGE: 208 files of 256×256 each, every
                                   series generated on its own (different bytes)
      S00001 .. S05000             5 000 subjects, 2 sessions each (10 000), each session
        S00001_MR1, S00001_MR2 ... scan 1 Localizer of 9 files, hard links to one
                                   generated series

The SCALE subjects and sessions are listed and filed in a few seconds; most of
its minute goes to generating the DTI and T1w series.
"""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import dcm2niix
import numpy as np
import pydicom

from .dicomgen import SeriesSpec, write_session
from .store import Store, file_md5, required

logger = logging.getLogger(__name__)

SIZES = ("small", "bids", "large")

ALL_SERIES = {
    1: ("Localizer", "localizer"),
    2: ("T1w_MPRAGE", "t1w"),
    3: ("T2w_SPC", "t2w"),
    4: ("fMRI_rest", "bold"),
    5: ("DWI_dir6", "dwi"),
    6: ("T1w_MPRAGE repeat", "t1w"),
}
SNAPSHOT_SCANS = (2, 3)

# (project, subject, session, date, scans, insert date)
SMALL_SESSIONS = (
    ("STUDY01", "SUB001", "SUB001_MR1", "20240105", (1, 2, 3, 4, 5), "2024-01-05 17:02:11.123"),
    ("STUDY01", "SUB001", "SUB001_MR2", "20240308", (1, 2, 4), "2024-03-08 16:40:02.456"),
    ("STUDY01", "SUB002", "SUB002_MR1", "20240112", (1, 2, 3, 4, 5, 6), "2024-01-12 18:12:45.789"),
    ("STUDY01", "SUB003", "SUB003_MR1", "20240119", (1, 2, 3, 4), "2024-01-19 15:30:00.001"),
    ("STUDY02", "SUB101", "SUB101_MR1", "20240202", (1, 2, 3), "2024-02-02 11:11:11.111"),
)
QUESTIONABLE = {("SUB002_MR1", 6)}

BIDS_PROJECT = "BIDS01"
BIDS_SUBJECT = "P01"
_FMAPS = (
    SeriesSpec(4, "fmap-epi_dir-AP", "epi", phase_encoding="AP"),
    SeriesSpec(5, "fmap-epi_dir-PA", "epi", phase_encoding="PA"),
)
_ANATOMY = (
    SeriesSpec(1, "Localizer", "localizer"),
    SeriesSpec(2, "T1w_MPRAGE", "t1w"),
    SeriesSpec(3, "T2w_SPC", "t2w"),
)
BOLD_VOLUMES = 3
DWI_VOLUMES = 4
# (session, date, series, insert date)
BIDS_SESSIONS = (
    (
        "P01_MR1",
        "20240610",
        _ANATOMY
        + _FMAPS
        + (
            SeriesSpec(6, "func-bold_task-nback", "bold", BOLD_VOLUMES),
            SeriesSpec(7, "fMRI_rest", "bold", BOLD_VOLUMES),
            SeriesSpec(8, "fMRI_rest", "bold", BOLD_VOLUMES),
            SeriesSpec(9, "DWI_dir3", "dwi", DWI_VOLUMES),
        ),
        "2024-06-10 14:00:00.000",
    ),
    (
        "P01_MR2",
        "20240912",
        _ANATOMY
        + _FMAPS
        + (
            SeriesSpec(6, "fMRI_rest", "bold", BOLD_VOLUMES),
            SeriesSpec(7, "DWI_dir3", "dwi", DWI_VOLUMES),
            SeriesSpec(8, "T1w_MPRAGE", "t1w"),
        ),
        "2024-09-12 14:00:00.000",
    ),
)
BIDS_UNUSABLE = {("P01_MR2", 8)}
# Scans that also hold a NIFTI resource, as XNAT's dcm2niix container adds.
BIDS_SERVER_NIFTI = {("P01_MR2", 3)}

BENCH_SUBJECTS = 500
BENCH_SESSIONS_PER_SUBJECT = 2
BIG_FILE_SIZE = 1024**3
BIG_FILE_CHUNK = 16 * 1024 * 1024

SCALE_PROJECT = "SCALE"
SCALE_SUBJECTS = 5000
SCALE_SESSIONS_PER_SUBJECT = 2
# A diffusion series of a real size: 50 slices of 96×96 × 96 volumes (b=0 and 95 directions).
DTI_VOLUMES = 96
PARALLEL_SERIES = 8


def fill_sample(store: Store, size: str = "small") -> None:
    """Fill an empty store with the sample study of the given size."""
    if size not in SIZES:
        raise ValueError(f"unknown sample size {size!r}; expected one of {SIZES}")
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as scratch:
        scratch_dir = Path(scratch)
        if size != "bids":
            _fill_small(store, scratch_dir)
        if size != "small":
            _fill_bids(store, scratch_dir)
        if size == "large":
            _fill_bench(store, scratch_dir)
            _fill_hires(store, scratch_dir)
            _fill_scale(store, scratch_dir)
    logger.info("sample study %r written to %s", size, store.data_dir)


# ---- small --------------------------------------------------------------


def _fill_small(store: Store, scratch: Path) -> None:
    store.add_project(
        "STUDY01", name="Sample study one", description="Sample MR study", pi_firstname="Ada", pi_lastname="Lovelace"
    )
    store.add_project("STUDY02", name="Sample study two", description="Second sample study")
    protocols = store.ensure_resource("project", "STUDY01", "PROTOCOLS", format="MISC")
    store.store_file(protocols, "protocol.txt", b"T1w MPRAGE 1 mm iso; T2w SPC; rs-fMRI; DWI 6 dirs\n")
    store.store_file(
        protocols, "acquisition_protocol.pdf", pdf_bytes(["Acquisition protocol", "STUDY01: MR sessions at 3 T"])
    )
    for index, (project, subject, session, date, scans, inserted) in enumerate(SMALL_SESSIONS):
        store.add_subject(project, subject, insert_date=inserted)
        specs = [SeriesSpec(n, *ALL_SERIES[n]) for n in scans]
        quality = {number: "questionable" for s, number in QUESTIONABLE if s == session}
        experiment_id = _add_session(
            store, scratch, project, subject, session, date, specs, inserted, seed=index, quality=quality
        )
        qc = store.ensure_resource("experiment", experiment_id, "QC", format="MISC")
        store.store_file(qc, "qc_report.pdf", pdf_bytes([f"QC report {session}", "All scans usable."]))
        store.store_file(qc, "qc_metrics.csv", _metrics_csv(scans))
    sub001 = required(store.subject_id("STUDY01", "SUB001"), "Subject")
    notes = store.ensure_resource("subject", sub001, "NOTES")
    store.store_file(notes, "notes.txt", b"Participant SUB001: no incidental findings.\n")
    store.share_subject(sub001, "STUDY02")
    store.share_experiment(required(store.experiment_id("STUDY01", "SUB001_MR1"), "Experiment"), "STUDY02")


def _fill_bids(store: Store, scratch: Path) -> None:
    store.add_project(BIDS_PROJECT, name="BIDS sample study", description="Every kind of series a BIDS dataset holds")
    for index, (session, date, specs, inserted) in enumerate(BIDS_SESSIONS):
        store.add_subject(BIDS_PROJECT, BIDS_SUBJECT, insert_date=inserted)
        quality = {number: "unusable" for s, number in BIDS_UNUSABLE if s == session}
        experiment_id = _add_session(
            store,
            scratch,
            BIDS_PROJECT,
            BIDS_SUBJECT,
            session,
            date,
            list(specs),
            inserted,
            seed=100 + index,
            quality=quality,
        )
        for number in sorted(n for s, n in BIDS_SERVER_NIFTI if s == session):
            _add_server_nifti(store, scratch / f"{session}-nifti-{number}", experiment_id, number)


def _add_server_nifti(store: Store, scratch: Path, experiment_id: str, number: int) -> None:
    """A NIFTI resource beside the scan's DICOM, converted as a site's dcm2niix container does."""
    pk = required(store.scan(experiment_id, str(number)), "Scan")["pk"]
    dicom = required(store.find_resource("scan", str(pk), "DICOM"), "Resource")
    source = store.file_path(dicom["id"], store.files(dicom["id"])[0]["path"]).parent
    scratch.mkdir()
    # The wheel's binary; -z i compresses without pigz, so the bytes do not depend on the machine.
    subprocess.run(
        [dcm2niix.bin, "-z", "i", "-b", "y", "-ba", "y", "-f", "%s_%d", "-o", str(scratch), str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    nifti = store.ensure_resource("scan", str(pk), "NIFTI", format="NIFTI", content="NIFTI_RAW")
    for path in sorted(scratch.iterdir()):
        store.store_file(nifti, path.name, path, move=True, format="NIFTI", content="NIFTI_RAW")


def _add_session(
    store: Store,
    scratch: Path,
    project: str,
    subject: str,
    session: str,
    date: str,
    specs: list[SeriesSpec],
    inserted: str,
    seed: int,
    quality: dict[int, str],
) -> str:
    """Write and file one session; ``quality`` overrides "usable" by series number."""
    written = write_session(
        scratch / session,
        patient_id=session,
        patient_name=subject,
        study_date=date,
        series=specs,
        size="small",
        seed=seed,
    )
    first = pydicom.dcmread(written[specs[0].number][0], stop_before_pixels=True)
    experiment_id = store.add_experiment(
        project,
        subject,
        session,
        date=f"{date[:4]}-{date[4:6]}-{date[6:]}",
        time_of_day=_clock(str(first.get("StudyTime", ""))),
        uid=str(first.StudyInstanceUID),
        insert_date=inserted,
        fields=_session_fields(first),
    )
    for spec in specs:
        number = spec.number
        files = written[number]
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        pk = store.add_scan(
            experiment_id,
            str(number),
            type=spec.description,
            series_description=spec.description,
            quality=quality.get(number, "usable"),
            uid=str(header.SeriesInstanceUID),
            frames=len(files),
            fields=_scan_fields(header),
        )
        dicom = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
        for path in files:
            store.store_file(dicom, path.name, path, move=True, format="DICOM", content="RAW")
        if number in SNAPSHOT_SCANS:
            _add_snapshots(store, pk, number, files[len(files) // 2], experiment_id)
    return experiment_id


def _add_snapshots(store: Store, scan_pk: int, number: int, middle: Path, experiment_id: str) -> None:
    dicom = required(store.find_resource("scan", str(scan_pk), "DICOM"), "Resource")
    pixels = store.file_path(dicom["id"], middle.name)
    image = pydicom.dcmread(pixels).pixel_array.astype(np.float32)
    scaled = (255 * (image - image.min()) / max(float(np.ptp(image)), 1.0)).astype(np.uint8)
    snapshots = store.ensure_resource("scan", str(scan_pk), "SNAPSHOTS", format="PNG", content="SNAPSHOTS")
    store.store_file(snapshots, f"{number}_qc.png", png_bytes(scaled), content="ORIGINAL")
    store.store_file(snapshots, f"{number}_qc_t.png", png_bytes(scaled[::4, ::4]), content="THUMBNAIL")


def _session_fields(header) -> dict[str, str]:
    fields = {
        "modality": "MR",
        "dcmPatientId": str(header.get("PatientID", "")),
        "dcmPatientName": str(header.get("PatientName", "")),
        "scanner/manufacturer": str(header.get("Manufacturer", "")),
        "scanner/model": str(header.get("ManufacturerModelName", "")),
        "fieldStrength": str(header.get("MagneticFieldStrength", "")),
        "session_type": "MR",
    }
    return {k: v for k, v in fields.items() if v}


def _scan_fields(header) -> dict:
    fields: dict = {}
    for key, tag in (
        ("parameters/tr", "RepetitionTime"),
        ("parameters/te", "EchoTime"),
        ("parameters/flip", "FlipAngle"),
    ):
        if header.get(tag) is not None:
            fields[key] = float(header.get(tag))
    image_type = header.get("ImageType")
    if image_type:
        fields["parameters/imageType"] = "\\".join(image_type)
    for key, tag in (("scanner/manufacturer", "Manufacturer"), ("scanner/model", "ManufacturerModelName")):
        if header.get(tag):
            fields[key] = str(header.get(tag))
    return fields


def _clock(value: str) -> str:
    return f"{value[:2]}:{value[2:4]}:{value[4:6]}" if len(value) >= 6 else ""


def _metrics_csv(scans) -> bytes:
    lines = ["scan,snr,motion_mm"]
    lines += [f"{n},{20 + 3 * n:.1f},{0.1 * n:.2f}" for n in scans]
    return ("\n".join(lines) + "\n").encode()


# ---- large ----------------------------------------------------------------


def _fill_bench(store: Store, scratch: Path) -> None:
    store.add_project("BENCH", name="Benchmark project", description="Many subjects, hard-linked files")
    specs = [
        SeriesSpec(n, description, kind, 2 if kind in ("bold", "dwi") else None)
        for n, (description, kind) in ALL_SERIES.items()
    ]
    written = write_session(
        scratch / "bench",
        patient_id="BENCH",
        patient_name="BENCH",
        study_date="20230601",
        series=specs,
        size="small",
        seed=99,
    )
    first = pydicom.dcmread(written[1][0], stop_before_pixels=True)
    templates = {number: [(p, p.stat().st_size, file_md5(p)) for p in paths] for number, paths in written.items()}
    uids = {
        number: str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        for number, paths in written.items()
    }
    with store.batch():
        for s in range(1, BENCH_SUBJECTS + 1):
            subject = f"B{s:04d}"
            store.add_subject("BENCH", subject, insert_date="2023-06-01 09:00:00.000")
            for v in range(1, BENCH_SESSIONS_PER_SUBJECT + 1):
                experiment_id = store.add_experiment(
                    "BENCH",
                    subject,
                    f"{subject}_MR{v}",
                    date=f"2023-{5 + v:02d}-{1 + s % 28:02d}",
                    uid=str(first.StudyInstanceUID) + f".{s}.{v}",
                    insert_date="2023-06-01 09:00:00.000",
                    fields=_session_fields(first),
                )
                for number, files in templates.items():
                    pk = store.add_scan(
                        experiment_id,
                        str(number),
                        type=ALL_SERIES[number][0],
                        series_description=ALL_SERIES[number][0],
                        uid=uids[number],
                        frames=len(files),
                    )
                    dicom = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
                    for path, size, digest in files:
                        store.link_file(dicom, path.name, path, size=size, digest=digest, format="DICOM", content="RAW")
    # The links keep the bytes alive; the generated originals are not needed.
    shutil.rmtree(scratch / "bench")


def _fill_hires(store: Store, scratch: Path) -> None:
    specs = [SeriesSpec(1, "Localizer", "localizer"), SeriesSpec(2, "T1w_MPRAGE", "t1w")]
    written = write_session(
        scratch / "hires_small",
        patient_id="HIRES_MR1",
        patient_name="HIRES",
        study_date="20230701",
        series=specs[:1],
        size="small",
        seed=7,
    )
    large = write_session(
        scratch / "hires_large",
        patient_id="HIRES_MR1",
        patient_name="HIRES",
        study_date="20230701",
        series=specs[1:],
        size="large",
        seed=7,
    )
    first = pydicom.dcmread(large[2][0], stop_before_pixels=True)
    experiment_id = store.add_experiment(
        "BENCH",
        "HIRES",
        "HIRES_MR1",
        date="2023-07-01",
        uid=str(first.StudyInstanceUID),
        insert_date="2023-07-01 12:00:00.000",
        fields=_session_fields(first),
    )
    for number, files in ((1, written[1]), (2, large[2])):
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        pk = store.add_scan(
            experiment_id,
            str(number),
            type=specs[number - 1].description,
            series_description=specs[number - 1].description,
            uid=str(header.SeriesInstanceUID),
            frames=len(files),
            fields=_scan_fields(header),
        )
        dicom = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
        for path in files:
            store.store_file(dicom, path.name, path, move=True, format="DICOM", content="RAW")
    raw = store.ensure_resource("experiment", experiment_id, "RAW", format="BIN")
    big = scratch / "raw_data.bin"
    _write_pseudo_random(big, BIG_FILE_SIZE, seed=2023)
    store.store_file(raw, "raw_data.bin", big, move=True)


def _write_pseudo_random(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            step = min(left, BIG_FILE_CHUNK)
            out.write(rng.bytes(step))
            left -= step


def _fill_scale(store: Store, scratch: Path) -> None:
    """Project SCALE: many cheap sessions for walks, one DTI-sized series, series for parallel readers."""
    store.add_project(SCALE_PROJECT, name="Scale project", description="Costs as the archive and the series grow")
    _add_scale_sessions(store, scratch)
    _add_single_series(
        store, scratch, "DTI", "DTI_MR1", SeriesSpec(1, f"DWI_dir{DTI_VOLUMES - 1}", "dwi", DTI_VOLUMES), seed=11
    )
    for index in range(1, PARALLEL_SERIES + 1):
        _add_single_series(store, scratch, "PAR", f"PAR_MR{index}", SeriesSpec(2, "T1w_MPRAGE", "t1w"), seed=20 + index)


def _add_scale_sessions(store: Store, scratch: Path) -> None:
    """S00001 .. S0NNNN, each session one localizer whose files are hard links to one generated series."""
    written = write_session(
        scratch / "scale",
        patient_id="SCALE",
        patient_name="SCALE",
        study_date="20230801",
        series=[SeriesSpec(1, "Localizer", "localizer")],
        size="small",
        seed=31,
    )
    header = pydicom.dcmread(written[1][0], stop_before_pixels=True)
    files = [(path, path.stat().st_size, file_md5(path)) for path in written[1]]
    with store.batch():
        for s in range(1, SCALE_SUBJECTS + 1):
            subject = f"S{s:05d}"
            store.add_subject(SCALE_PROJECT, subject, insert_date="2023-08-01 09:00:00.000")
            for v in range(1, SCALE_SESSIONS_PER_SUBJECT + 1):
                experiment_id = store.add_experiment(
                    SCALE_PROJECT,
                    subject,
                    f"{subject}_MR{v}",
                    date=f"2023-{7 + v:02d}-{1 + s % 28:02d}",
                    uid=str(header.StudyInstanceUID) + f".{s}.{v}",
                    insert_date="2023-08-01 09:00:00.000",
                    fields=_session_fields(header),
                )
                pk = store.add_scan(
                    experiment_id,
                    "1",
                    type="Localizer",
                    series_description="Localizer",
                    uid=str(header.SeriesInstanceUID),
                    frames=len(files),
                )
                dicom = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
                for path, size, digest in files:
                    store.link_file(dicom, path.name, path, size=size, digest=digest, format="DICOM", content="RAW")
    shutil.rmtree(scratch / "scale")


def _add_single_series(store: Store, scratch: Path, subject: str, session: str, spec: SeriesSpec, seed: int) -> None:
    """A session of one generated large series (files of their own, not links)."""
    written = write_session(
        scratch / session,
        patient_id=session,
        patient_name=subject,
        study_date="20230801",
        series=[spec],
        size="large",
        seed=seed,
    )
    files = written[spec.number]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    experiment_id = store.add_experiment(
        SCALE_PROJECT,
        subject,
        session,
        date="2023-08-01",
        uid=str(header.StudyInstanceUID),
        insert_date="2023-08-01 12:00:00.000",
        fields=_session_fields(header),
    )
    pk = store.add_scan(
        experiment_id,
        str(spec.number),
        type=spec.description,
        series_description=spec.description,
        uid=str(header.SeriesInstanceUID),
        frames=len(files),
        fields=_scan_fields(header),
    )
    dicom = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
    with store.batch():
        for path in files:
            store.store_file(dicom, path.name, path, move=True, format="DICOM", content="RAW")


# ---- small real files ---------------------------------------------------


def png_bytes(gray: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array."""
    height, width = gray.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(gray, dtype=np.uint8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def pdf_bytes(lines: list[str]) -> bytes:
    """A one-page PDF showing ``lines`` of plain ASCII text."""
    text_ops = ["BT", "/F1 14 Tf", "72 720 Td", "18 TL"]
    for line in lines:
        safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        text_ops.append(f"({safe}) Tj T*")
    text_ops.append("ET")
    stream = "\n".join(text_ops).encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
