"""datman's API (``datman.xnat``) against the fake XNAT's small sample study."""

import os
import zipfile

import pytest
import requests

from fakeutil import cd_export_extras
from xnatfs.client import (
    ClientConfig,
    XnatConnection,
    XnatException,
    XNATExperiment,
    XnatNotFound,
    XNATScan,
    XNATSubject,
    get_connection,
    xnat,
)

NAMING = {
    "LOC": {"SeriesDescription": "localizer"},
    "T1": {"SeriesDescription": ["T1w", "MPRAGE"]},
    "T2": {"SeriesDescription": "T2w"},
    "RST": {"SeriesDescription": "rest"},
}


@pytest.fixture
def conn(fake_xnat):
    with xnat(fake_xnat.url, fake_xnat.username, fake_xnat.password) as connection:
        yield connection


def no_partial_files(folder):
    return not [name for name in os.listdir(folder) if name.endswith(".part")]


# -- projects, subjects, experiments, scans --------------------------------------


def test_projects(conn):
    assert {row["ID"] for row in conn.get_projects()} == {"STUDY01", "STUDY02"}
    (item,) = conn.get_projects("STUDY01")
    assert item["data_fields"]["ID"] == "STUDY01"
    assert conn.get_projects("NOPE") == []


def test_find_project_and_subject(conn):
    assert conn.find_project("SUB101") == "STUDY02"
    assert conn.find_project("SUB002", projects=["STUDY02", "STUDY01"]) == "STUDY01"
    assert conn.find_project("NOBODY") is None
    assert conn.find_subject("STUDY01", "SUB002_MR1") == "XNAT_S00002"


def test_subject_ids_and_subjects(conn):
    assert sorted(conn.get_subject_ids("STUDY01")) == ["SUB001", "SUB002", "SUB003"]
    with pytest.raises(XnatException):
        conn.get_subject_ids("NOPE")
    subject = conn.get_subject("STUDY01", "SUB001")
    assert isinstance(subject, XNATSubject)
    assert (subject.name, subject.project, subject.id) == ("SUB001", "STUDY01", "XNAT_S00001")
    assert set(subject.experiments) == {"SUB001_MR1", "SUB001_MR2"}
    assert isinstance(subject.experiments["SUB001_MR1"], XNATExperiment)
    assert not subject.is_shared()
    assert conn.get_subject("STUDY02", "SUB001").is_shared()


def test_get_subject_creates_on_request(conn):
    with pytest.raises(XnatNotFound):
        conn.get_subject("STUDY01", "SUB050")
    created = conn.get_subject("STUDY01", "SUB050", create=True)
    assert created.name == "SUB050" and created.experiments == {}
    conn.make_subject("STUDY01", "SUB050")  # existing: left alone
    assert conn.get_subject_ids("STUDY01").count("SUB050") == 1


def test_experiment_ids(conn):
    assert conn.get_experiment_ids("STUDY01", "SUB001") == ["SUB001_MR1", "SUB001_MR2"]
    assert sorted(conn.get_experiment_ids("STUDY01")) == ["SUB001_MR1", "SUB001_MR2", "SUB002_MR1", "SUB003_MR1"]
    assert conn.get_experiment_ids("STUDY01", "NOBODY") == []
    assert conn.get_scan_ids("STUDY01", "SUB001", "NO_SESSION") == []


def test_experiment_object(conn):
    experiment = conn.get_experiment("STUDY01", "SUB001", "SUB001_MR1")
    assert (experiment.id, experiment.name, experiment.date) == ("XNAT_E00001", "SUB001_MR1", "2024-01-05")
    assert experiment.subject == "SUB001" and experiment.project == "STUDY01"
    assert [scan.series for scan in experiment.scans] == ["1", "2", "3", "4", "5"]
    assert all(uid for uid in experiment.scan_UIDs)
    assert len(experiment.scan_resource_IDs) == 5  # one DICOM resource per scan
    assert list(experiment.resource_IDs) == ["QC"]
    assert experiment.misc_resource_IDs == []  # only DICOM and SNAPSHOTS on scans
    assert not experiment.is_shared()
    through_share = conn.get_experiment("STUDY02", "SUB001", "SUB001_MR1")
    assert through_share.is_shared() and through_share.source_project == "STUDY01"


