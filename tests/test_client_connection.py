"""The calls the file system makes, against the fake XNAT's small sample study."""

import hashlib
import io
import json
import zipfile

import pytest

from fakeutil import fault_seed
from test_reliability_common import Relay
from xnatfs.client import XnatConnection
from xnatfs.errors import (
    XnatConflict,
    XnatError,
    XnatInvalidLabel,
    XnatNotFound,
    XnatPermissionError,
    XnatUnsupported,
)

MR1 = "XNAT_E00001"  # STUDY01 / SUB001 / SUB001_MR1, shared into STUDY02


@pytest.fixture
def conn(fake_xnat):
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password, backoff=0.01) as connection:
        fake_xnat.reset_counts()
        yield connection


def gets(server):
    return server.count("GET")


# -- listings ------------------------------------------------------------------


def test_projects(conn):
    projects = {p.id: p for p in conn.list_projects()}
    assert set(projects) == {"STUDY01", "STUDY02"}
    assert projects["STUDY01"].name == "Sample study one"
    assert projects["STUDY01"].uri == "/data/projects/STUDY01"


def test_subjects_include_shared_ones(conn):
    own = {s.label: s for s in conn.list_subjects("STUDY01")}
    assert set(own) == {"SUB001", "SUB002", "SUB003"}
    assert not any(s.shared for s in own.values())
    assert own["SUB001"].insert_date is not None
    second = {s.label: s for s in conn.list_subjects("STUDY02")}
    assert second["SUB001"].shared and second["SUB001"].project == "STUDY01"
    assert not second["SUB101"].shared


def test_experiments_of_a_project_in_one_request(conn, fake_xnat):
    experiments = conn.list_experiments("STUDY01")
    assert gets(fake_xnat) == 1
    by_label = {e.label: e for e in experiments}
    assert set(by_label) == {"SUB001_MR1", "SUB001_MR2", "SUB002_MR1", "SUB003_MR1"}
    mr1 = by_label["SUB001_MR1"]
    assert (mr1.id, mr1.subject_id, mr1.subject_label) == (MR1, "XNAT_S00001", "SUB001")
    assert (mr1.xsi_type, mr1.date, mr1.shared) == ("xnat:mrSessionData", "2024-01-05", False)
    assert [e.label for e in conn.list_experiments("STUDY01", "SUB001")] == ["SUB001_MR1", "SUB001_MR2"]
    assert [e.label for e in conn.list_experiments("STUDY01", "XNAT_S00002")] == ["SUB002_MR1"]


def test_one_subject_is_the_row_the_project_s_listing_has_for_it(conn, fake_xnat):
    for project in ("STUDY01", "STUDY02"):
        for subject in conn.list_subjects(project):
            fake_xnat.reset_counts()
            assert conn.find_subject(project, subject.label) == subject
            assert gets(fake_xnat) == 1
    assert conn.find_subject("STUDY01", "SUB00") is None
    assert conn.find_subject("STUDY01", "sub001") is None  # labels are matched as they are
    assert conn.find_subject("STUDY01", "SUB101") is None  # STUDY02's


def test_one_subject_s_sessions_are_those_the_project_s_listing_has_for_it(conn, fake_xnat):
    for project in ("STUDY01", "STUDY02"):
        for subject in conn.list_subjects(project):
            fake_xnat.reset_counts()
            mine = conn.list_subject_experiments(project, subject.label)
            assert gets(fake_xnat) == 1
            assert mine == [e for e in conn.list_experiments(project) if e.subject_id == subject.id]
    with pytest.raises(XnatNotFound):
        conn.list_subject_experiments("STUDY01", "SUB999")


def test_shared_experiment_is_marked_in_the_sharing_project(conn):
    shared = {e.label: e for e in conn.list_experiments("STUDY02")}
    assert shared["SUB001_MR1"].shared and shared["SUB001_MR1"].project == "STUDY01"
    assert not shared["SUB101_MR1"].shared


