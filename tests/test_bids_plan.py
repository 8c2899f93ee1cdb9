"""Session plans: scan order, runs, unusable scans, collisions, header reads, and a reason for every scan."""

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xnatfs.bids.plan import BidsTarget, LeftOut, plan_session, scan_order_key
from xnatfs.bids.rules import Reason
from xnatfs.client.models import Scan
from xnatfs.errors import XnatServerError


def scan(scan_id, description, quality="usable"):
    return Scan(
        scan_id,
        type=description,
        series_description=description,
        quality=quality,
        xsi_type="xnat:mrScanData",
        uri=f"/data/experiments/E1/scans/{scan_id}",
    )


SESSION = [
    scan("1", "localizer"),
    scan("2", "t1_mprage_sag_p2_iso"),
    scan("3", "t2_space_sag"),
    scan("10", "ep2d_bold_rest"),
    scan("4", "ep2d_bold_rest"),
    scan("5", "DTI_30dir_AP"),
    scan("6", "DTI_30dir_AP_FA"),
    scan("7", "t1_mprage_sag_p2_iso", quality="unusable"),
    scan("8", "func-bold_task-nback_run-1"),
    scan("9", "something else"),
]


def test_every_scan_gets_an_entry_in_scan_order():
    plan = plan_session("01", "MR1", SESSION)
    assert [entry.scan.id for entry in plan.entries] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    assert {entry.scan.id: entry.reason for entry in plan.left_out} == {
        "1": Reason.EXCLUDED,
        "6": Reason.EXCLUDED,
        "7": Reason.UNUSABLE,
        "9": Reason.NO_RULE,
    }
    assert plan.datatypes() == ("anat", "dwi", "func")
    assert plan.folder == "sub-01/ses-MR1"


def test_repeats_get_runs_in_scan_order_and_unique_names_none():
    plan = plan_session("01", "MR1", SESSION)
    paths = {target.scan.id: target.path() for target in plan.targets}
    assert paths == {
        "2": "anat/sub-01_ses-MR1_T1w.nii.gz",
        "3": "anat/sub-01_ses-MR1_T2w.nii.gz",
        "4": "func/sub-01_ses-MR1_task-rest_run-1_bold.nii.gz",
        "10": "func/sub-01_ses-MR1_task-rest_run-2_bold.nii.gz",
        "5": "dwi/sub-01_ses-MR1_dir-AP_dwi.nii.gz",
        "8": "func/sub-01_ses-MR1_task-nback_run-01_bold.nii.gz",
    }


def test_unusable_scans_can_be_included_and_then_count_as_repeats():
    plan = plan_session("01", "MR1", SESSION, include_unusable=True)
    stems = {target.scan.id: target.stem for target in plan.targets}
    assert stems["2"] == "sub-01_ses-MR1_run-1_T1w" and stems["7"] == "sub-01_ses-MR1_run-2_T1w"


def test_func_targets_carry_their_task_name_for_the_sidecar():
    plan = plan_session("01", "MR1", SESSION)
    assert {target.sidecar_changes.get("TaskName") for target in plan.targets_of("func")} == {"rest", "nback"}
    assert all("TaskName" not in target.sidecar_changes for target in plan.targets_of("anat"))


def test_reproin_run_markers_share_one_counter_across_the_session():
    scans = [
        scan("1", "func-bold_task-a_run+"),
        scan("2", "func-bold_task-b_run+"),
        scan("3", "func-bold_task-b_run="),
        scan("4", "func-bold_task-a_run-5"),
        scan("5", "func-bold_task-a_run+"),
    ]
    plan = plan_session("01", "A", scans)
    assert [(target.scan.id, target.entity("run")) for target in plan.targets] == [
        ("1", "01"),
        ("3", "02"),
        ("4", "05"),
        ("5", "06"),
    ]
    (left,) = plan.left_out
    assert left.scan.id == "2" and left.reason is Reason.COLLISION and "later scan 3" in left.detail


