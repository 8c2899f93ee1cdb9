"""REST addresses: the client builds every one the file system uses."""

import re
from pathlib import Path

from xnatfs.client import paths


def test_addresses_quote_each_part_once():
    assert paths.subject("P 1", "S/1") == "/data/projects/P%201/subjects/S%2F1"
    assert paths.subject_by_id("XNAT_S1") == "/data/subjects/XNAT_S1"
    assert paths.scan("E1", "../8") == "/data/experiments/E1/scans/..%2F8"
    assert paths.scans_of("/data/experiments/E1") == "/data/experiments/E1/scans"
    assert paths.resources_of("/data/experiments/E1/") == "/data/experiments/E1/resources"
    assert paths.resource("/data/experiments/E1", "Q C") == "/data/experiments/E1/resources/Q%20C"


def test_addresses_are_read_back():
    assert paths.resource_owner("/data/experiments/E1/scans/2/resources/DICOM") == "/data/experiments/E1/scans/2"
    assert paths.is_scan_resource("/data/experiments/E1/scans/2/resources/DICOM")
    assert not paths.is_scan_resource("/data/experiments/E1/resources/QC")
    assert paths.owning_experiment("/data/experiments/E%201/resources/QC") == "E 1"
    assert paths.owning_experiment("/data/experiments/E1") == "E1"
    assert paths.owning_experiment("/data/projects/P/resources/QC") is None
    assert paths.subject_of("/data/projects/P/subjects/XNAT_S%231") == "XNAT_S#1"
    assert paths.subject_of("/data/projects/P/subjects/S/experiments/E") is None


def test_the_file_system_layer_builds_no_rest_address_itself():
    # A "/data..." literal, or "/scans", "/resources", "/files" appended to an address in an f-string.
    address = re.compile(r"""["']/data|\}/(?:scans|resources|files)\b""")
    fs_sources = Path(paths.__file__).parents[1] / "fs"
    for source in sorted(fs_sources.glob("*.py")):
        found = address.search(source.read_text())
        assert found is None, f"{source.name} builds a REST address: {found.group(0)!r}"