def test_experiment_contents(conn, fake_xnat):
    contents = conn.get_experiment_contents(MR1)
    assert gets(fake_xnat) == 1
    scans = {scan.id: scan for scan in contents.scans}
    assert set(scans) == {"1", "2", "3", "4", "5"}
    assert scans["2"].type == "T1w_MPRAGE" and scans["2"].series_description == "T1w_MPRAGE"
    assert scans["2"].uri == f"/data/experiments/{MR1}/scans/2"
    assert {r.label for r in scans["2"].resources} == {"DICOM", "SNAPSHOTS"}
    dicom = next(r for r in scans["2"].resources if r.label == "DICOM")
    assert (dicom.format, dicom.content, dicom.file_count) == ("DICOM", "RAW", 20)
    assert [r.label for r in contents.resources] == ["QC"]
    assert contents.insert_date is not None


def test_project_searches_agree_with_each_session_in_two_requests(conn, fake_xnat):
    fake_xnat.reset_counts()
    found = conn.list_project_contents("STUDY01")
    assert fake_xnat.count("GET") == 2
    experiments = conn.list_experiments("STUDY01")
    assert set(found) == {e.id for e in experiments}
    for experiment in experiments:
        one = conn.get_experiment_contents(experiment.id)
        shown = found[experiment.id]
        assert [(s.id, s.type, s.series_description, s.quality, s.uri) for s in shown.scans] == [
            (s.id, s.type, s.series_description, s.quality, s.uri) for s in one.scans
        ]
        assert [[(r.label, r.uri) for r in s.resources] for s in shown.scans] == [
            [(r.label, r.uri) for r in s.resources] for s in one.scans
        ]
        assert [(r.label, r.uri) for r in shown.resources] == [(r.label, r.uri) for r in one.resources]
    labels = conn.list_subject_resources("STUDY01")
    for subject in conn.list_subjects("STUDY01"):
        owner = f"/data/projects/{subject.project}/subjects/{subject.id}"
        assert labels[subject.id] == tuple(r.label for r in conn.list_resources(owner))


def test_project_searches_are_none_where_the_server_cannot_do_them(conn, fake_xnat):
    fake_xnat.child_searches = False
    assert conn.list_project_contents("STUDY01") is None
    assert conn.list_subject_resources("STUDY01") is None


def test_a_search_answered_in_part_is_not_trusted(fake_xnat):
    def first_page(method, path, status, headers, body):
        if "imagescandata" in path:
            document = json.loads(body)
            document["ResultSet"]["Result"] = document["ResultSet"]["Result"][:3]  # totalRecords kept
            body = json.dumps(document).encode()
        return status, headers, body

    with (
        Relay(fake_xnat.url, rewrite=first_page) as relay,
        XnatConnection(relay.url, fake_xnat.username, fake_xnat.password, backoff=0.01) as connection,
    ):
        assert connection.list_project_contents("STUDY01") is None
        assert connection.list_subject_resources("STUDY01") is not None


def test_resources_at_every_level(conn):
    assert [r.label for r in conn.list_resources("/data/projects/STUDY01")] == ["PROTOCOLS"]
    assert [r.label for r in conn.list_resources("/data/projects/STUDY01/subjects/SUB001")] == ["NOTES"]
    assert [r.label for r in conn.list_resources(f"/data/experiments/{MR1}")] == ["QC"]
    scan_resources = conn.list_resources(f"/data/experiments/{MR1}/scans/3")
    assert {r.label: r.uri for r in scan_resources} == {
        "DICOM": f"/data/experiments/{MR1}/scans/3/resources/DICOM",
        "SNAPSHOTS": f"/data/experiments/{MR1}/scans/3/resources/SNAPSHOTS",
    }
    assert all(r.file_count and r.file_size for r in scan_resources)


def test_all_files_of_a_session_in_one_request_match_the_resources(conn, fake_xnat):
    contents = conn.get_experiment_contents(MR1)
    fake_xnat.reset_counts()
    files = conn.list_files(f"/data/experiments/{MR1}", all_levels=True)
    assert gets(fake_xnat) == 1
    resource_uris = {r.uri for r in contents.resources} | {r.uri for s in contents.scans for r in s.resources}
    # The invariant the file system relies on: listing rows point at the resources by the same URI.
    assert {f.resource_uri for f in files} == resource_uris
    expected_count = sum(r.file_count for r in contents.resources) + sum(
        r.file_count for s in contents.scans for r in s.resources
    )
    assert len(files) == expected_count
    assert all(f.resource_uri.endswith("/resources/" + f.resource_label) for f in files)


