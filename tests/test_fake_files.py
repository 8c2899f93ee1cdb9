"""The fake XNAT's resources and files: listings, downloads, archives, uploads, deletes."""

from __future__ import annotations

import hashlib
import io
import tarfile
import xml.etree.ElementTree as ET
import zipfile

import pytest

from fakeutil import listing

E1 = "XNAT_E00001"
S1 = "XNAT_S00001"
SCAN2 = f"/data/experiments/{E1}/scans/2"


def test_resource_listings_at_every_level(fake_xnat, http):
    session = listing(http, fake_xnat, f"/data/experiments/{E1}/resources")
    assert session["title"] == "Resources"
    row = session["Result"][0]
    assert set(row) == {
        "xnat_abstractresource_id",
        "label",
        "element_name",
        "category",
        "cat_id",
        "cat_desc",
        "format",
        "content",
        "tags",
        "file_count",
        "file_size",
    }
    assert row["label"] == "QC" and row["element_name"] == "xnat:resourceCatalog"
    assert row["file_count"] == "2"
    scan = listing(http, fake_xnat, f"{SCAN2}/resources")["Result"]
    assert [r["label"] for r in scan] == ["DICOM", "SNAPSHOTS"]
    assert [
        r["label"] for r in listing(http, fake_xnat, "/data/projects/STUDY01/subjects/SUB001/resources")["Result"]
    ] == ["NOTES"]
    assert [r["label"] for r in listing(http, fake_xnat, "/data/projects/STUDY01/resources")["Result"]] == ["PROTOCOLS"]
    # Resource listings ignore columns= and never carry ID or URI.
    asked = listing(http, fake_xnat, f"{SCAN2}/resources", columns="ID,URI,label")["Result"][0]
    assert "ID" not in asked and "URI" not in asked


def test_file_listing_rows(fake_xnat, http):
    result = listing(http, fake_xnat, f"{SCAN2}/resources/DICOM/files")
    assert result["title"] == "Files"
    assert result["Columns"] == [{"key": "URI", "serverRoot": ""}]
    files = result["Result"]
    assert len(files) == 20
    first = files[0]
    assert set(first) == {
        "Name",
        "Size",
        "URI",
        "collection",
        "file_tags",
        "file_format",
        "file_content",
        "cat_ID",
        "digest",
    }
    resource_id = first["cat_ID"]
    assert first["URI"] == f"{SCAN2}/resources/{resource_id}/files/2-0001.dcm"
    assert first["collection"] == "DICOM"
    body = http.get(fake_xnat.url + first["URI"]).content
    assert int(first["Size"]) == len(body)
    assert first["digest"] == hashlib.md5(body).hexdigest()
    by_id = listing(http, fake_xnat, f"{SCAN2}/resources/{resource_id}/files")["Result"]
    assert by_id == files


def test_experiment_files_session_level_and_all(fake_xnat, http):
    session_only = listing(http, fake_xnat, f"/data/experiments/{E1}/files")["Result"]
    assert {f["Name"] for f in session_only} == {"qc_report.pdf", "qc_metrics.csv"}
    everything = listing(http, fake_xnat, f"/data/experiments/{E1}/files", all="true")["Result"]
    assert len(everything) == 2 + 9 + 20 + 20 + 60 + 84 + 2 + 2
    scan3 = [f for f in everything if "/scans/3/" in f["URI"]]
    assert {f["collection"] for f in scan3} == {"DICOM", "SNAPSHOTS"}
    assert all(f["URI"].startswith(f"/data/experiments/{E1}/") for f in everything)
    through_project = listing(
        http, fake_xnat, "/data/projects/STUDY01/subjects/SUB001/experiments/SUB001_MR1/files", all="true"
    )["Result"]
    assert through_project == everything


def test_scan_files_listings(fake_xnat, http):
    scan = listing(http, fake_xnat, f"{SCAN2}/files")["Result"]
    assert {f["collection"] for f in scan} == {"DICOM", "SNAPSHOTS"}
    two = listing(http, fake_xnat, f"/data/experiments/{E1}/scans/1,2/files")["Result"]
    assert len(two) == 9 + 22


