"""Listings whose columns reach into child tables (scans, resources), as XNAT's search builds them."""

from __future__ import annotations

SCAN_COLUMNS = "ID,xnat:imagescandata/id,xnat:imagescandata/type,xnat:imagescandata/file/label"


def result(answer) -> list[dict]:
    assert answer.status_code == 200, answer.text
    return answer.json()["ResultSet"]["Result"]


def test_one_row_per_scan_resource_with_lower_case_names(fake_xnat, http):
    rows = result(
        http.get(
            f"{fake_xnat.url}/data/experiments",
            params={"project": "STUDY01", "format": "json", "columns": SCAN_COLUMNS},
        )
    )
    store = fake_xnat.store
    expected = set()
    for experiment in store.experiments_in("STUDY01"):
        for scan in store.scans(experiment["id"]):
            for resource in store.resources("scan", str(scan["pk"])):
                expected.add((experiment["id"], scan["scan_id"], scan["type"], resource["label"]))
    got = {
        (r["ID"], r["xnat:imagescandata/id"], r["xnat:imagescandata/type"], r["xnat:imagescandata/file/label"])
        for r in rows
    }
    assert got == expected
    assert len(rows) == len(expected)


def test_a_parent_without_children_gives_one_row_with_empty_columns(fake_xnat, http):
    store = fake_xnat.store
    subject = store.add_subject("STUDY01", "EMPTY01")
    bare = store.add_experiment("STUDY01", subject, "EMPTY01_MR1")
    rows = result(
        http.get(
            f"{fake_xnat.url}/data/experiments",
            params={
                "project": "STUDY01",
                "format": "json",
                "columns": "ID,xnat:experimentdata/resources/resource/label," + SCAN_COLUMNS,
            },
        )
    )
    mine = [r for r in rows if r["ID"] == bare]
    assert mine == [
        {
            "ID": bare,
            "xnat:experimentdata/resources/resource/label": "",
            "xnat:imagescandata/id": "",
            "xnat:imagescandata/type": "",
            "xnat:imagescandata/file/label": "",
            "URI": f"/data/experiments/{bare}",
        }
    ]
    subjects = result(
        http.get(
            f"{fake_xnat.url}/data/projects/STUDY01/subjects",
            params={"format": "json", "columns": "ID,xnat:subjectdata/resources/resource/label"},
        )
    )
    labels = {(r["ID"], r["xnat:subjectdata/resources/resource/label"]) for r in subjects}
    assert (subject, "") in labels
    for row in store.subjects_in("STUDY01"):
        for resource in store.resources("subject", row["id"]):
            assert (row["id"], resource["label"]) in labels


def test_unknown_child_fields_and_servers_without_the_search_answer_400(fake_xnat, http):
    answer = http.get(
        f"{fake_xnat.url}/data/experiments",
        params={"project": "STUDY01", "format": "json", "columns": "ID,xnat:imagescandata/nonsense"},
    )
    assert answer.status_code == 400
    assert "nonsense" in answer.text
    fake_xnat.child_searches = False
    answer = http.get(
        f"{fake_xnat.url}/data/experiments", params={"project": "STUDY01", "format": "json", "columns": SCAN_COLUMNS}
    )
    assert answer.status_code == 400
    plain = http.get(f"{fake_xnat.url}/data/experiments", params={"project": "STUDY01", "format": "json"})
    assert plain.status_code == 200