def test_get_experiment_creates_on_request(conn):
    with pytest.raises(XnatNotFound):
        conn.get_experiment("STUDY01", "SUB003", "SUB003_MR5")
    experiment = conn.get_experiment("STUDY01", "SUB003", "SUB003_MR5", create=True)
    assert experiment.name == "SUB003_MR5" and experiment.scans == []


def test_scans(conn):
    assert conn.get_scan_ids("STUDY01", "SUB002", "SUB002_MR1") == ["1", "2", "3", "4", "5", "6"]
    scan = conn.get_scan("STUDY01", "SUB002", "SUB002_MR1", "6")
    assert isinstance(scan, XNATScan)
    assert (scan.series, scan.description, scan.experiment) == ("6", "T1w_MPRAGE repeat", "SUB002_MR1")
    assert scan.raw_dicoms_exist()
    assert scan.quality == "questionable" and scan.is_usable()
    with pytest.raises(XnatNotFound):
        conn.get_scan("STUDY01", "SUB002", "SUB002_MR1", "99")


# -- resources ---------------------------------------------------------------------


def test_resource_ids(conn):
    qc_id = conn.get_resource_ids("STUDY01", "SUB001", "SUB001_MR1", "QC")
    assert conn.get_resource_ids("STUDY01", "SUB001", "SUB001_MR1") == [qc_id]
    assert conn.get_resource_ids("STUDY01", "SUB001", "SUB001_MR1", "NIFTI", create=False) is None
    new_id = conn.get_resource_ids("STUDY01", "SUB001", "SUB001_MR1", "NIFTI")
    assert new_id and new_id != qc_id
    assert conn.create_resource_folder("STUDY01", "SUB001", "SUB001_MR1", "NIFTI") == new_id


def test_resource_list_reads_the_catalog(conn):
    entries = conn.get_resource_list("STUDY01", "SUB001", "SUB001_MR1", "QC")
    assert {entry["name"] for entry in entries} == {"qc_report.pdf", "qc_metrics.csv"}
    assert all(entry["digest"] for entry in entries)


def test_get_dicom_to_a_named_file_and_to_a_temp_file(conn, tmp_path):
    target = tmp_path / "out" / "scan2.zip"
    assert conn.get_dicom("STUDY01", "SUB001", "SUB001_MR1", "2", filename=str(target)) == str(target)
    with zipfile.ZipFile(target) as archive:
        assert len(archive.namelist()) == 20
    assert no_partial_files(target.parent)
    temp = conn.get_dicom("STUDY01", "SUB001", "SUB001_MR1", "1")
    try:
        assert zipfile.is_zipfile(temp)
    finally:
        os.unlink(temp)