def test_resource_listing_sizes_and_digests_match_the_bytes(conn):
    files = conn.list_files(f"/data/experiments/{MR1}/resources/QC")
    assert {f.path for f in files} == {"qc_report.pdf", "qc_metrics.csv"}
    for remote in files:
        out = io.BytesIO()
        assert conn.download(remote.uri, out) == remote.size
        assert len(out.getvalue()) == remote.size
        assert hashlib.md5(out.getvalue()).hexdigest() == remote.digest
        assert remote.resource_uri == f"/data/experiments/{MR1}/resources/QC"


def test_resource_listing_without_all_levels_is_session_level_only(conn):
    files = conn.list_files(f"/data/experiments/{MR1}")
    assert {f.resource_label for f in files} == {"QC"}


def test_zip_of_a_resource_holds_every_listed_file(conn):
    resource = f"/data/experiments/{MR1}/scans/2/resources/DICOM"
    listed = {f.path: f.size for f in conn.list_files(resource)}
    out = io.BytesIO()
    written = conn.download_zip(resource, out)
    assert written == len(out.getvalue())
    with zipfile.ZipFile(out) as archive:
        sizes = {info.filename.rsplit("/files/", 1)[-1]: info.file_size for info in archive.infolist()}
    assert sizes == listed


def test_zip_of_a_scan_and_of_a_session(conn):
    scan_zip, session_zip = io.BytesIO(), io.BytesIO()
    conn.download_zip(f"/data/experiments/{MR1}/scans/3", scan_zip)
    conn.download_zip(f"/data/experiments/{MR1}", session_zip)
    with zipfile.ZipFile(scan_zip) as archive:
        scan_names = archive.namelist()
    with zipfile.ZipFile(session_zip) as archive:
        session_names = archive.namelist()
    assert any("SNAPSHOTS" in name for name in scan_names) and any("DICOM" in name for name in scan_names)
    assert len(session_names) == len(conn.list_files(f"/data/experiments/{MR1}", all_levels=True))


def test_missing_objects_are_not_found(conn):
    with pytest.raises(XnatNotFound):
        conn.list_subjects("NO_SUCH_PROJECT")
    with pytest.raises(XnatNotFound):
        conn.get_experiment_contents("XNAT_E99999")
    with pytest.raises(XnatNotFound) as caught:
        conn.download(f"/data/experiments/{MR1}/resources/QC/files/nothing.txt", io.BytesIO())
    assert caught.value.status == 404 and "nothing.txt" in caught.value.url


def test_forbidden_is_a_permission_error(conn):
    # Only the owning project may share an item; asking through the sharing project is refused.
    with pytest.raises(XnatPermissionError) as caught:
        conn.session.request("PUT", "/data/projects/STUDY02/subjects/SUB001/experiments/SUB001_MR1/projects/X")
    assert caught.value.status == 403


# -- writing ---------------------------------------------------------------------


def test_upload_overwrite_and_conflict(conn):
    resource = f"/data/experiments/{MR1}/resources/QC"
    conn.upload_file(resource, "derived/notes 1.txt", io.BytesIO(b"first"))
    conn.upload_file(resource, "derived/notes 1.txt", io.BytesIO(b"second version"))
    listed = {f.path: f for f in conn.list_files(resource)}
    assert listed["derived/notes 1.txt"].size == len(b"second version")
    with pytest.raises(XnatConflict):
        conn.upload_file(resource, "derived/notes 1.txt", io.BytesIO(b"third"), overwrite=False)
    out = io.BytesIO()
    conn.download(listed["derived/notes 1.txt"].uri, out)
    assert out.getvalue() == b"second version"


def test_upload_streams_from_an_unseekable_reader(conn):
    class Reader:
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def read(self, size=-1):
            return self._data.read(size)

    payload = bytes(range(256)) * 4096
    resource = f"/data/experiments/{MR1}/resources/QC"
    conn.upload_file(resource, "big.bin", Reader(payload))
    listed = {f.path: f for f in conn.list_files(resource)}
    assert listed["big.bin"].size == len(payload)
    assert listed["big.bin"].digest == hashlib.md5(payload).hexdigest()


def test_empty_upload_is_refused_before_sending(conn, fake_xnat):
    with pytest.raises(XnatUnsupported):
        conn.upload_file(f"/data/experiments/{MR1}/resources/QC", "empty.txt", io.BytesIO(b""))
    assert fake_xnat.count("PUT") == 0


