"""Reading XNAT's JSON shapes, building server paths, and naming scans."""

from datetime import datetime

import pytest

from xnatfs.client import naming, parsing, paths
from xnatfs.client.http import server_message
from xnatfs.errors import XnatServerError


def test_listing_rows_and_malformed_listings():
    document = {"ResultSet": {"Result": [{"ID": "P1"}], "totalRecords": "1"}}
    assert parsing.rows(document) == [{"ID": "P1"}]
    with pytest.raises(XnatServerError):
        parsing.rows({"items": []})
    with pytest.raises(XnatServerError):
        parsing.rows({"ResultSet": {"Result": "nope"}})


def test_history_items_are_skipped():
    document = {
        "items": [
            {"meta": {"isHistory": True}, "data_fields": {"ID": "old"}},
            {"meta": {"isHistory": False}, "data_fields": {"ID": "current"}},
        ]
    }
    assert parsing.first_item(document)["data_fields"]["ID"] == "current"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2018-05-14 15:17:57.815", datetime(2018, 5, 14, 15, 17, 57, 815000)),
        ("2018-05-14 15:17:57", datetime(2018, 5, 14, 15, 17, 57)),
        ("Fri Apr 17 13:48:24 EDT 2015", datetime(2015, 4, 17, 13, 48, 24)),
        ("", None),
        ("garbage", None),
    ],
)
def test_xnat_timestamps(text, expected):
    assert parsing.parse_datetime(text) == expected


def test_experiment_rows_mark_shared_ones():
    row = {
        "ID": "E1",
        "label": "S1_MR1",
        "project": "OWNER",
        "subject_ID": "S1",
        "subject_label": "SUB",
        "xsiType": "xnat:mrSessionData",
        "date": "2020-01-02",
        "insert_date": "2021-03-18 11:33:11.835",
        "URI": "/data/experiments/E1",
    }
    own = parsing.experiment_from_row(row, "OWNER")
    shared = parsing.experiment_from_row(row, "OTHER")
    assert not own.shared and shared.shared
    assert own.insert_date == datetime(2021, 3, 18, 11, 33, 11, 835000)
    assert own.uri == "/data/experiments/E1"


def test_file_row_resource_address_uses_the_label():
    row = {
        "Name": "a b.dcm",
        "Size": "1234",
        "collection": "DICOM",
        "digest": "abc",
        "URI": "/data/experiments/E1/scans/3/resources/77/files/sub%20dir/a%20b.dcm",
    }
    remote = parsing.file_from_row(row)
    assert remote.path == "sub dir/a b.dcm"
    assert remote.size == 1234
    assert remote.resource_uri == "/data/experiments/E1/scans/3/resources/DICOM"
    assert remote.uri == "/data/experiments/E1/scans/3/resources/77/files/sub%20dir/a%20b.dcm"


def test_file_row_as_xnat_lists_it_keeps_the_raw_path_and_quotes_the_address_once():
    # XNAT appends the stored relative path to the URI without encoding it.
    for raw, quoted in (
        ("b0dwi+00001.dcm", "b0dwi%2B00001.dcm"),
        ("%41.txt", "%2541.txt"),
        ("sub dir/ha#sh?.txt", "sub%20dir/ha%23sh%3F.txt"),
    ):
        row = {
            "Name": raw.rsplit("/", 1)[-1],
            "Size": "3",
            "collection": "QC",
            "URI": f"/data/experiments/E1/resources/12/files/{raw}",
        }
        remote = parsing.file_from_row(row)
        assert remote.path == raw
        assert remote.uri == f"/data/experiments/E1/resources/12/files/{quoted}"


def test_file_row_from_a_server_that_encodes_the_path_is_decoded_once():
    row = {
        "Name": "%41 b+.txt",
        "Size": "3",
        "collection": "QC",
        "URI": "/data/experiments/E1/resources/12/files/d%20x/%2541%20b%2B.txt",
    }
    remote = parsing.file_from_row(row)
    assert remote.path == "d x/%41 b+.txt"
    assert remote.uri == "/data/experiments/E1/resources/12/files/d%20x/%2541%20b%2B.txt"


def test_file_row_path_may_itself_contain_files():
    row = {"Size": "1", "collection": "R", "URI": "/REST/projects/P/resources/9/files/files/x/files/y.txt"}
    remote = parsing.file_from_row(row)
    assert remote.path == "files/x/files/y.txt"
    assert remote.resource_uri == "/data/projects/P/resources/R"