def test_download_headers(fake_xnat, http):
    answer = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files/2-0001.dcm")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    assert "Last-Modified" in answer.headers
    assert answer.headers["Cache-Control"] == "must-revalidate"
    assert answer.content[128:132] == b"DICM"
    pdf = http.get(fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/qc_report.pdf")
    assert pdf.headers["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    png = http.get(fake_xnat.url + f"{SCAN2}/resources/SNAPSHOTS/files/2_qc.png")
    assert png.content.startswith(b"\x89PNG")
    missing = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files/nope.dcm")
    assert missing.status_code == 404 and "Unable to find file" in missing.text
    escape = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files/..%2F..%2Fxnat.db")
    assert escape.status_code == 404


def test_zip_of_a_scan_resource(fake_xnat, http):
    answer = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files", params={"format": "zip"})
    assert answer.status_code == 200
    assert answer.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in answer.headers
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    names = archive.namelist()
    assert len(names) == 20
    assert names[0] == "SUB001_MR1/scans/2-T1w_MPRAGE/resources/DICOM/files/2-0001.dcm"
    assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    single = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files/2-0001.dcm").content
    assert archive.read(names[0]) == single


def test_zip_of_scans_session_and_structures(fake_xnat, http):
    several = zipfile.ZipFile(
        io.BytesIO(http.get(fake_xnat.url + f"/data/experiments/{E1}/scans/1,2/files?format=zip").content)
    ).namelist()
    assert len(several) == 9 + 22
    whole = zipfile.ZipFile(
        io.BytesIO(http.get(fake_xnat.url + f"/data/experiments/{E1}/scans/ALL/files?format=zip").content)
    ).namelist()
    assert len(whole) == 9 + 22 + 22 + 60 + 84
    improved = zipfile.ZipFile(
        io.BytesIO(http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files?format=zip&structure=improved").content)
    ).namelist()
    assert improved[0] == "scans/2_T1w_MPRAGE/DICOM/2-0001.dcm"
    simplified = zipfile.ZipFile(
        io.BytesIO(http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files?format=zip&structure=simplified").content)
    ).namelist()
    assert simplified[0] == "SUB001_MR1/scans/2-T1w_MPRAGE/DICOM/2-0001.dcm"
    session = zipfile.ZipFile(
        io.BytesIO(http.get(fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files?format=zip").content)
    ).namelist()
    assert "SUB001_MR1/resources/QC/files/qc_report.pdf" in session
    everything = zipfile.ZipFile(
        io.BytesIO(http.get(fake_xnat.url + f"/data/experiments/{E1}/files?format=zip&all=true").content)
    ).namelist()
    assert len(everything) == len(whole) + 2
    assert "SUB001_MR1/resources/QC/files/qc_metrics.csv" in everything
    empty = http.put(fake_xnat.url + f"/data/experiments/{E1}/resources/EMPTY")
    assert empty.status_code == 200
    assert http.get(fake_xnat.url + f"/data/experiments/{E1}/resources/EMPTY/files?format=zip").status_code == 404


def test_archive_of_one_file(fake_xnat, http):
    address = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/qc_metrics.csv"
    raw = http.get(address).content
    answer = http.get(address, params={"format": "zip"})
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.namelist() == ["SUB001_MR1/resources/QC/files/qc_metrics.csv"]
        assert archive.read("SUB001_MR1/resources/QC/files/qc_metrics.csv") == raw
    with tarfile.open(fileobj=io.BytesIO(http.get(address, params={"format": "tar"}).content)) as archive:
        assert archive.getnames() == ["SUB001_MR1/resources/QC/files/qc_metrics.csv"]
    assert http.get(address.replace("qc_metrics", "nope"), params={"format": "zip"}).status_code == 404


@pytest.mark.parametrize("fmt, mode", [("tar", "r:"), ("tar.gz", "r:gz")])
def test_tar_downloads(fake_xnat, http, fmt, mode):
    answer = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files", params={"format": fmt})
    assert answer.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(answer.content), mode=mode) as archive:
        members = archive.getmembers()
        assert len(members) == 20
        first = archive.extractfile(members[0]).read()
    assert first == http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM/files/2-0001.dcm").content


def test_catalog_xml(fake_xnat, http):
    answer = http.get(fake_xnat.url + f"{SCAN2}/resources/DICOM")
    assert answer.status_code == 200
    root = ET.fromstring(answer.content)
    ns = {"cat": "http://nrg.wustl.edu/catalog"}
    assert root.tag == "{http://nrg.wustl.edu/catalog}DCMCatalog"
    entries = root.findall("cat:entries/cat:entry", ns)
    assert len(entries) == 20
    assert entries[0].get("URI") == "2-0001.dcm" and len(entries[0].get("digest")) == 32
    qc = ET.fromstring(http.get(fake_xnat.url + f"/data/experiments/{E1}/resources/QC?format=xml").content)
    assert qc.tag == "{http://nrg.wustl.edu/catalog}Catalog"
    assert http.get(fake_xnat.url + f"{SCAN2}/resources/NOPE").status_code == 404


def test_create_and_delete_resources(fake_xnat, http):
    url = fake_xnat.url + f"/data/experiments/{E1}/resources/NIFTI"
    assert http.put(url, params={"format": "NIFTI", "content": "DERIVED"}).status_code == 200
    conflict = http.put(url)
    assert conflict.status_code == 409 and "already exists" in conflict.text
    rows = listing(http, fake_xnat, f"/data/experiments/{E1}/resources")["Result"]
    row = next(r for r in rows if r["label"] == "NIFTI")
    assert row["format"] == "NIFTI" and row["file_count"] == "0"
    assert http.put(fake_xnat.url + f"/data/subjects/{S1}/resources/EXTRA").status_code == 200
    assert http.put(fake_xnat.url + "/data/projects/STUDY02/resources/DOCS").status_code == 200
    assert http.delete(url, params={"removeFiles": "true"}).status_code == 200
    assert http.delete(url).status_code == 404


def test_upload_in_body_and_duplicates(fake_xnat, http):
    resource = fake_xnat.url + f"/data/experiments/{E1}/resources/NIFTI"
    assert http.put(resource).status_code == 200
    target = resource + "/files/sub/dir/brain.nii.gz"
    first = http.put(target, params={"inbody": "true", "format": "NIFTI"}, data=b"first version")
    assert first.status_code == 200 and first.text == ""
    again = http.put(target, params={"inbody": "true"}, data=b"second version")
    assert again.status_code == 200
    assert again.json() == {"duplicates": ["sub/dir/brain.nii.gz"]}
    assert http.get(target).content == b"first version"
    replaced = http.post(target, params={"inbody": "true", "overwrite": "true"}, data=b"second version")
    assert replaced.status_code == 200
    assert http.get(target).content == b"second version"
    row = listing(http, fake_xnat, f"/data/experiments/{E1}/resources/NIFTI/files")["Result"][0]
    assert row["URI"].endswith("/files/sub/dir/brain.nii.gz")
    assert row["digest"] == hashlib.md5(b"second version").hexdigest()
    assert row["file_format"] == "NIFTI"


def test_upload_streams_chunked_bodies(fake_xnat, http):
    chunks = [b"x" * 100_000, b"y" * 50_000, b"z"]
    target = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/streamed.bin"
    answer = http.put(target, params={"inbody": "true"}, data=iter(chunks))
    assert answer.status_code == 200
    assert http.get(target).content == b"".join(chunks)


def test_upload_errors(fake_xnat, http):
    target = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/empty.txt"
    assert http.put(target, params={"inbody": "true"}, data=b"").status_code == 400
    multipart = http.put(target, params={"inbody": "true"}, files={"file": ("a.txt", b"abc")})
    assert multipart.status_code == 406
    assert (
        http.put(
            fake_xnat.url + "/data/experiments/XNAT_E09999/resources/QC/files/a.txt",
            params={"inbody": "true"},
            data=b"abc",
        ).status_code
        == 404
    )
    assert (
        http.put(
            fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/a/%2E%2E/%2E%2E/b",
            params={"inbody": "true"},
            data=b"abc",
        ).status_code
        == 400
    )


def test_multipart_upload(fake_xnat, http):
    target = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/notes.txt"
    answer = http.post(target, files={"file": ("notes.txt", b"from a form")})
    assert answer.status_code == 200
    assert http.get(target).content == b"from a form"


def test_upload_creates_missing_resource(fake_xnat, http):
    target = fake_xnat.url + f"{SCAN2}/resources/NIFTI/files/t1.nii"
    assert http.put(target, params={"inbody": "true"}, data=b"nifti").status_code == 200
    assert "NIFTI" in [r["label"] for r in listing(http, fake_xnat, f"{SCAN2}/resources")["Result"]]


def test_upload_with_extract(fake_xnat, http):
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("a.txt", b"A")
        archive.writestr("deep/b.txt", b"B")
    target = fake_xnat.url + f"/data/experiments/{E1}/resources/UNPACKED/files/bundle.zip"
    answer = http.put(target, params={"inbody": "true", "extract": "true"}, data=packed.getvalue())
    assert answer.status_code == 200
    files = {
        f["URI"].split("/files/", 1)[1]
        for f in listing(http, fake_xnat, f"/data/experiments/{E1}/resources/UNPACKED/files")["Result"]
    }
    assert files == {"a.txt", "deep/b.txt"}
    again = http.put(target, params={"inbody": "true", "extract": "true"}, data=packed.getvalue())
    assert sorted(again.json()["duplicates"]) == ["a.txt", "deep/b.txt"]
    broken = http.put(target, params={"inbody": "true", "extract": "true", "overwrite": "true"}, data=b"not a zip")
    assert broken.status_code == 400


def test_delete_file(fake_xnat, http):
    url = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/qc_metrics.csv"
    assert http.delete(url).status_code == 200
    assert http.get(url).status_code == 404
    names = [f["Name"] for f in listing(http, fake_xnat, f"/data/experiments/{E1}/resources/QC/files")["Result"]]
    assert names == ["qc_report.pdf"]
    assert http.delete(url).status_code == 200
    assert http.delete(fake_xnat.url + f"/data/experiments/{E1}/resources/NOPE/files/x").status_code == 404
    fake_xnat.store.put_file(E1, "QC", "folder/a.txt", b"a")
    fake_xnat.store.put_file(E1, "QC", "folder/b.txt", b"b")
    assert http.delete(fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/folder").status_code == 200
    names = [f["Name"] for f in listing(http, fake_xnat, f"/data/experiments/{E1}/resources/QC/files")["Result"]]
    assert names == ["qc_report.pdf"]


def test_store_changes_behind_the_servers_back(fake_xnat, http):
    store = fake_xnat.store
    url = fake_xnat.url + f"{SCAN2}/resources/DICOM/files/2-0001.dcm"
    original = http.get(url).content
    store.put_file(E1, "DICOM", "2-0001.dcm", b"changed", scan_id="2")
    assert http.get(url).content == b"changed"
    row = next(
        f for f in listing(http, fake_xnat, f"{SCAN2}/resources/DICOM/files")["Result"] if f["Name"] == "2-0001.dcm"
    )
    assert row["Size"] == "7" and row["digest"] == hashlib.md5(b"changed").hexdigest()
    assert store.delete_file(E1, "DICOM", "2-0001.dcm", scan_id="2")
    assert http.get(url).status_code == 404
    subject_id = store.add_subject("STUDY01", "LATE")
    store.put_subject_file(subject_id, "NOTES", "n.txt", b"n")
    store.put_project_file("STUDY01", "PROTOCOLS", "extra.txt", b"e")
    assert http.get(fake_xnat.url + f"/data/subjects/{subject_id}/resources/NOTES/files/n.txt").content == b"n"
    assert http.get(fake_xnat.url + "/data/projects/STUDY01/resources/PROTOCOLS/files/extra.txt").content == b"e"
    # The template the fixture copied from is untouched by the change above.
    assert len(original) > 7


def test_large_file_streams(fake_xnat, http, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        for index in range(24):
            out.write(bytes([index]) * (1 << 20))
    fake_xnat.store.put_file(E1, "RAW", "big.bin", big)
    answer = http.get(fake_xnat.url + f"/data/experiments/{E1}/resources/RAW/files/big.bin", stream=True)
    digest = hashlib.md5()
    for chunk in answer.iter_content(1 << 20):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.md5(big.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["back%5Cslash.txt", "new%0Aline.txt", "tab%09here.txt", "bell%07.txt"])
def test_file_paths_xnat_cannot_store_are_refused(fake_xnat, http, name):
    target = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/{name}"
    assert http.put(target, params={"inbody": "true"}, data=b"abc").status_code == 400
    rows = listing(http, fake_xnat, f"/data/experiments/{E1}/resources/QC/files")["Result"]
    assert all(row["Name"] in ("qc_metrics.csv", "qc_report.pdf") for row in rows)


def test_file_paths_with_spaces_and_other_scripts_are_kept_as_given(fake_xnat, http):
    target = fake_xnat.url + f"/data/experiments/{E1}/resources/QC/files/%20r%C3%A9sum%C3%A9%20final%20.txt"
    assert http.put(target, params={"inbody": "true"}, data=b"abc").status_code == 200
    rows = listing(http, fake_xnat, f"/data/experiments/{E1}/resources/QC/files")["Result"]
    assert " résumé final .txt" in [row["Name"] for row in rows]