def test_failed_download_leaves_nothing_behind(conn, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    with pytest.raises(XnatNotFound):
        conn.get_dicom("STUDY01", "SUB001", "SUB001_MR1", "99", filename=str(folder / "missing.zip"))
    assert os.listdir(folder) == []


def test_zip_download_cut_short_starts_over_until_complete(fake_xnat, tmp_path):
    with xnat(fake_xnat.url, fake_xnat.username, fake_xnat.password, backoff=0.01, retries=20) as connection:
        fake_xnat.set_faults(drop_rate=0.5, seed=4)
        path = connection.get_dicom(
            "STUDY01", "SUB001", "SUB001_MR1", "4", filename=str(tmp_path / "bold.zip"), retries=20
        )
        fake_xnat.set_faults()
    with zipfile.ZipFile(path) as archive:
        assert len(archive.namelist()) == 60
        assert archive.testzip() is None
    assert no_partial_files(tmp_path)


def test_zip_download_that_keeps_failing_leaves_nothing(fake_xnat, tmp_path):
    with xnat(fake_xnat.url, fake_xnat.username, fake_xnat.password, backoff=0.01, retries=2) as connection:
        fake_xnat.set_faults(drop_rate=1.0)
        with pytest.raises(XnatException):
            connection.get_dicom("STUDY01", "SUB001", "SUB001_MR1", "4", filename=str(tmp_path / "bold.zip"))
        fake_xnat.set_faults()
    assert os.listdir(tmp_path) == ["fake-xnat"]


def test_get_resource_and_resource_archive(conn, tmp_path):
    plain = conn.get_resource(
        "STUDY01", "SUB001", "SUB001_MR1", "QC", "qc_metrics.csv", filename=str(tmp_path / "metrics.csv"), zipped=False
    )
    listed = {f.path: f.size for f in conn.list_files("/data/experiments/XNAT_E00001/resources/QC")}
    assert os.path.getsize(plain) == listed["qc_metrics.csv"]
    archive = conn.get_resource_archive("STUDY01", "SUB001", "SUB001_MR1", "QC", filename=str(tmp_path / "qc.zip"))
    with zipfile.ZipFile(archive) as opened:
        assert len(opened.namelist()) == 2
    assert no_partial_files(tmp_path)


def test_get_resource_zipped_is_a_zip_holding_the_file(conn, fake_xnat, tmp_path):
    zipped = conn.get_resource(
        "STUDY01", "SUB001", "SUB001_MR1", "QC", "qc_metrics.csv", filename=str(tmp_path / "metrics.zip")
    )
    resource = fake_xnat.store.find_resource("experiment", "XNAT_E00001", "QC")
    stored = fake_xnat.store.file_path(resource["id"], "qc_metrics.csv").read_bytes()
    with zipfile.ZipFile(zipped) as opened:
        assert opened.namelist() == ["SUB001_MR1/resources/QC/files/qc_metrics.csv"]
        assert opened.read(opened.namelist()[0]) == stored
    assert no_partial_files(tmp_path)


def test_put_resource_creates_experiment_and_folder(conn):
    conn.put_resource("STUDY01", "SUB003", "SUB003_MR3", "nifti/t1.nii", b"\x00" * 352, "NIFTI")
    conn.put_resource("STUDY01", "SUB003", "SUB003_MR3", "readme.txt", "text body", None)
    experiment = conn.get_experiment("STUDY01", "SUB003", "SUB003_MR3")
    assert set(experiment.resource_IDs) == {"NIFTI", "MISC"}
    files = {f.path: f.size for f in conn.list_files(f"/data/experiments/{experiment.id}", all_levels=True)}
    assert files == {"nifti/t1.nii": 352, "readme.txt": 9}
    conn.put_resource("STUDY01", "SUB003", "SUB003_MR3", "readme.txt", "replaced text", None)
    files = {f.path: f.size for f in conn.list_files(f"/data/experiments/{experiment.id}/resources/MISC")}
    assert files == {"readme.txt": 13}


def test_delete_resource_file_in_datmans_form(conn):
    conn.delete_resource("STUDY01", "SUB001", "SUB001_MR1", "QC", "qc_metrics.csv")
    assert [e["name"] for e in conn.get_resource_list("STUDY01", "SUB001", "SUB001_MR1", "QC")] == ["qc_report.pdf"]
    with pytest.raises(XnatNotFound):
        conn.delete_resource("STUDY01", "SUB001", "SUB001_MR1", "QC", "qc_metrics.csv")


def test_delete_resource_by_datmans_keywords_and_ours(conn):
    conn.delete_resource(
        project="STUDY01",
        session="SUB001",
        experiment="SUB001_MR1",
        resource_group_id="QC",
        resource_id="qc_metrics.csv",
        retries=1,
    )
    assert [e["name"] for e in conn.get_resource_list("STUDY01", "SUB001", "SUB001_MR1", "QC")] == ["qc_report.pdf"]
    conn.delete_resource(project_or_uri="/data/projects/STUDY01/subjects/SUB001/experiments/SUB001_MR1/resources/QC")
    assert "QC" not in conn.get_experiment("STUDY01", "SUB001", "SUB001_MR1").resource_IDs
    with pytest.raises(TypeError):
        conn.delete_resource(project="STUDY01", project_or_uri="STUDY01", session="SUB001")


def test_put_dicoms_imports_a_zip(conn, tmp_path):
    archive = conn.get_dicom("STUDY01", "SUB001", "SUB001_MR1", "3", filename=str(tmp_path / "t2.zip"))
    conn.put_dicoms("STUDY01", "SUB002", "SUB002_MR2", archive)
    experiment = conn.get_experiment("STUDY01", "SUB002", "SUB002_MR2")
    assert [scan.description for scan in experiment.scans] == ["T2w_SPC"]
    with pytest.raises(XnatException):
        conn.put_dicoms("STUDY01", "SUB002", "SUB002_MR2", str(tmp_path / "no-such.zip"))


def test_put_dicoms_skips_a_readme_and_dicomdir_in_the_zip(conn, tmp_path):
    archive = conn.get_dicom("STUDY01", "SUB001", "SUB001_MR1", "3", filename=str(tmp_path / "t2.zip"))
    with zipfile.ZipFile(archive, "a") as bundle:
        for name, data in cd_export_extras():
            bundle.writestr(name, data)
    conn.put_dicoms("STUDY01", "SUB002", "SUB002_CD1", archive)
    experiment = conn.get_experiment("STUDY01", "SUB002", "SUB002_CD1")
    assert [scan.description for scan in experiment.scans] == ["T2w_SPC"]


# -- renames and AutoRun -------------------------------------------------------


def test_rename_subject_with_its_same_named_experiment(conn):
    conn.make_experiment("STUDY01", "SUB003", "SUB003")
    conn.rename_subject("STUDY01", "SUB003", "SUB033", rename_exp=True)
    assert "SUB033" in conn.get_subject_ids("STUDY01")
    assert sorted(conn.get_experiment_ids("STUDY01", "SUB033")) == ["SUB003_MR1", "SUB033"]


def test_autorun_ids_and_dismissal(conn, fake_xnat):
    first = fake_xnat.store.add_workflow("XNAT_E00003")
    second = fake_xnat.store.add_workflow("XNAT_E00003")
    fake_xnat.store.add_workflow("XNAT_E00003", status="Complete")
    experiment = conn.get_experiment("STUDY01", "SUB002", "SUB002_MR1")
    assert sorted(experiment.get_autorun_ids(conn)) == sorted([str(first), str(second)])
    conn.dismiss_autorun(experiment)
    assert experiment.get_autorun_ids(conn) == []
    conn.rename_experiment("STUDY01", "SUB002", "SUB002_MR1", "SUB002_MR7")
    assert conn.get_experiment_ids("STUDY01", "SUB002") == ["SUB002_MR7"]


# -- object downloads and naming ------------------------------------------------


def test_scan_download_puts_every_dicom_in_place(conn, tmp_path):
    scan = conn.get_scan("STUDY01", "SUB001", "SUB001_MR1", "2")
    assert scan.download(conn, str(tmp_path / "t1")) is True
    assert scan.download_dir == str(tmp_path / "t1")
    listed = {f.path: f.size for f in conn.list_files("/data/experiments/XNAT_E00001/scans/2/resources/DICOM")}
    on_disk = {name: os.path.getsize(tmp_path / "t1" / name) for name in os.listdir(tmp_path / "t1")}
    assert on_disk == listed


def test_scan_download_failure_returns_false(conn, fake_xnat, tmp_path):
    scan = conn.get_scan("STUDY01", "SUB001", "SUB001_MR1", "2")
    resource = fake_xnat.store.find_resource("scan", str(fake_xnat.store.scan("XNAT_E00001", "2")["pk"]), "DICOM")
    fake_xnat.store.delete_resource(resource["id"])
    assert scan.download(conn, str(tmp_path / "t1")) is False
    assert scan.download_dir is None


def test_experiment_download_is_one_complete_zip(conn, tmp_path):
    experiment = conn.get_experiment("STUDY01", "SUB003", "SUB003_MR1")
    path = experiment.download(conn, str(tmp_path))
    assert path == str(tmp_path / "SUB003_MR1.zip")
    everything = conn.list_files(f"/data/experiments/{experiment.id}", all_levels=True)
    with zipfile.ZipFile(path) as archive:
        assert len(archive.namelist()) == len(everything)
    assert no_partial_files(tmp_path)
    assert experiment.download(conn, str(tmp_path)) == path  # existing file is kept


def test_assign_scan_names_from_a_mapping_and_a_config(conn, tmp_path):
    experiment = conn.get_experiment("STUDY01", "SUB001", "SUB001_MR1")
    experiment.assign_scan_names(NAMING, "STUDY01_SITE_0001_01_01")
    names = {scan.series: scan.names for scan in experiment.scans}
    assert names["1"] == ["STUDY01_SITE_0001_01_01_LOC_01_Localizer"]
    assert names["2"] == ["STUDY01_SITE_0001_01_01_T1_02_T1w-MPRAGE"]
    assert names["4"] == ["STUDY01_SITE_0001_01_01_RST_04_fMRI-rest"]
    assert names["5"] == []  # DWI matches no tag
    config_file = tmp_path / "config.toml"
    config_file.write_text('[sites.CMH.naming]\nDTI = { SeriesDescription = "DWI" }\n')

    class Ident:
        site = "CMH"

        def __str__(self):
            return "STUDY01_CMH_0001_01_01"

    experiment.assign_scan_names(ClientConfig.load(config_file), Ident())
    assert {scan.series: scan.tags for scan in experiment.scans}["5"] == ["DTI"]


# -- datman's constructor, session and the facade ----------------------------------


def test_connection_takes_datmans_keyword_names_and_ours(fake_xnat):
    with xnat(server=fake_xnat.url, username=fake_xnat.username, password=fake_xnat.password) as by_datman:
        assert by_datman.server == fake_xnat.url
        assert by_datman.auth.username == fake_xnat.username
        assert "SUB001" in by_datman.get_subject_ids("STUDY01")
    with xnat(url=fake_xnat.url, username=fake_xnat.username, password=fake_xnat.password) as by_ours:
        assert by_ours.get_projects()
    with pytest.raises(TypeError):
        xnat(server=fake_xnat.url, url=fake_xnat.url)


def test_session_is_a_requests_session_scripts_can_call(conn, fake_xnat):
    assert isinstance(conn.session, requests.Session)
    # datman builds full URLs; server paths work too.
    answer = conn.session.get(f"{conn.server}/data/projects?format=json")
    assert answer.status_code == 200
    assert {row["ID"] for row in answer.json()["ResultSet"]["Result"]} == {"STUDY01", "STUDY02"}
    answer = conn.session.get("/data/projects/STUDY01/subjects", params={"format": "json"})
    assert "SUB001" in {row["label"] for row in answer.json()["ResultSet"]["Result"]}
    # Like requests, an error status is handed back, not raised.
    assert conn.session.get(f"{conn.server}/data/projects/NOPE?format=json").status_code == 404
    assert conn.session.put(f"{conn.server}/data/projects/STUDY01/subjects/SCRIPTED").status_code in (200, 201)
    assert "SCRIPTED" in conn.get_subject_ids("STUDY01")
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "SUB001_MR1")
    posted = conn.session.post(
        f"{conn.server}/data/experiments/{experiment_id}/resources/QC/files",
        files={"file": ("posted.txt", b"sent as multipart")},
    )
    assert posted.status_code == 200
    assert {f.path: f.size for f in conn.list_files(f"/data/experiments/{experiment_id}/resources/QC")}[
        "posted.txt"
    ] == len(b"sent as multipart")
    with pytest.raises(ValueError):
        conn.session.get("http://elsewhere.example/data/projects")