def test_experiment_contents_from_item_json():
    item = {
        "meta": {"xsi:type": "xnat:mrSessionData", "start_date": "Fri Apr 17 13:48:24 EDT 2015"},
        "data_fields": {"ID": "E1", "label": "MR1"},
        "children": [
            {
                "field": "scans/scan",
                "items": [
                    {
                        "meta": {"xsi:type": "xnat:mrScanData"},
                        "data_fields": {
                            "ID": "3",
                            "type": "T1w",
                            "series_description": "T1w MPRAGE",
                            "quality": "usable",
                        },
                        "children": [
                            {
                                "field": "file",
                                "items": [
                                    {
                                        "data_fields": {
                                            "label": "DICOM",
                                            "format": "DICOM",
                                            "content": "RAW",
                                            "file_count": 10,
                                            "file_size": 2000,
                                            "xnat_abstractresource_id": 55,
                                        }
                                    },
                                    {"data_fields": {"name": "header values only"}},
                                ],
                            }
                        ],
                    }
                ],
            },
            {
                "field": "resources/resource",
                "items": [{"data_fields": {"label": "QC", "xnat_abstractresource_id": 60, "file_count": 2}}],
            },
        ],
    }
    contents = parsing.experiment_contents(item)
    (scan,) = contents.scans
    assert scan.id == "3" and scan.xsi_type == "xnat:mrScanData" and scan.quality == "usable"
    (dicom,) = scan.resources
    assert dicom.uri == "/data/experiments/E1/scans/3/resources/DICOM"
    assert (dicom.id, dicom.file_count, dicom.file_size) == ("55", 10, 2000)
    assert contents.resources[0].uri == "/data/experiments/E1/resources/QC"
    assert contents.insert_date == datetime(2015, 4, 17, 13, 48, 24)


def test_paths_encode_every_segment():
    assert paths.subject("P 1", "a/b") == "/data/projects/P%201/subjects/a%2Fb"
    assert paths.file_path("dir/x y.txt") == "dir/x%20y.txt"
    assert paths.resource("/data/experiments/E1", "my?res") == "/data/experiments/E1/resources/my%3Fres"
    for bad in ("", "/", "a/../b", ".."):
        with pytest.raises(ValueError):
            paths.file_path(bad)
    assert paths.canonical("/data/archive/projects/P") == "/data/projects/P"
    assert paths.canonical("/REST/experiments/E") == "/data/experiments/E"


def test_server_messages_come_from_h3_or_text():
    page = "<html><body><h1>Status page</h1><h3>Specified label is already in use.</h3></body></html>"
    assert server_message(page) == "Specified label is already in use."
    assert server_message("plain words\n") == "plain words"
    assert "<" not in server_message("<!DOCTYPE html><html><body><p>Oops</p></body></html>")


TAGS = {
    "T1": {"SeriesDescription": ["T1w", "MPRAGE"]},
    "RST": {"SeriesDescription": "rest"},
    "DTI": {"SeriesDescription": "DWI", "ImageType": "ORIGINAL"},
    "ME1": {"SeriesDescription": "multi", "EchoNumber": 1},
    "ME2": {"SeriesDescription": "multi", "EchoNumber": 2},
}


def test_one_matching_tag_names_the_scan():
    assert list(naming.matching_tags("T1w_MPRAGE", "", False, TAGS)) == ["T1"]
    assert (
        naming.scan_name("STUDY_SITE_0001_01_01", "T1", "2", "T1w MPRAGE (sag)")
        == "STUDY_SITE_0001_01_01_T1_02_T1w-MPRAGE-sag-"
    )


def test_image_type_must_match_when_given():
    assert list(naming.matching_tags("DWI_dir6", "ORIGINAL\\PRIMARY", False, TAGS)) == ["DTI"]
    assert naming.matching_tags("DWI_dir6", "DERIVED\\ADC", False, TAGS) == {}


def test_ambiguous_matches_give_no_tag_unless_multi_echo():
    assert naming.matching_tags("multi echo", "", False, TAGS) == {}
    assert list(naming.matching_tags("multi echo", "", True, TAGS)) == ["ME1", "ME2"]
    assert naming.matching_tags("localizer", "", False, TAGS) == {}


def test_naming_config_sources():
    class DatmanLikeConfig:
        def get_tags(self, site=None):
            class Tags:
                series_map = {"T1": {"SeriesDescription": "T1"}} if site == "CMH" else {}

            return Tags()

    assert naming.tag_map_from(DatmanLikeConfig(), site="CMH") == {"T1": {"SeriesDescription": "T1"}}
    assert naming.tag_map_from(TAGS) == TAGS
    with pytest.raises(TypeError):
        naming.tag_map_from(["not", "a", "map"])
