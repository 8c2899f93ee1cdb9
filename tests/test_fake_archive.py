"""The fake XNAT's archive tree: listings, items, prefixes, create/rename/share/delete, workflows."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

from fakeutil import rows

S1, S2 = "XNAT_S00001", "XNAT_S00002"
E1, E2 = "XNAT_E00001", "XNAT_E00002"


def item(http, server, path):
    answer = http.get(server.url + path, params={"format": "json"})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"][0]


def children(node, field):
    return next((c["items"] for c in node["children"] if c["field"] == field), [])


def test_project_listing_and_item(fake_xnat, http):
    projects = rows(http, fake_xnat, "/data/projects")
    assert [p["ID"] for p in projects] == ["STUDY01", "STUDY02"]
    assert set(projects[0]) == {"ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"}
    assert projects[0]["URI"] == "/data/projects/STUDY01"
    assert projects[0]["pi_lastname"] == "Lovelace"
    project = item(http, fake_xnat, "/data/projects/STUDY01")
    assert project["meta"]["xsi:type"] == "xnat:projectData"
    assert project["data_fields"]["name"] == "Sample study one"
    assert http.get(fake_xnat.url + "/data/projects/NOPE?format=json").status_code == 404


@pytest.mark.parametrize("prefix", ["/data", "/data/archive", "/REST"])
def test_all_prefixes_reach_the_same_answers(fake_xnat, http, prefix):
    subjects = rows(http, fake_xnat, f"{prefix}/projects/STUDY01/subjects")
    assert [s["label"] for s in subjects] == ["SUB001", "SUB002", "SUB003"]


def test_subject_listing_has_contract_columns(fake_xnat, http):
    subjects = rows(http, fake_xnat, "/data/projects/STUDY01/subjects")
    first = subjects[0]
    assert set(first) == {"ID", "project", "label", "insert_date", "insert_user", "URI"}
    assert first == {
        "ID": S1,
        "project": "STUDY01",
        "label": "SUB001",
        "insert_date": "2024-01-05 17:02:11.123",
        "insert_user": "admin",
        "URI": f"/data/subjects/{S1}",
    }


def test_shared_subject_listed_under_second_project(fake_xnat, http):
    subjects = {s["label"]: s for s in rows(http, fake_xnat, "/data/projects/STUDY02/subjects")}
    assert set(subjects) == {"SUB001", "SUB101"}
    assert subjects["SUB001"]["project"] == "STUDY01"
    assert subjects["SUB001"]["ID"] == S1
    shared = item(http, fake_xnat, "/data/projects/STUDY02/subjects/SUB001")
    assert shared["data_fields"]["project"] == "STUDY01"
    assert [s["data_fields"]["project"] for s in children(shared, "sharing/share")] == ["STUDY02"]


def test_subject_item_resolves_label_or_id(fake_xnat, http):
    by_label = item(http, fake_xnat, "/data/projects/STUDY01/subjects/SUB001")
    by_id = item(http, fake_xnat, f"/data/projects/STUDY01/subjects/{S1}")
    bare = item(http, fake_xnat, f"/data/subjects/{S1}")
    assert by_label["data_fields"]["ID"] == by_id["data_fields"]["ID"] == bare["data_fields"]["ID"] == S1
    assert by_label["meta"]["xsi:type"] == "xnat:subjectData"
    assert [e["data_fields"]["label"] for e in children(by_label, "experiments/experiment")] == [
        "SUB001_MR1",
        "SUB001_MR2",
    ]
    assert [r["data_fields"]["label"] for r in children(by_label, "resources/resource")] == ["NOTES"]
    # An accession ID of another project's subject is refused; a label alone needs a project.
    assert http.get(fake_xnat.url + f"/data/projects/STUDY02/subjects/{S2}?format=json").status_code == 404
    assert http.get(fake_xnat.url + "/data/subjects/SUB001?format=json").status_code == 404


def test_subject_experiment_listing(fake_xnat, http):
    experiments = rows(http, fake_xnat, "/data/projects/STUDY01/subjects/SUB001/experiments")
    assert [e["label"] for e in experiments] == ["SUB001_MR1", "SUB001_MR2"]
    first = experiments[0]
    assert first["xnat:subjectassessordata/id"] == E1
    assert first["date"] == "2024-01-05"
    assert first["xsiType"] == "xnat:mrSessionData"
    assert first["URI"] == f"/data/experiments/{E1}"


def test_project_wide_experiments_with_columns(fake_xnat, http):
    answer = http.get(fake_xnat.url + "/data/projects/STUDY01/experiments", params={"format": "json"})
    assert answer.json()["ResultSet"]["title"] == "Matching experiments"
    columns = "ID,label,xsiType,date,insert_date,project,subject_ID,subject_label,URI"
    found = rows(http, fake_xnat, "/data/experiments", project="STUDY01", columns=columns)
    assert len(found) == 4
    assert set(found[0]) == set(columns.split(","))
    by_label = {e["label"]: e for e in found}
    assert by_label["SUB002_MR1"]["subject_label"] == "SUB002"
    assert by_label["SUB002_MR1"]["subject_ID"] == S2
    shared = rows(http, fake_xnat, "/data/projects/STUDY02/experiments", columns=columns)
    assert {e["label"]: e["project"] for e in shared} == {"SUB001_MR1": "STUDY01", "SUB101_MR1": "STUDY02"}
    global_study02 = rows(http, fake_xnat, "/data/experiments", project="STUDY02", columns="ID,label")
    assert {e["label"] for e in global_study02} == {"SUB001_MR1", "SUB101_MR1"}
    assert set(global_study02[0]) == {"ID", "label", "URI"}


def test_listing_filters_sorting_paging_and_csv(fake_xnat, http):
    t1 = rows(http, fake_xnat, "/data/projects/STUDY01/experiments", label="SUB00*_MR1")
    assert sorted(e["label"] for e in t1) == ["SUB001_MR1", "SUB002_MR1", "SUB003_MR1"]
    ranged = rows(http, fake_xnat, "/data/projects/STUDY01/experiments", date="01/10/2024-02/01/2024")
    assert sorted(e["label"] for e in ranged) == ["SUB002_MR1", "SUB003_MR1"]
    ordered = rows(http, fake_xnat, "/data/projects/STUDY01/subjects", sortBy="label", sortOrder="DESC")
    assert [s["label"] for s in ordered] == ["SUB003", "SUB002", "SUB001"]
    page = rows(http, fake_xnat, "/data/projects/STUDY01/subjects", limit="1", offset="1")
    assert [s["label"] for s in page] == ["SUB002"]
    text = http.get(
        fake_xnat.url + "/data/projects/STUDY01/subjects", params={"format": "csv", "columns": "label"}
    ).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["label"] for r in table] == ["SUB001", "SUB002", "SUB003"]
    assert table[0]["ID"] == S1
    listing = http.get(fake_xnat.url + "/data/projects", params={"format": "xml"})
    assert ET.fromstring(listing.content).get("totalRecords") == "2"
    assert http.get(fake_xnat.url + "/data/projects", params={"format": "nonsense"}).status_code == 400


def test_experiment_item_anatomy(fake_xnat, http):
    session = item(http, fake_xnat, "/data/projects/STUDY01/subjects/SUB001/experiments/SUB001_MR1")
    for path in (
        f"/data/experiments/{E1}",
        "/data/projects/STUDY01/experiments/SUB001_MR1",
        f"/data/projects/STUDY01/experiments/{E1}",
    ):
        assert item(http, fake_xnat, path)["data_fields"] == session["data_fields"]
    fields = session["data_fields"]
    assert fields["ID"] == fields["id"] == E1
    assert fields["subject_ID"] == S1
    assert fields["project"] == "STUDY01"
    assert fields["date"] == "2024-01-05"
    assert fields["UID"].startswith("2.25.")
    assert session["meta"]["xsi:type"] == "xnat:mrSessionData"
    assert isinstance(session["meta"]["isHistory"], bool)
    scans = children(session, "scans/scan")
    assert [s["data_fields"]["ID"] for s in scans] == ["1", "2", "3", "4", "5"]
    t1 = scans[1]
    assert t1["data_fields"]["type"] == "T1w_MPRAGE"
    assert t1["data_fields"]["xnat_imagescandata_id"] == t1["data_fields"]["xnat_imageScanData_id"]
    assert isinstance(t1["data_fields"]["frames"], int)
    files = {f["data_fields"]["label"]: f["data_fields"] for f in children(t1, "file")}
    assert files["DICOM"]["format"] == "DICOM" and files["DICOM"]["content"] == "RAW"
    assert files["DICOM"]["file_count"] == 20
    assert files["DICOM"]["xnat_abstractresource_id"] == files["DICOM"]["xnat_abstractResource_id"]
    assert files["SNAPSHOTS"]["file_count"] == 2
    resources = children(session, "resources/resource")
    assert [r["data_fields"]["label"] for r in resources] == ["QC"]
    assert resources[0]["meta"]["xsi:type"] == "xnat:resourceCatalog"
    shares = children(session, "sharing/share")
    assert shares[0]["data_fields"]["project"] == "STUDY02"
    assert shares[0]["data_fields"]["label"] == "SUB001_MR1"


def test_an_items_start_date_is_when_it_was_stored_not_when_it_was_asked_for(fake_xnat, http):
    # XNAT's meta.start_date is when the item's current version began: the same in every
    # answer. Clients take a session's time from it when its insert_date is not at hand.
    listed = {e["ID"]: e["insert_date"] for e in rows(http, fake_xnat, "/data/projects/STUDY01/experiments")}
    session = item(http, fake_xnat, f"/data/experiments/{E1}")
    started = datetime.strptime(session["meta"]["start_date"], "%a %b %d %H:%M:%S %Z %Y")
    assert started.strftime("%Y-%m-%d %H:%M:%S") == listed[E1][:19]
    for scan in children(session, "scans/scan"):
        assert scan["meta"]["start_date"] == session["meta"]["start_date"]


def test_shared_experiment_through_second_project(fake_xnat, http):
    shared = item(http, fake_xnat, "/data/projects/STUDY02/subjects/SUB001/experiments/SUB001_MR1")
    assert shared["data_fields"]["project"] == "STUDY01"
    answer = http.get(
        fake_xnat.url + "/data/projects/STUDY02/experiments/SUB001_MR1/scans/2/resources/DICOM/files/2-0001.dcm"
    )
    direct = http.get(fake_xnat.url + f"/data/experiments/{E1}/scans/2/resources/DICOM/files/2-0001.dcm")
    assert answer.status_code == 200 and answer.content == direct.content


def test_item_xml_by_default(fake_xnat, http):
    answer = http.get(fake_xnat.url + "/data/projects/STUDY01/subjects/SUB001")
    root = ET.fromstring(answer.content)
    assert root.tag == "{http://nrg.wustl.edu/xnat}Subject"
    assert root.get("label") == "SUB001"


def test_scans_listing_and_item(fake_xnat, http):
    scans = rows(http, fake_xnat, f"/data/experiments/{E1}/scans")
    assert [s["ID"] for s in scans] == ["1", "2", "3", "4", "5"]
    assert set(scans[0]) == {
        "xsiType",
        "xnat_imagescandata_id",
        "note",
        "series_description",
        "ID",
        "type",
        "URI",
        "quality",
    }
    assert scans[1]["URI"] == f"/data/experiments/{E1}/scans/2"
    quality = {s["ID"]: s["quality"] for s in rows(http, fake_xnat, "/data/experiments/XNAT_E00003/scans")}
    assert quality["6"] == "questionable"
    scan = item(http, fake_xnat, f"/data/experiments/{E1}/scans/2")
    assert scan["data_fields"]["series_description"] == "T1w_MPRAGE"
    by_type = item(http, fake_xnat, f"/data/experiments/{E1}/scans/T2w_SPC")
    assert by_type["data_fields"]["ID"] == "3"
    two = rows(http, fake_xnat, f"/data/experiments/{E1}/scans/1,2")
    assert [s["ID"] for s in two] == ["1", "2"]
    assert http.get(fake_xnat.url + f"/data/experiments/{E1}/scans/99?format=json").status_code == 404


def test_create_subject_and_experiment(fake_xnat, http):
    created = http.put(fake_xnat.url + "/data/projects/STUDY01/subjects/NEW01")
    assert created.status_code == 201
    assert created.text.startswith("XNAT_S")
    again = http.put(fake_xnat.url + "/data/projects/STUDY01/subjects/NEW01")
    assert again.status_code == 200 and again.text == created.text
    no_type = http.put(fake_xnat.url + "/data/projects/STUDY01/subjects/NEW01/experiments/NEW01_MR1")
    assert no_type.status_code == 417
    experiment = http.put(
        fake_xnat.url + "/data/projects/STUDY01/subjects/NEW01/experiments/NEW01_MR1",
        params={"xsiType": "xnat:mrSessionData", "xnat:mrSessionData/date": "03/04/2024"},
    )
    assert experiment.status_code == 201
    fields = item(http, fake_xnat, f"/data/experiments/{experiment.text}")["data_fields"]
    assert fields["label"] == "NEW01_MR1" and fields["date"] == "2024-03-04"
    listed = rows(http, fake_xnat, "/data/projects/STUDY01/experiments")
    assert "NEW01_MR1" in {e["label"] for e in listed}
    auto = http.put(
        fake_xnat.url + "/data/projects/STUDY01/subjects/AUTO/experiments/AUTO_MR1",
        params={"xsiType": "xnat:mrSessionData"},
    )
    assert auto.status_code == 201
    assert "AUTO" in {s["label"] for s in rows(http, fake_xnat, "/data/projects/STUDY01/subjects")}


def test_invalid_labels_are_417(fake_xnat, http):
    assert http.put(fake_xnat.url + "/data/projects/STUDY01/subjects/bad%20label").status_code == 417
    assert (
        http.put(fake_xnat.url + "/data/projects/STUDY01/subjects/SUB001", params={"label": "no/slash"}).status_code
        == 417
    )
    assert (
        http.put(
            fake_xnat.url + "/data/projects/STUDY01/subjects/SUB001/experiments/x.y",
            params={"xsiType": "xnat:mrSessionData"},
        ).status_code
        == 417
    )


def test_rename_subject_and_experiment(fake_xnat, http):
    url = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB003"
    assert http.put(url, params={"label": "SUB002"}).status_code == 409
    assert http.put(url, params={"label": "SUB003", "xsiType": "xnat:mrSessionData"}).status_code == 422
    assert http.put(url, params={"label": "SUB003"}).status_code == 200
    assert http.put(url, params={"label": "SUB099", "xsiType": "xnat:subjectData"}).status_code == 200
    assert {s["label"] for s in rows(http, fake_xnat, "/data/projects/STUDY01/subjects")} == {
        "SUB001",
        "SUB002",
        "SUB099",
    }
    experiment = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB099/experiments/SUB003_MR1"
    assert http.put(experiment, params={"label": "SUB002_MR1", "xsiType": "xnat:mrSessionData"}).status_code == 409
    assert http.put(experiment, params={"label": "SUB099_MR1", "xsiType": "xnat:mrSessionData"}).status_code == 200
    assert fake_xnat.store.experiment_id("STUDY01", "SUB099_MR1") == "XNAT_E00004"


def test_open_workflow_blocks_renames_until_dismissed(fake_xnat, http):
    workflow_id = fake_xnat.store.add_workflow(E1)
    subject = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB001"
    experiment = subject + "/experiments/SUB001_MR1"
    blocked = http.put(experiment, params={"label": "RENAMED", "xsiType": "xnat:mrSessionData"})
    assert blocked.status_code == 409
    assert "being processed" in blocked.text
    assert http.put(subject, params={"label": "SUBX"}).status_code == 409
    bundle = f"""<xdat:bundle xmlns:xdat="http://nrg.wustl.edu/security" ID="@wrk:workflowData">
      <xdat:root_element_name>wrk:workflowData</xdat:root_element_name>
      <xdat:search_field><xdat:element_name>wrk:workflowData</xdat:element_name>
        <xdat:field_ID>pipeline_name</xdat:field_ID></xdat:search_field>
      <xdat:search_where method="AND">
        <xdat:criteria override_value_formatting="0">
          <xdat:schema_field>wrk:workflowData/ID</xdat:schema_field>
          <xdat:comparison_type>LIKE</xdat:comparison_type><xdat:value>{E1}</xdat:value></xdat:criteria>
        <xdat:criteria override_value_formatting="0">
          <xdat:schema_field>wrk:workflowData/ExternalID</xdat:schema_field>
          <xdat:comparison_type>=</xdat:comparison_type><xdat:value>STUDY01</xdat:value></xdat:criteria>
        <xdat:criteria override_value_formatting="0">
          <xdat:schema_field>wrk:workflowData/pipeline_name</xdat:schema_field>
          <xdat:comparison_type>=</xdat:comparison_type><xdat:value>xnat_tools/AutoRun.xml</xdat:value>
        </xdat:criteria></xdat:search_where></xdat:bundle>"""
    found = http.post(fake_xnat.url + "/data/search?format=json", data=bundle)
    assert found.status_code == 200
    result = found.json()["ResultSet"]["Result"]
    assert [r["workflow_id"] for r in result] == [str(workflow_id)]
    assert f'"workflow_id": "{workflow_id}"' in found.text
    wf_url = f"{fake_xnat.url}/data/workflows/{workflow_id}"
    assert http.get(wf_url, params={"format": "json"}).json()["items"][0]["data_fields"]["status"] == "Queued"
    assert http.put(wf_url, params={"wrk:workflowData/status": "Complete"}).status_code == 200
    assert http.get(wf_url, params={"format": "json"}).json()["items"][0]["data_fields"]["status"] == "Complete"
    assert http.put(experiment, params={"label": "RENAMED", "xsiType": "xnat:mrSessionData"}).status_code == 200
    none_left = http.post(fake_xnat.url + "/data/search?format=json", data=bundle.replace(E1, "XNAT_E99999")).json()[
        "ResultSet"
    ]["Result"]
    assert none_left == []
    assert http.post(fake_xnat.url + "/data/search?format=json", data="<not xml").status_code == 400
    assert http.get(fake_xnat.url + "/data/workflows/424242?format=json").status_code == 404


def test_share_and_unshare(fake_xnat, http):
    share = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB002/projects/STUDY02"
    assert http.put(share, params={"label": "SHARED02"}).status_code == 200
    assert http.put(share, params={"label": "OTHER"}).status_code == 409
    labels = {s["label"] for s in rows(http, fake_xnat, "/data/projects/STUDY02/subjects")}
    assert "SHARED02" in labels
    clash = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB003/projects/STUDY02"
    assert http.put(clash, params={"label": "SUB101"}).status_code == 409
    assert http.put(fake_xnat.url + "/data/projects/STUDY01/subjects/SUB003/projects/NOPE").status_code == 404
    experiment_share = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB002/experiments/SUB002_MR1/projects/STUDY02"
    assert http.put(experiment_share).status_code == 200
    assert "SUB002_MR1" in {e["label"] for e in rows(http, fake_xnat, "/data/projects/STUDY02/experiments")}
    # Deleting through the sharing project removes only the share.
    assert http.delete(fake_xnat.url + "/data/projects/STUDY02/subjects/SHARED02").status_code == 200
    assert fake_xnat.store.subject(S2) is not None
    assert "SHARED02" not in {s["label"] for s in rows(http, fake_xnat, "/data/projects/STUDY02/subjects")}


def test_delete_experiment_subject_and_project(fake_xnat, http):
    experiment = fake_xnat.url + "/data/projects/STUDY01/subjects/SUB001/experiments/SUB001_MR2"
    assert http.delete(experiment, params={"removeFiles": "true"}).status_code == 200
    assert http.get(experiment + "?format=json").status_code == 404
    assert http.delete(experiment).status_code == 404
    assert http.delete(fake_xnat.url + "/data/projects/STUDY01/subjects/SUB003").status_code == 200
    assert {s["label"] for s in rows(http, fake_xnat, "/data/projects/STUDY01/subjects")} == {"SUB001", "SUB002"}
    assert http.put(fake_xnat.url + "/data/projects/TEMP").status_code == 201
    assert http.delete(fake_xnat.url + "/data/projects/TEMP").status_code == 200
    assert http.get(fake_xnat.url + "/data/projects/TEMP?format=json").status_code == 404


def test_scan_create_update_delete(fake_xnat, http):
    scan = fake_xnat.url + f"/data/experiments/{E2}/scans/7"
    assert (
        http.put(
            scan, params={"xsiType": "xnat:mrScanData", "xnat:mrScanData/type": "T1w_extra", "quality": "unusable"}
        ).status_code
        == 200
    )
    fields = item(http, fake_xnat, f"/data/experiments/{E2}/scans/7")["data_fields"]
    assert fields["type"] == "T1w_extra" and fields["quality"] == "unusable"
    assert http.put(scan, params={"quality": "usable"}).status_code == 200
    assert item(http, fake_xnat, f"/data/experiments/{E2}/scans/7")["data_fields"]["quality"] == "usable"
    assert http.delete(scan).status_code == 200
    assert http.get(scan + "?format=json").status_code == 404


def test_wrong_methods_are_405(fake_xnat, http):
    assert http.post(fake_xnat.url + "/data/projects").status_code == 405
    assert http.delete(fake_xnat.url + f"/data/experiments/{E1}/scans").status_code == 405


def test_assessors_listing_is_empty(fake_xnat, http):
    assert rows(http, fake_xnat, f"/data/experiments/{E1}/assessors") == []