def test_session_outlives_an_expired_login(conn, fake_xnat):
    assert conn.session.get("/data/projects?format=json").status_code == 200
    fake_xnat.auth.end_all_sessions()
    fake_xnat.reset_counts()
    assert conn.session.get("/data/projects?format=json").status_code == 200
    assert fake_xnat.count("POST", "/data/JSESSION") == 1


def test_datman_api_is_a_facade_over_the_connection(conn):
    assert isinstance(conn.connection, XnatConnection)
    assert not isinstance(conn, XnatConnection)
    assert not hasattr(conn.connection, "get_subject_ids")
    # The connection's own calls pass through the facade.
    assert conn.list_projects() == conn.connection.list_projects()


# -- get_connection ----------------------------------------------------------------


def test_get_connection_from_a_url_and_a_cache(fake_xnat):
    cache = {}
    first = get_connection(url=fake_xnat.url, auth=(fake_xnat.username, fake_xnat.password), server_cache=cache)
    again = get_connection(url=fake_xnat.url, auth=(fake_xnat.username, fake_xnat.password), server_cache=cache)
    assert first is again and list(cache) == [fake_xnat.url]
    assert first.get_subject_ids("STUDY02")
    first.close()


def test_get_connection_from_config_and_credentials_file(fake_xnat, tmp_path):
    credentials = tmp_path / "login"
    credentials.write_text(f"{fake_xnat.username}\n{fake_xnat.password}\n")
    host, port = fake_xnat.url.rsplit(":", 1)
    config = {"XNATSERVER": host, "XNATPORT": port, "XNAT_CREDENTIALS": str(credentials)}
    with get_connection(config) as connection:
        assert connection.server == fake_xnat.url
        assert connection.auth.username == fake_xnat.username
        assert connection.get_projects()
