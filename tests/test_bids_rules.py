"""Built-in rules: ReproIn names and vendor names mapped to BIDS, or left out with a reason."""

import pytest

from xnatfs.bids import reproin
from xnatfs.bids.fields import HeaderNeeded, ScanFields
from xnatfs.bids.outcome import Exclusion, Match, Reason
from xnatfs.bids.rules import BuiltinRules
from xnatfs.client.models import Scan


def classify(description, header=None, xsi_type="xnat:mrScanData", scan_type=""):
    scan = Scan("3", type=scan_type or description, series_description=description, xsi_type=xsi_type)
    lookup = (lambda _scan: header) if header is not None else None
    return BuiltinRules().classify(scan, ScanFields(scan, lookup))


def name_of(outcome):
    assert isinstance(outcome, Match), outcome
    return outcome.datatype, outcome.suffix, dict(outcome.entities)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("anat-T1w", ("anat", "T1w", {})),
        ("anat-T2w_acq-highres", ("anat", "T2w", {"acq": "highres"})),
        ("func-bold_task-rest_run-1", ("func", "bold", {"task": "rest", "run": "01"})),
        ("func_task-n-back", ("func", "bold", {"task": "nback"})),
        ("dwi_dir-AP", ("dwi", "dwi", {"dir": "AP"})),
        ("fmap-epi_dir-PA", ("fmap", "epi", {"dir": "PA"})),
        ("func-bold_task-rest_acq-p2.s4__tested twice", ("func", "bold", {"task": "rest", "acq": "p2s4"})),
        ("DBIC:anat-T1w_ses-pre", ("anat", "T1w", {})),
        ("func-bold_run+", ("func", "bold", {"task": "UNKNOWN", "run": "+"})),
    ],
)
def test_reproin_names(text, expected):
    assert name_of(classify(text)) == expected
    assert classify(text).rule == "reproin"


@pytest.mark.parametrize(
    "text",
    [
        "T1_MPRAGE",
        "anatomy-T1w",
        "func-bold_colour-red",
        "func-bold_task-__x",
        "func-bold_run-x",
        "anat-T1w_MPRAGE",
        "func_task-n_back",
    ],
)
def test_not_reproin_names(text):
    assert reproin.parse(text) is None


def test_reproin_scout_is_excluded():
    outcome = classify("anat-scout_ses-pre")
    assert isinstance(outcome, Exclusion) and outcome.reason is Reason.EXCLUDED


def test_reproin_fmap_without_suffix_reads_the_image_type():
    assert name_of(classify("fmap_acq-3mm", header={"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}))[1] == "phasediff"
    assert (
        name_of(classify("fmap_acq-3mm", header={"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}))[1] == "magnitude1"
    )
    with pytest.raises(HeaderNeeded, match="ImageType"):
        classify("fmap_acq-3mm")


def test_reproin_is_read_from_the_scan_type_when_the_description_is_not_reproin():
    assert name_of(classify("MPRAGE", scan_type="anat-T2w")) == ("anat", "T2w", {})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("t1_mprage_sag_p2_iso", ("anat", "T1w", {})),
        ("MPRAGE_ADNI", ("anat", "T1w", {})),
        ("T1w_MPR", ("anat", "T1w", {})),
        ("t1_space_sag", ("anat", "T1w", {})),
        ("t2_space_sag_p2", ("anat", "T2w", {})),
        ("T2_SPACE", ("anat", "T2w", {})),
        ("t2_tse_tra", ("anat", "T2w", {})),
        ("T2_FLAIR_SAG", ("anat", "FLAIR", {})),
        ("ep2d_bold_rest", ("func", "bold", {"task": "rest"})),
        ("Resting State fMRI", ("func", "bold", {"task": "rest"})),
        ("BOLD_task-nback_AP", ("func", "bold", {"task": "nback", "dir": "AP"})),
        ("rest_SBRef", ("func", "sbref", {"task": "rest"})),
        ("DTI_64dir_AP", ("dwi", "dwi", {"dir": "AP"})),
        ("ep2d_diff_mddw_30", ("dwi", "dwi", {})),
        ("Ax DWI", ("dwi", "dwi", {})),
        ("SpinEchoFieldMap_PA", ("fmap", "epi", {"dir": "PA"})),
        ("se_epi_AP", ("fmap", "epi", {"dir": "AP"})),
        ("field_map_phase", ("fmap", "phasediff", {})),
    ],
)
def test_vendor_names(text, expected):
    outcome = classify(text)
    assert name_of(outcome) == expected
    assert outcome.rule.startswith("vendor:")


@pytest.mark.parametrize(
    "text",
    [
        "localizer",
        "AAHead_Scout_32ch",
        "3-plane loc",
        "DTI_64dir_FA",
        "ep2d_diff_ADC",
        "ep2d_diff_TRACEW",
        "MoCoSeries",
        "DERIVED t1",
        "PhoenixZIPReport",
        "Ax DWI ColFA",
    ],
)
def test_localizers_and_derived_maps_are_excluded(text):
    outcome = classify(text)
    assert isinstance(outcome, Exclusion) and outcome.reason is Reason.EXCLUDED, outcome


def test_gre_field_map_needs_the_header_and_uses_its_image_type():
    with pytest.raises(HeaderNeeded, match="ImageType"):
        classify("gre_field_mapping")
    assert (
        name_of(classify("gre_field_mapping", header={"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}))[1]
        == "phasediff"
    )
    assert (
        name_of(classify("gre_field_mapping", header={"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}))[1]
        == "magnitude1"
    )


def test_spin_echo_field_map_without_direction_is_left_out():
    outcome = classify("SpinEchoFieldMap")
    assert isinstance(outcome, Exclusion) and outcome.reason is Reason.NO_RULE


def test_derived_image_type_excludes_only_when_the_header_was_read_anyway():
    header = {"ImageType": ["DERIVED", "PRIMARY", "P"]}
    outcome = classify("gre_field_mapping", header=header)
    assert isinstance(outcome, Match)  # field map rule read it after the exclusion check; still named
    scan = Scan("4", series_description="t1_mprage")
    fields = ScanFields(scan, lambda _scan: header)
    fields.header()
    assert isinstance(BuiltinRules().classify(scan, fields), Exclusion)


def test_unknown_names_match_nothing_and_non_mr_scans_are_left_out():
    assert classify("my special sequence") is None
    outcome = classify("t1_mprage", xsi_type="xnat:petScanData")
    assert isinstance(outcome, Exclusion) and "not an MR scan" in outcome.detail


def test_listing_fields_never_read_the_header():
    calls = []
    scan = Scan("12", type="T1", series_description="t1_mprage")
    fields = ScanFields(scan, lambda s: calls.append(s) or {"SeriesDescription": "other"})
    assert fields.get("SeriesDescription") == "t1_mprage"
    assert fields.get("SeriesNumber") == 12
    assert fields.get("XnatScanType") == "T1"
    assert calls == [] and not fields.header_used
    assert fields.get("EchoTime") is None and fields.get("ProtocolName") is None
    assert len(calls) == 1 and fields.header_used


def test_image_type_may_come_as_dicom_text():
    assert name_of(classify("gre_field_mapping", header={"ImageType": "ORIGINAL\\PRIMARY\\P\\ND"}))[1] == "phasediff"