def test_delete_file(conn):
    resource = f"/data/experiments/{MR1}/resources/QC"
    conn.delete_file(resource, "qc_metrics.csv")
    assert {f.path for f in conn.list_files(resource)} == {"qc_report.pdf"}
    with pytest.raises(XnatNotFound):
        conn.delete_file(resource, "qc_metrics.csv")


def test_create_subject_and_experiment(conn):
    subject_id = conn.create_subject("STUDY01", "SUB004")
    assert subject_id.startswith("XNAT_S")
    with pytest.raises(XnatConflict):
        conn.create_subject("STUDY01", "SUB004")
    assert conn.create_subject("STUDY01", "SUB004", exist_ok=True) == subject_id
    experiment_id = conn.create_experiment("STUDY01", "SUB004", "SUB004_MR1")
    with pytest.raises(XnatConflict):
        conn.create_experiment("STUDY01", "SUB004", "SUB004_MR1")
    found = {e.label: e for e in conn.list_experiments("STUDY01", "SUB004")}
    assert found["SUB004_MR1"].id == experiment_id
    assert found["SUB004_MR1"].xsi_type == "xnat:mrSessionData"


def test_a_create_repeated_after_the_server_acted_is_no_conflict(conn, fake_xnat):
    # The first answer is lost after the server carried the request out; the repeat finds the object.
    first_lost = fault_seed(["drop", None], drop_rate=0.5)
    fake_xnat.set_faults(drop_rate=0.5, seed=first_lost)
    subject_id = conn.create_subject("STUDY01", "SUB900")
    fake_xnat.set_faults(drop_rate=0.5, seed=first_lost)
    conn.create_resource(f"/data/subjects/{subject_id}", "EXTRA")
    fake_xnat.set_faults()
    assert [status for method, _t, status in fake_xnat.requests if method == "PUT"] == [201, 200, 200, 409]
    assert fake_xnat.store.subject_id("STUDY01", "SUB900") == subject_id
    assert [r.label for r in conn.list_resources(f"/data/subjects/{subject_id}")] == ["EXTRA"]


def test_deletes_and_renames_whose_answer_was_lost_are_done(conn, fake_xnat):
    first_lost = fault_seed(["drop", None], drop_rate=0.5)
    fake_xnat.set_faults(drop_rate=0.5, seed=first_lost)
    conn.delete_resource(f"/data/experiments/{MR1}/resources/QC")
    fake_xnat.set_faults(drop_rate=0.5, seed=first_lost)
    conn.delete_subject("STUDY01", "SUB003")
    # A rename is not repeated: the client asks whether it happened (item, rename, check).
    fake_xnat.set_faults(drop_rate=0.5, seed=fault_seed([None, "drop", None], drop_rate=0.5))
    conn.rename_subject("STUDY01", "SUB002", "SUB002B")
    fake_xnat.set_faults()
    assert [status for method, _t, status in fake_xnat.requests if method == "DELETE"] == [200, 404, 200, 404]
    assert fake_xnat.count("PUT") == 1
    assert conn.list_resources(f"/data/experiments/{MR1}") == []
    assert {s.label for s in conn.list_subjects("STUDY01")} == {"SUB001", "SUB002B"}


def test_creates_and_deletes_answered_500_are_asked_again(conn, fake_xnat):
    # Repeated since the repeat's answer tells whether the first attempt was carried out
    # (409 to a resource's create, 404 to a delete, 200 to a subject's create).
    failing = {"error_rate": 0.5, "error_statuses": (500,)}
    first_fails = fault_seed([500, None], **failing)
    fake_xnat.set_faults(**failing, seed=first_fails)
    conn.create_resource(f"/data/experiments/{MR1}", "EXTRA")
    fake_xnat.set_faults(**failing, seed=first_fails)
    conn.delete_resource(f"/data/experiments/{MR1}/resources/QC")
    fake_xnat.set_faults(**failing, seed=first_fails)
    subject_id = conn.create_subject("STUDY01", "SUB901")
    fake_xnat.set_faults()
    assert [r.label for r in conn.list_resources(f"/data/experiments/{MR1}")] == ["EXTRA"]
    assert fake_xnat.store.subject_id("STUDY01", "SUB901") == subject_id
    changes = [(method, status) for method, _t, status in fake_xnat.requests if method in ("PUT", "DELETE")]
    assert changes == [("PUT", 500), ("PUT", 200), ("DELETE", 500), ("DELETE", 200), ("PUT", 500), ("PUT", 201)]