def test_explicit_runs_are_kept_and_skipped_when_numbering_repeats():
    scans = [scan("1", "anat-T1w_run-1"), scan("2", "anat-T1w"), scan("3", "anat-T1w")]
    plan = plan_session("01", "A", scans)
    assert [target.entity("run") for target in plan.targets] == ["01", "2", "3"]


def test_header_lookup_is_lazy_and_recorded():
    asked = []

    def lookup(scan):
        asked.append(scan.id)
        return {"ImageType": ["ORIGINAL", "PRIMARY", "P" if scan.id == "3" else "M", "ND"]}

    scans = [scan("1", "t1_mprage"), scan("2", "gre_field_mapping"), scan("3", "gre_field_mapping")]
    plan = plan_session("01", "A", scans, header_lookup=lookup)
    assert asked == ["2", "3"] and plan.headers_read() == ("2", "3")
    assert [target.suffix for target in plan.targets_of("fmap")] == ["magnitude1", "phasediff"]


def test_a_header_that_cannot_be_read_leaves_the_scan_out_with_the_message():
    def lookup(_scan):
        raise XnatServerError("gone", status=503)

    plan = plan_session("01", "A", [scan("2", "gre_field_mapping")], header_lookup=lookup)
    (entry,) = plan.left_out
    assert entry.reason is Reason.NEEDS_HEADER and "503" in entry.detail


def test_target_variant_names_extra_files_of_a_series():
    target = plan_session("01", "A", [scan("2", "gre_field_mapping_mag")]).targets[0]
    assert isinstance(target, BidsTarget)
    assert target.variant("magnitude2") == "sub-01_ses-A_magnitude2"
    bold = plan_session("01", "A", [scan("4", "func-bold_task-x_run-2")]).targets[0]
    assert bold.variant(echo="2") == "sub-01_ses-A_task-x_run-02_echo-2_bold"


def test_plans_are_deterministic_whatever_the_listing_order():
    forward = plan_session("01", "MR1", SESSION)
    backward = plan_session("01", "MR1", list(reversed(SESSION)))
    assert forward == backward


@pytest.mark.parametrize(
    "ids, expected",
    [
        (["10", "2", "1"], ["1", "2", "10"]),
        (["3-MR2", "3", "20", "A"], ["3", "3-MR2", "20", "A"]),
    ],
)
def test_scan_order_is_numeric(ids, expected):
    assert sorted(ids, key=scan_order_key) == expected


def test_left_out_entries_say_why():
    plan = plan_session("01", "MR1", SESSION)
    for entry in plan.left_out:
        assert isinstance(entry, LeftOut) and entry.detail


def test_the_bids_package_does_not_import_the_file_system_layer():
    code = (
        "import sys, xnatfs.bids.plan, xnatfs.bids.dataset, xnatfs.bids.dcm2bids, xnatfs.bids.labels; "
        "print(sorted(m for m in sys.modules if m.startswith(('xnatfs.fs', 'pyfuse3'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


VOCABULARY = [
    "t1_mprage",
    "T2_SPACE",
    "ep2d_bold_rest",
    "DTI_AP",
    "localizer",
    "anat-T1w_run-1",
    "func-bold_task-a_run+",
    "func-bold_task-a_run=",
    "fmap-epi_dir-PA",
    "odd",
    "T2_FLAIR",
]


@given(st.lists(st.tuples(st.sampled_from(VOCABULARY), st.booleans()), max_size=14))
def test_any_session_gets_unique_paths_and_one_entry_per_scan(described):
    scans = [
        scan(str(number + 1), text, "unusable" if bad else "usable") for number, (text, bad) in enumerate(described)
    ]
    plan = plan_session("01", "A", scans)
    assert sorted(entry.scan.id for entry in plan.entries) == sorted(s.id for s in scans)
    paths = [target.path() for target in plan.targets]
    assert len(paths) == len(set(paths))
    assert all(target.stem.startswith("sub-01_ses-A_") for target in plan.targets)
