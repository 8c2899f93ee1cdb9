"""The sample studies, the store's direct-access API, and the fake-server command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pydicom
import pytest
import requests

from fakeutil import rows
from waiting import wait_until
from xnatfs.fake import FakeXnat, sample
from xnatfs.fake.cli import main
from xnatfs.fake.store import Store, StoreError


def test_small_sample_layout(fake_xnat):
    store = fake_xnat.store
    assert [p["id"] for p in store.projects()] == ["STUDY01", "STUDY02"]
    assert [s["label"] for s in store.subjects_in("STUDY01")] == ["SUB001", "SUB002", "SUB003"]
    assert {s["label"]: s["shared"] for s in store.subjects_in("STUDY02")} == {"SUB101": False, "SUB001": True}
    expected = {
        "SUB001_MR1": ("XNAT_E00001", 5),
        "SUB001_MR2": ("XNAT_E00002", 3),
        "SUB002_MR1": ("XNAT_E00003", 6),
        "SUB003_MR1": ("XNAT_E00004", 4),
    }
    for label, (accession, scan_count) in expected.items():
        assert store.experiment_id("STUDY01", label) == accession
        assert len(store.scans(accession)) == scan_count
    assert store.experiment_id("STUDY02", "SUB001_MR1") == "XNAT_E00001"
    assert store.experiment_id("STUDY02", "SUB101_MR1") == "XNAT_E00005"
    for experiment in store.all_experiments():
        assert experiment["insert_date"] and experiment["date"]
        assert [r["label"] for r in store.resources("experiment", experiment["id"])] == ["QC"]
        for scan in store.scans(experiment["id"]):
            labels = [r["label"] for r in store.resources("scan", str(scan["pk"]))]
            assert labels[0] == "DICOM"
            assert ("SNAPSHOTS" in labels) == (scan["scan_id"] in ("2", "3"))
    assert [r["label"] for r in store.resources("project", "STUDY01")] == ["PROTOCOLS"]


def test_sample_dicom_is_real_and_filed_by_series(fake_xnat):
    store = fake_xnat.store
    scan = store.scan("XNAT_E00001", "4")
    dicom = store.find_resource("scan", str(scan["pk"]), "DICOM")
    files = store.files(dicom["id"])
    assert len(files) == scan["frames"] == 60
    header = pydicom.dcmread(store.file_path(dicom["id"], files[0]["path"]), stop_before_pixels=True)
    assert str(header.SeriesInstanceUID) == scan["uid"]
    assert int(header.SeriesNumber) == 4
    assert header.SeriesDescription == "fMRI_rest"
    assert os.path.getsize(store.file_path(dicom["id"], files[0]["path"])) == files[0]["size"]


def test_sample_is_deterministic(tmp_path, fake_xnat_template):
    again = tmp_path / "again"
    FakeXnat(again, sample="small").close()
    first, second = Store(fake_xnat_template), Store(again)
    try:
        for experiment in first.all_experiments():
            twin = second.experiment(experiment["id"])
            assert twin["label"] == experiment["label"] and twin["uid"] == experiment["uid"]
            for scan in first.scans(experiment["id"]):
                resource = first.find_resource("scan", str(scan["pk"]), "DICOM")
                other = second.find_resource("scan", str(second.scan(experiment["id"], scan["scan_id"])["pk"]), "DICOM")
                assert [(f["path"], f["digest"]) for f in first.files(resource["id"])] == [
                    (f["path"], f["digest"]) for f in second.files(other["id"])
                ]
    finally:
        first.close()
        second.close()


def test_large_sample_structure_scaled_down(tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "BENCH_SUBJECTS", 3)
    monkeypatch.setattr(sample, "BIG_FILE_SIZE", 3 * 1024 * 1024 + 5)
    monkeypatch.setattr(sample, "BIG_FILE_CHUNK", 1024 * 1024)
    # The small study inside "large" is checked by the tests above.
    monkeypatch.setattr(sample, "_fill_small", lambda store, scratch: None)
    # SCALE has a test of its own below.
    monkeypatch.setattr(sample, "_fill_scale", lambda store, scratch: None)
    store = Store(tmp_path / "large")
    try:
        sample.fill_sample(store, "large")
        bench = store.subjects_in("BENCH")
        assert [s["label"] for s in bench] == ["B0001", "B0002", "B0003", "HIRES"]
        sessions = store.experiments_in("BENCH")
        assert len(sessions) == 3 * 2 + 1
        one = store.experiment_id("BENCH", "B0002_MR2")
        counts = [len(store.files(store.find_resource("scan", str(s["pk"]), "DICOM")["id"])) for s in store.scans(one)]
        assert counts == [9, 20, 20, 24, 24, 20]
        first_file = store.files(store.find_resource("scan", str(store.scans(one)[1]["pk"]), "DICOM")["id"])[0]
        path = store.file_path(
            store.find_resource("scan", str(store.scans(one)[1]["pk"]), "DICOM")["id"], first_file["path"]
        )
        assert os.stat(path).st_nlink == 3 * 2
        hires = store.experiment_id("BENCH", "HIRES_MR1")
        t1 = store.find_resource("scan", str(store.scan(hires, "2")["pk"]), "DICOM")
        t1_files = store.files(t1["id"])
        assert len(t1_files) >= 200
        assert 100_000 < t1_files[0]["size"] < 200_000
        raw = store.find_resource("experiment", hires, "RAW")
        big = store.files(raw["id"])
        assert [(f["path"], f["size"]) for f in big] == [("raw_data.bin", 3 * 1024 * 1024 + 5)]
    finally:
        store.close()


def test_scale_project_scaled_down_lists_over_http(tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "SCALE_SUBJECTS", 3)
    monkeypatch.setattr(sample, "DTI_VOLUMES", 2)
    monkeypatch.setattr(sample, "PARALLEL_SERIES", 2)
    store = Store(tmp_path / "scale")
    try:
        store.add_project("OTHER")  # the project filled before SCALE in the large sample
        with tempfile.TemporaryDirectory(dir=store.tmp_dir) as scratch:
            sample._fill_scale(store, Path(scratch))
    finally:
        store.close()
    with FakeXnat(tmp_path / "scale") as server, requests.Session() as http:
        http.auth = ("admin", "admin")
        subjects = rows(http, server, "/data/projects/SCALE/subjects")
        assert sorted(s["label"] for s in subjects) == ["DTI", "PAR", "S00001", "S00002", "S00003"]
        sessions = {s["label"]: s["ID"] for s in rows(http, server, "/data/projects/SCALE/experiments")}
        walked = [f"S0000{n}_MR{v}" for n in (1, 2, 3) for v in (1, 2)]
        assert sorted(sessions) == sorted(["DTI_MR1", "PAR_MR1", "PAR_MR2", *walked])
        listed = [rows(http, server, f"/data/experiments/{sessions[label]}/files", all="true") for label in walked]
        assert all([f["Name"] for f in files] == [f["Name"] for f in listed[0]] for files in listed)
        assert len(listed[0]) == 9
        linked = server.store.file_path(
            server.store.find_resource("scan", str(server.store.scan(sessions["S00003_MR2"], "1")["pk"]), "DICOM")[
                "id"
            ],
            listed[0][0]["Name"],
        )
        assert os.stat(linked).st_nlink == len(walked)
        dti = rows(http, server, f"/data/experiments/{sessions['DTI_MR1']}/scans/1/resources/DICOM/files")
        assert len(dti) == 2 * 50
        header = pydicom.dcmread(
            server.store.file_path(
                server.store.find_resource("scan", str(server.store.scan(sessions["DTI_MR1"], "1")["pk"]), "DICOM")[
                    "id"
                ],
                dti[0]["Name"],
            ),
            stop_before_pixels=True,
        )
        assert (header.Rows, header.Columns) == (96, 96)
        par = [rows(http, server, f"/data/experiments/{sessions[f'PAR_MR{n}']}/scans/2/files") for n in (1, 2)]
        assert [len(files) for files in par] == [208, 208]
        assert {f["digest"] for f in par[0]}.isdisjoint(f["digest"] for f in par[1])


def test_unknown_sample_size_is_refused(tmp_path):
    with pytest.raises(ValueError):
        FakeXnat(tmp_path / "d", sample="medium")


def test_store_refuses_unsafe_paths_and_conflicts(fake_xnat):
    store = fake_xnat.store
    for bad in ("../x", "a/../../b", "", "a\x00b", "a\\b"):
        with pytest.raises(StoreError):
            store.put_file("XNAT_E00001", "QC", bad, b"x")
    store.put_file("XNAT_E00001", "QC", "folder/file.txt", b"x")
    with pytest.raises(StoreError):
        store.put_file("XNAT_E00001", "QC", "folder", b"x")
    with pytest.raises(StoreError):
        store.put_file("XNAT_E00001", "QC", "folder/file.txt/deeper", b"x")
    with pytest.raises(StoreError) as missing:
        store.put_file("XNAT_E09999", "QC", "a.txt", b"x")
    assert missing.value.status == 404
    with pytest.raises(StoreError) as taken:
        store.rename_subject("XNAT_S00001", "SUB002")
    assert taken.value.status == 409


def test_cli_serves_until_sigterm(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xnatfs.fake",
            "--data",
            str(tmp_path / "d"),
            "--latency-ms",
            "1",
            "--user",
            "alice:secret",
            "--user",
            "bob:pw",
            "--readonly-user",
            "bob",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        answer = requests.get(url + "/data/projects?format=json", auth=("alice", "secret"), timeout=10)
        assert answer.json()["ResultSet"]["Result"] == []
        assert requests.put(url + "/data/projects/P1", auth=("bob", "pw"), timeout=10).status_code == 403
        assert requests.put(url + "/data/projects/P1", auth=("alice", "secret"), timeout=10).status_code == 201
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_main_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--data", "/tmp/unused", "--error-rate", "2"])
    assert exited.value.code == 2
    assert "fraction" in capsys.readouterr().err


def test_cli_main_stops_on_sigint(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)

    def interrupt_soon():
        wait_until(lambda: signal.getsignal(signal.SIGINT) is not before, "the server to take over SIGINT")
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=interrupt_soon)
    timer.start()
    code = main(["--data", str(tmp_path / "d"), "--error-rate", "0.1", "--seed", "3"])
    timer.join()
    assert code == 0
    assert capsys.readouterr().out.startswith("http://127.0.0.1:")