def test_a_rename_answered_500_before_it_was_done_is_sent_once_more(conn, fake_xnat):
    failing = {"error_rate": 0.5, "error_statuses": (500,)}
    # The subject's item, the rename (500, not done), the check, the rename again.
    fake_xnat.set_faults(**failing, seed=fault_seed([None, 500, None, None], **failing))
    conn.rename_subject("STUDY01", "SUB002", "SUB002B")
    fake_xnat.set_faults()
    assert [status for method, _t, status in fake_xnat.requests if method == "PUT"] == [500, 200]
    labels = {s.label for s in conn.list_subjects("STUDY01")}
    assert "SUB002B" in labels and "SUB002" not in labels


def test_invalid_labels_are_refused(conn):
    with pytest.raises(XnatInvalidLabel) as caught:
        conn.create_subject("STUDY01", "bad label!")
    assert caught.value.status == 417
    with pytest.raises(XnatInvalidLabel):
        conn.create_experiment("STUDY01", "SUB001", "bad.label")


def test_create_and_delete_resources(conn):
    experiment = f"/data/experiments/{MR1}"
    conn.create_resource(experiment, "NIFTI")
    with pytest.raises(XnatConflict):
        conn.create_resource(experiment, "NIFTI")
    conn.create_resource(f"{experiment}/scans/2", "NIFTI")
    conn.upload_file(f"{experiment}/scans/2/resources/NIFTI", "t1.nii", io.BytesIO(b"\x01" * 348))
    labels = {r.label for r in conn.get_experiment_contents(MR1).scans[1].resources}
    assert "NIFTI" in labels
    conn.delete_resource(f"{experiment}/scans/2/resources/NIFTI")
    conn.delete_resource(f"{experiment}/resources/NIFTI")
    assert [r.label for r in conn.list_resources(experiment)] == ["QC"]
    with pytest.raises(XnatNotFound):
        conn.delete_resource(f"{experiment}/resources/NIFTI")


def test_delete_subject_and_experiment(conn):
    conn.delete_experiment("STUDY01", "XNAT_E00002")
    assert [e.label for e in conn.list_experiments("STUDY01", "SUB001")] == ["SUB001_MR1"]
    conn.delete_subject("STUDY01", "SUB003")
    assert {s.label for s in conn.list_subjects("STUDY01")} == {"SUB001", "SUB002"}
    with pytest.raises(XnatNotFound):
        conn.get_experiment_contents("XNAT_E00004")


def test_delete_through_the_sharing_project_removes_only_the_share(conn):
    conn.delete_experiment("STUDY02", MR1)
    assert "SUB001_MR1" not in {e.label for e in conn.list_experiments("STUDY02")}
    assert "SUB001_MR1" in {e.label for e in conn.list_experiments("STUDY01")}


# -- renames -------------------------------------------------------------------


def test_rename_subject_and_experiment(conn):
    conn.rename_experiment("STUDY01", "SUB002", "SUB002_MR1", "SUB002_MR9")
    assert [e.label for e in conn.list_experiments("STUDY01", "SUB002")] == ["SUB002_MR9"]
    conn.rename_subject("STUDY01", "SUB002", "SUB009")
    subjects = {s.label: s.id for s in conn.list_subjects("STUDY01")}
    assert subjects["SUB009"] == "XNAT_S00002" and "SUB002" not in subjects


def test_rename_to_a_label_in_use_is_a_conflict(conn):
    with pytest.raises(XnatConflict):
        conn.rename_experiment("STUDY01", "SUB001", "SUB001_MR2", "SUB001_MR1")
    with pytest.raises(XnatConflict):
        conn.rename_subject("STUDY01", "SUB002", "SUB001")
    with pytest.raises(XnatNotFound):
        conn.rename_subject("STUDY01", "NOBODY", "SUB010")


