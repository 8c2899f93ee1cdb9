"""Dataset-level files: exact, deterministic bytes from the listing records."""

import csv
import io
import json

from xnatfs.bids.dataset import (
    Demographics,
    ParticipantRow,
    SessionRow,
    acq_time,
    dataset_description,
    participants_json,
    participants_tsv,
    readme,
    scans_tsv,
    sessions_tsv,
)
from xnatfs.bids.plan import plan_session
from xnatfs.client.models import Experiment, Project, Scan, Subject

SERVER = "https://user:secret@xnat.example.org/"
PROJECT = Project("STUDY01", name="Study one", description="Two\tlines\nof text", uri="/data/projects/STUDY01")


def rows(data: bytes):
    return list(csv.reader(io.StringIO(data.decode("utf-8")), delimiter="\t"))


def test_dataset_description_fields():
    description = json.loads(
        dataset_description(PROJECT, server_url=SERVER, xnatfs_version="0.1.0", converter_version="v1.0.20240202")
    )
    assert description["Name"] == "Study one"
    assert description["BIDSVersion"] == "1.9.0"
    assert description["DatasetType"] == "raw"
    assert [(entry["Name"], entry["Version"]) for entry in description["GeneratedBy"]] == [
        ("xnatfs", "0.1.0"),
        ("dcm2niix", "v1.0.20240202"),
    ]
    assert description["SourceDatasets"] == [{"URL": "https://xnat.example.org/data/projects/STUDY01"}]


def test_dataset_description_falls_back_to_the_project_id_and_never_holds_credentials():
    data = dataset_description(Project("P2"), server_url=SERVER, xnatfs_version="1", converter_version="2")
    assert json.loads(data)["Name"] == "P2"
    assert b"secret" not in data and data.endswith(b"}\n")


def test_readme_names_the_source_without_credentials():
    text = readme(PROJECT, server_url=SERVER).decode()
    assert "https://xnat.example.org/data/projects/STUDY01" in text and "secret" not in text
    assert "bids-check" in text and "Two lines of text" in text


def test_participants_tsv_and_json():
    data = participants_tsv(
        [
            ParticipantRow("SUB002", Subject("XNAT_S2", "SUB_002", "STUDY01"), Demographics("female", 31.5)),
            ParticipantRow("SUB001", Subject("XNAT_S1", "SUB_001", "STUDY01"), Demographics("M", 40)),
            ParticipantRow("SUB003", Subject("XNAT_S3", "SUB\t003", "STUDY01")),
        ]
    )
    assert rows(data) == [
        ["participant_id", "xnat_label", "xnat_accession", "sex", "age"],
        ["sub-SUB001", "SUB_001", "XNAT_S1", "M", "40"],
        ["sub-SUB002", "SUB_002", "XNAT_S2", "F", "31.5"],
        ["sub-SUB003", "SUB 003", "XNAT_S3", "n/a", "n/a"],
    ]
    described = json.loads(participants_json())
    assert list(described) == rows(data)[0]
    assert described["sex"]["Levels"] == {"M": "male", "F": "female", "O": "other"}


def test_sessions_tsv():
    data = sessions_tsv(
        [
            SessionRow("MR2", Experiment("XNAT_E2", "SUB001_MR2", "STUDY01", date="2024-03-02"), time="14:05"),
            SessionRow("MR1", Experiment("XNAT_E1", "SUB001_MR1", "STUDY01", date="2024-01-15")),
            SessionRow("MR3", Experiment("XNAT_E3", "SUB001_MR3", "STUDY01")),
        ]
    )
    assert rows(data) == [
        ["session_id", "acq_time", "xnat_label", "xnat_accession"],
        ["ses-MR1", "2024-01-15T00:00:00", "SUB001_MR1", "XNAT_E1"],
        ["ses-MR2", "2024-03-02T14:05:00", "SUB001_MR2", "XNAT_E2"],
        ["ses-MR3", "n/a", "SUB001_MR3", "XNAT_E3"],
    ]


def test_acq_time_formats():
    assert acq_time("2024-01-15", "09:10:11") == "2024-01-15T09:10:11"
    assert acq_time("", "09:10:11") == "n/a"


def _plan():
    scans = [
        Scan("2", series_description="t1_mprage", uri="/data/experiments/XNAT_E1/scans/2"),
        Scan("4", series_description="ep2d_bold_rest", uri="/data/experiments/XNAT_E1/scans/4"),
        Scan("1", series_description="localizer", uri="/data/experiments/XNAT_E1/scans/1"),
    ]
    return plan_session("SUB001", "MR1", scans)


def test_scans_tsv_lists_the_planned_files_with_their_source():
    data = scans_tsv(_plan(), server_url=SERVER, session_date="2024-01-15", acquisition_times={"4": "10:11:12.502500"})
    assert rows(data) == [
        ["filename", "acq_time", "xnat_scan_id", "xnat_uri"],
        ["anat/sub-SUB001_ses-MR1_T1w.nii.gz", "n/a", "2", "https://xnat.example.org/data/experiments/XNAT_E1/scans/2"],
        [
            "func/sub-SUB001_ses-MR1_task-rest_bold.nii.gz",
            "2024-01-15T10:11:12",
            "4",
            "https://xnat.example.org/data/experiments/XNAT_E1/scans/4",
        ],
    ]


def test_scans_tsv_uses_the_converted_file_names_when_given():
    data = scans_tsv(
        _plan(),
        server_url=SERVER,
        files={
            "4": [
                "func/sub-SUB001_ses-MR1_task-rest_echo-1_bold.nii",
                "func/sub-SUB001_ses-MR1_task-rest_echo-2_bold.nii",
            ]
        },
    )
    assert [row[0] for row in rows(data)[1:]] == [
        "anat/sub-SUB001_ses-MR1_T1w.nii.gz",
        "func/sub-SUB001_ses-MR1_task-rest_echo-1_bold.nii",
        "func/sub-SUB001_ses-MR1_task-rest_echo-2_bold.nii",
    ]


def test_same_inputs_same_bytes():
    first = scans_tsv(_plan(), server_url=SERVER, session_date="2024-01-15")
    assert scans_tsv(_plan(), server_url=SERVER, session_date="2024-01-15") == first
    assert first.endswith(b"\n") and b"\r" not in first
