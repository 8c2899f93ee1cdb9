"""Third-party XNAT clients work against the fake server: xnatpy (``xnat``) and pyxnat."""

from __future__ import annotations

import hashlib

import pyxnat
import requests
import xnat

DICOM_PATH = "/data/experiments/XNAT_E00001/scans/2/resources/DICOM/files/2-0001.dcm"


def server_bytes(server, path: str) -> bytes:
    return requests.get(server.url + path, auth=(server.username, server.password)).content


def test_xnatpy_walks_downloads_creates_and_uploads(fake_xnat, tmp_path):
    with xnat.connect(fake_xnat.url, user="admin", password="admin") as session:
        assert session.xnat_version.startswith("1.")
        assert sorted(session.projects.keys()) == ["STUDY01", "STUDY02"]
        project = session.projects["STUDY01"]
        assert project.name == "Sample study one"
        assert sorted(s.label for s in project.subjects.values()) == ["SUB001", "SUB002", "SUB003"]
        subject = project.subjects["SUB001"]
        assert subject.id == "XNAT_S00001"
        experiment = subject.experiments["SUB001_MR1"]
        assert experiment.label == "SUB001_MR1"
        assert str(experiment.date) == "2024-01-05"
        assert sorted(experiment.scans.keys()) == ["1", "2", "3", "4", "5"]
        scan = experiment.scans["2"]
        assert scan.type == "T1w_MPRAGE"
        assert scan.quality == "usable"
        resource = scan.resources["DICOM"]
        assert resource.file_count == 20
        names = sorted(f.name for f in resource.files.values())
        assert names[0] == "2-0001.dcm" and len(names) == 20
        target = tmp_path / "one.dcm"
        resource.files["2-0001.dcm"].download(target, verbose=False)
        assert target.read_bytes() == server_bytes(fake_xnat, DICOM_PATH)

        new_subject = session.classes.SubjectData(parent=project, label="XNATPY01")
        new_experiment = session.classes.MrSessionData(parent=new_subject, label="XNATPY01_MR1")
        created = new_experiment.create_resource("NIFTI")
        created.upload_data(b"uploaded by xnatpy", "derived/t1.nii", overwrite=True)
        assert [f.path for f in created.files.values()] == ["derived/t1.nii"]
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "XNATPY01_MR1")
    assert experiment_id is not None
    uploaded = server_bytes(fake_xnat, f"/data/experiments/{experiment_id}/resources/NIFTI/files/derived/t1.nii")
    assert uploaded == b"uploaded by xnatpy"


def test_pyxnat_walks_downloads_creates_and_uploads(fake_xnat, tmp_path):
    interface = pyxnat.Interface(server=fake_xnat.url, user="admin", password="admin")
    try:
        assert sorted(interface.select.projects().get()) == ["STUDY01", "STUDY02"]
        project = interface.select.project("STUDY01")
        assert project.exists()
        assert sorted(s.label() for s in project.subjects()) == ["SUB001", "SUB002", "SUB003"]
        subject = project.subject("SUB001")
        assert subject.label() == "SUB001"
        experiment = subject.experiment("SUB001_MR1")
        assert experiment.attrs.get("xnat:mrSessionData/date") == "2024-01-05"
        assert experiment.scans().get() == ["1", "2", "3", "4", "5"]
        resource = experiment.scan("2").resource("DICOM")
        names = resource.files().get()
        assert len(names) == 20
        downloaded = resource.file("2-0001.dcm").get(str(tmp_path / "one.dcm"))
        with open(downloaded, "rb") as handle:
            assert (
                hashlib.md5(handle.read()).hexdigest() == hashlib.md5(server_bytes(fake_xnat, DICOM_PATH)).hexdigest()
            )

        new_subject = project.subject("PYXNAT01")
        new_subject.create()
        assert new_subject.exists()
        new_experiment = new_subject.experiment("PYXNAT01_MR1")
        new_experiment.create(experiments="xnat:mrSessionData")
        assert new_experiment.exists()
        new_resource = new_experiment.resource("NIFTI")
        new_resource.create()
        new_resource.file("t1.nii").insert(b"uploaded by pyxnat", format="NIFTI")
        assert new_resource.files().get() == ["t1.nii"]
    finally:
        interface.disconnect()
    experiment_id = fake_xnat.store.experiment_id("STUDY01", "PYXNAT01_MR1")
    uploaded = server_bytes(fake_xnat, f"/data/experiments/{experiment_id}/resources/NIFTI/files/t1.nii")
    assert uploaded == b"uploaded by pyxnat"


def test_search_elements_and_display_fields(fake_xnat):
    auth = (fake_xnat.username, fake_xnat.password)
    elements = requests.get(fake_xnat.url + "/data/search/elements?format=json", auth=auth).json()
    names = [row["ELEMENT_NAME"] for row in elements["ResultSet"]["Result"]]
    assert "xnat:mrSessionData" in names and "xnat:subjectData" in names
    fields = requests.get(fake_xnat.url + "/data/search/elements/xnat:subjectData?format=json", auth=auth).json()
    assert "SUBJECT_LABEL" in [row["FIELD_ID"] for row in fields["ResultSet"]["Result"]]
    assert requests.get(fake_xnat.url + "/data/search/elements/xnat:nothing", auth=auth).status_code == 404
    schemas = requests.get(fake_xnat.url + "/xapi/schemas", auth=auth).json()
    assert schemas == ["xnat"]
    xsd = requests.get(fake_xnat.url + "/xapi/schemas/xnat", auth=auth)
    assert xsd.status_code == 200 and b'name="mrSessionData"' in xsd.content


# Names whose characters mean something in a URL; XNAT lists them in a file's URI unencoded.
AWKWARD_NAMES = ("b0dwi+00001.dcm", "sp ace.txt", "sub dir/q+1.txt")


def put_awkward_files(server) -> str:
    experiment_id = server.store.experiment_id("STUDY01", "SUB001_MR1")
    for name in AWKWARD_NAMES + ("ha#sh.txt",):
        server.store.put_file(experiment_id, "QC", name, name.encode())
    return experiment_id


def test_xnatpy_reports_the_raw_path_of_awkward_file_names(fake_xnat):
    experiment_id = put_awkward_files(fake_xnat)
    with xnat.connect(fake_xnat.url, user="admin", password="admin") as session:
        files = session.experiments[experiment_id].resources["QC"].files
        paths = {f.path for f in files.values()}
        assert set(AWKWARD_NAMES) <= paths, paths
        for name in AWKWARD_NAMES:
            remote = next(f for f in files.values() if f.path == name)
            with remote.open() as handle:
                assert handle.read() == name.encode()


def test_pyxnat_reads_the_size_of_awkward_file_names(fake_xnat):
    put_awkward_files(fake_xnat)
    interface = pyxnat.Interface(server=fake_xnat.url, user="admin", password="admin")
    try:
        resource = interface.select.project("STUDY01").subject("SUB001").experiment("SUB001_MR1").resource("QC")
        for name in ("b0dwi+00001.dcm", "sp ace.txt", "ha#sh.txt"):
            assert int(resource.file(name).size()) == len(name), name
    finally:
        interface.disconnect()