def test_rename_dismisses_a_stuck_autorun(conn, fake_xnat):
    workflow = fake_xnat.store.add_workflow("XNAT_E00003")
    assert conn.find_autorun_ids("XNAT_E00003", "STUDY01") == [str(workflow)]
    conn.rename_experiment("STUDY01", "SUB002", "SUB002_MR1", "SUB002_MR2")
    assert fake_xnat.store.workflow(workflow)["status"] == "Complete"
    assert [e.label for e in conn.list_experiments("STUDY01", "SUB002")] == ["SUB002_MR2"]
    assert conn.find_autorun_ids("XNAT_E00003", "STUDY01") == []


def test_subject_rename_dismisses_autoruns_of_its_experiments(conn, fake_xnat):
    workflow = fake_xnat.store.add_workflow("XNAT_E00004")
    conn.rename_subject("STUDY01", "SUB003", "SUB033")
    assert fake_xnat.store.workflow(workflow)["status"] == "Complete"
    assert "SUB033" in {s.label for s in conn.list_subjects("STUDY01")}


# -- import ----------------------------------------------------------------------


def test_import_a_dicom_zip_into_a_new_session(conn):
    archive = io.BytesIO()
    conn.download_zip(f"/data/experiments/{MR1}/scans/1/resources/DICOM", archive)
    archive.seek(0)
    uris = conn.import_dicom_zip("STUDY01", "SUB003", "SUB003_MR2", archive)
    assert uris and all(uri.startswith("/data/") for uri in uris)
    created = {e.label: e for e in conn.list_experiments("STUDY01", "SUB003")}
    assert "SUB003_MR2" in created
    contents = conn.get_experiment_contents(created["SUB003_MR2"].id)
    assert [scan.series_description for scan in contents.scans] == ["Localizer"]
    dicom = contents.scans[0].resources[0]
    assert dicom.file_count == 9


def test_import_of_garbage_is_refused(conn, fake_xnat):
    with pytest.raises(XnatError) as caught:
        conn.import_dicom_zip("STUDY01", "SUB003", "SUB003_MR2", io.BytesIO(b"not a zip at all"))
    assert caught.value.status == 400
    assert fake_xnat.count("POST", "/data/services/import") == 1


def test_awkward_file_names_round_trip_as_xnat_lists_them(conn, fake_xnat):
    qc = f"/data/experiments/{MR1}/resources/QC"
    names = ("%41.txt", "b0dwi+00001.dcm", "sp ace.txt", "ha#sh.txt", "dir #1/a%2Bb+.txt")
    for name in names:
        conn.upload_file(qc, name, name.encode())
    listed = {remote.path: remote for remote in conn.list_files(qc)}
    assert set(names) <= set(listed)
    for name in names:
        buffer = io.BytesIO()
        conn.download(listed[name].uri, buffer)
        assert buffer.getvalue() == name.encode(), name
    stored = {
        row["path"] for row in fake_xnat.store.files(fake_xnat.store.find_resource("experiment", MR1, "QC")["id"])
    }
    assert set(names) <= stored
    for name in names:
        conn.delete_file(qc, name)
    assert not set(names) & {remote.path for remote in conn.list_files(qc)}


def test_an_overwriting_upload_answered_500_is_sent_again(conn, fake_xnat):
    failing = {"error_rate": 0.5, "error_statuses": (500,)}
    fake_xnat.set_faults(**failing, seed=fault_seed([500, None], **failing))
    conn.upload_file(f"/data/experiments/{MR1}/resources/QC", "again.txt", b"stored once")
    fake_xnat.set_faults()
    assert [status for method, _t, status in fake_xnat.requests if method == "PUT"] == [500, 200]
    resource = fake_xnat.store.find_resource("experiment", MR1, "QC")
    assert fake_xnat.store.file_path(resource["id"], "again.txt").read_bytes() == b"stored once"


def test_a_file_delete_answered_500_is_sent_again(conn, fake_xnat):
    failing = {"error_rate": 0.5, "error_statuses": (500,)}
    # The HEAD that checks the file exists, then the DELETE.
    fake_xnat.set_faults(**failing, seed=fault_seed([None, 500, None], **failing))
    conn.delete_file(f"/data/experiments/{MR1}/resources/QC", "qc_metrics.csv")
    fake_xnat.set_faults()
    assert [status for method, _t, status in fake_xnat.requests if method == "DELETE"] == [500, 200]
    assert "qc_metrics.csv" not in [f.path for f in conn.list_files(f"/data/experiments/{MR1}/resources/QC")]
