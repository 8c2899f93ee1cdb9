"""The fake XNAT's DICOM import service, AutoRun workflows on import, and dcm2niix on its zips."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import zipfile

import pytest

from fakeutil import cd_export_extras
from xnatfs.fake.dicomgen import SeriesSpec, write_session

IMPORT = "/data/services/import"


@pytest.fixture(scope="module")
def dicom_zip(tmp_path_factory) -> bytes:
    """A zip of a two-series session (localizer and T1w)."""
    folder = tmp_path_factory.mktemp("import")
    written = write_session(
        folder / "dicom",
        patient_id="IMP_MR1",
        patient_name="IMP",
        study_date="20240601",
        series=[SeriesSpec(1, "Localizer", "localizer"), SeriesSpec(2, "T1w_MPRAGE", "t1w")],
    )
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for number, paths in written.items():
            for path in paths:
                archive.write(path, f"series{number}/{path.name}")
    return packed.getvalue()


def post_import(http, server, body: bytes, content_type: str | None = "application/zip", **params):
    headers = {"Content-Type": content_type} if content_type else {}
    query = {"import-handler": "DICOM-zip", "inbody": "true", **params}
    return http.post(server.url + IMPORT, params=query, data=body, headers=headers)


def test_import_files_series_into_scans(fake_xnat, http, dicom_zip):
    answer = post_import(http, fake_xnat, dicom_zip, project="STUDY01", subject="SUB003", session="SUB003_MR9")
    assert answer.status_code == 200, answer.text
    assert answer.text == "/data/archive/projects/STUDY01/subjects/SUB003/experiments/SUB003_MR9\r\n"
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "SUB003_MR9")
    scans = http.get(f"{fake_xnat.url}/data/experiments/{experiment_id}/scans?format=json").json()["ResultSet"][
        "Result"
    ]
    assert [(s["ID"], s["type"], s["series_description"]) for s in scans] == [
        ("1", "Localizer", "Localizer"),
        ("2", "T1w_MPRAGE", "T1w_MPRAGE"),
    ]
    item = http.get(f"{fake_xnat.url}/data/experiments/{experiment_id}?format=json").json()["items"][0]
    assert item["data_fields"]["date"] == "2024-06-01"
    assert item["data_fields"]["UID"].startswith("2.25.")
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData"
    files = http.get(f"{fake_xnat.url}/data/experiments/{experiment_id}/scans/2/resources/DICOM/files?format=json")
    assert len(files.json()["ResultSet"]["Result"]) == 20


def test_import_with_dest_and_routing_from_headers(fake_xnat, http, dicom_zip):
    answer = post_import(http, fake_xnat, dicom_zip, dest="/archive/projects/STUDY02")
    assert answer.status_code == 200, answer.text
    # Without subject and session parameters they come from PatientName and PatientID.
    assert answer.text.strip() == "/data/archive/projects/STUDY02/subjects/IMP/experiments/IMP_MR1"


def test_import_into_existing_session_needs_overwrite(fake_xnat, http, dicom_zip):
    params = dict(project="STUDY01", subject="SUB001", session="SUB001_MR2")
    refused = post_import(http, fake_xnat, dicom_zip, **params)
    assert refused.status_code == 409
    appended = post_import(http, fake_xnat, dicom_zip, overwrite="append", **params)
    assert appended.status_code == 200
    scan_ids = [s["scan_id"] for s in fake_xnat.store.scans("XNAT_E00002")]
    # Scans 1 and 2 already held other series, so the imported ones get suffixed IDs.
    assert scan_ids == ["1", "1-1", "2", "2-1", "4"]
    replaced = post_import(http, fake_xnat, dicom_zip, overwrite="delete", **params)
    assert replaced.status_code == 200
    assert [s["scan_id"] for s in fake_xnat.store.scans("XNAT_E00002")] == ["1", "2"]


def test_import_errors(fake_xnat, http, dicom_zip):
    params = dict(project="STUDY01", subject="SUB001", session="NEW_MR")
    no_type = post_import(http, fake_xnat, dicom_zip, content_type=None, **params)
    assert no_type.status_code == 400 and "Unsupported format" in no_type.text
    assert post_import(http, fake_xnat, b"not a zip", **params).status_code == 400
    damaged = bytearray(dicom_zip)
    damaged[len(damaged) // 2] ^= 0xFF  # fails the entry's CRC check
    assert post_import(http, fake_xnat, bytes(damaged), **params).status_code == 400
    assert post_import(http, fake_xnat, b"", **params).status_code == 400
    assert post_import(http, fake_xnat, dicom_zip, project="NOPE", subject="S", session="E").status_code == 404
    assert post_import(http, fake_xnat, dicom_zip, dest="/prearchive/projects/STUDY01").status_code == 400
    multipart = http.post(
        fake_xnat.url + IMPORT,
        params={"inbody": "true", "project": "STUDY01"},
        files={"file": ("a.zip", dicom_zip, "application/zip")},
    )
    assert multipart.status_code == 406
    assert http.get(fake_xnat.url + IMPORT).status_code == 405


def test_unparsable_entries(fake_xnat, http, dicom_zip):
    mixed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(dicom_zip)) as source, zipfile.ZipFile(mixed, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        for name, data in cd_export_extras():
            target.writestr(name, data)
    params = dict(project="STUDY01", subject="SUB001", session="MIXED_MR")
    # Like XNAT's DICOM-zip importer: without the switch one entry it cannot parse fails the whole zip...
    assert post_import(http, fake_xnat, mixed.getvalue(), **params).status_code == 400
    assert os.listdir(fake_xnat.store.tmp_dir) == []  # the files read before the bad one too
    assert fake_xnat.store.experiment_id("STUDY01", "MIXED_MR") is None
    # ...with it, such entries are skipped,
    skipped = post_import(http, fake_xnat, mixed.getvalue(), **{"Ignore-Unparsable": "true"}, **params)
    assert skipped.status_code == 200
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "MIXED_MR")
    dicom_count = len(zipfile.ZipFile(io.BytesIO(dicom_zip)).namelist())
    assert sum(scan["frames"] for scan in fake_xnat.store.scans(experiment_id)) == dicom_count
    # ...but a zip holding nothing it can parse is still refused.
    nothing = io.BytesIO()
    with zipfile.ZipFile(nothing, "w") as target:
        for name, data in cd_export_extras():
            target.writestr(name, data)
    params["session"] = "EMPTY_MR"
    assert (
        post_import(http, fake_xnat, nothing.getvalue(), **{"Ignore-Unparsable": "true"}, **params).status_code == 400
    )


def test_multipart_import_without_inbody(fake_xnat, http, dicom_zip):
    answer = http.post(
        fake_xnat.url + IMPORT,
        params={"import-handler": "DICOM-zip", "project": "STUDY01", "subject": "SUB002", "session": "SUB002_MR5"},
        files={"file": ("session.zip", dicom_zip, "application/zip")},
    )
    assert answer.status_code == 200, answer.text
    assert fake_xnat.store.experiment_id("STUDY01", "SUB002_MR5") is not None


def test_autorun_workflow_on_import_blocks_rename(fake_xnat, http, dicom_zip):
    fake_xnat.autorun_on_import = True
    assert (
        post_import(http, fake_xnat, dicom_zip, project="STUDY01", subject="SUB003", session="AUTO_MR").status_code
        == 200
    )
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "AUTO_MR")
    workflows = [w for w in fake_xnat.store.workflows() if w["experiment_id"] == experiment_id]
    assert [(w["pipeline_name"], w["status"]) for w in workflows] == [("xnat_tools/AutoRun.xml", "Queued")]
    rename = http.put(
        f"{fake_xnat.url}/data/projects/STUDY01/subjects/SUB003/experiments/AUTO_MR",
        params={"label": "AUTO_MR_B", "xsiType": "xnat:mrSessionData"},
    )
    assert rename.status_code == 409
    fake_xnat.autorun_on_import = False
    assert (
        post_import(http, fake_xnat, dicom_zip, project="STUDY01", subject="SUB003", session="QUIET_MR").status_code
        == 200
    )
    quiet = fake_xnat.store.experiment_id("STUDY01", "QUIET_MR")
    assert not [w for w in fake_xnat.store.workflows() if w["experiment_id"] == quiet]


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_dcm2niix_converts_a_downloaded_scan_zip(fake_xnat, http, tmp_path):
    answer = http.get(f"{fake_xnat.url}/data/experiments/XNAT_E00001/scans/2/resources/DICOM/files?format=zip")
    assert answer.status_code == 200
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        archive.extractall(tmp_path / "dicom")
    out = tmp_path / "nifti"
    out.mkdir()
    # XNAT's zip layout puts files six folders deep; dcm2niix looks five deep unless told.
    result = subprocess.run(
        ["dcm2niix", "-d", "9", "-z", "n", "-f", "%s_%d", "-o", str(out), str(tmp_path / "dicom")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    niftis = list(out.glob("*.nii"))
    assert len(niftis) == 1
    import nibabel

    image = nibabel.load(niftis[0])
    # 20 sagittal slices of 64×64.
    assert sorted(image.shape) == [20, 64, 64]
