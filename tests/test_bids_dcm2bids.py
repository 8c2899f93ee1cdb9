"""dcm2bids-format configs: both key spellings, criteria as dcm2bids matches them, typed errors."""

import json

import pytest

from xnatfs.bids.dcm2bids import BidsConfigError, load_config, parse_config
from xnatfs.bids.plan import LeftOut, plan_session
from xnatfs.bids.rules import Reason
from xnatfs.client.models import Scan
from xnatfs.errors import XnatError

V3 = {
    "descriptions": [
        {
            "id": "rest",
            "datatype": "func",
            "suffix": "bold",
            "custom_entities": "task-rest_acq-mb4",
            "criteria": {"SeriesDescription": "*bold*rest*"},
            "sidecar_changes": {"TaskName": "rest"},
        },
        {
            "datatype": "anat",
            "suffix": "T1w",
            "custom_entities": ["acq-mprage"],
            "criteria": {"SeriesDescription": "*mprage*", "ImageType": ["ORIGINAL", "PRIMARY", "*", "ND", "NORM"]},
        },
        {
            "datatype": "fmap",
            "suffix": "epi",
            "custom_entities": "dir-PA",
            "criteria": {"SeriesDescription": "*PA*", "EchoTime": {"btwe": [0.02, 0.04]}},
            "sidecar_changes": {"IntendedFor": "rest"},
        },
    ]
}

V2 = {
    "searchMethod": "re",
    "descriptions": [
        {"dataType": "anat", "modalityLabel": "T2w", "criteria": {"SeriesDescription": "t2_.*"}},
        {
            "dataType": "dwi",
            "modalityLabel": "dwi",
            "customLabels": "dir-AP",
            "criteria": {"SeriesDescription": "DTI.*"},
            "sidecarChanges": {"PhaseEncodingDirection": "j-"},
        },
        {
            "dataType": "fmap",
            "modalityLabel": "epi",
            "customLabels": "dir-PA",
            "criteria": {"SeriesDescription": "b0_PA"},
            "intendedFor": 1,
        },
    ],
}

HEADERS = {
    "1": {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]},
    "2": {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]},
    "5": {"EchoTime": 0.03},
}

SCANS = [
    Scan("1", series_description="t1_mprage"),
    Scan("2", series_description="t1_mprage"),
    Scan("3", series_description="ep2d_bold_rest"),
    Scan("4", series_description="ep2d_bold_rest"),
    Scan("5", series_description="se_PA"),
    Scan("10", series_description="localizer"),
]


def stems(plan):
    return {entry.scan.id: entry.stem if not isinstance(entry, LeftOut) else entry.reason for entry in plan.entries}


def test_v3_config_names_as_dcm2bids_would():
    rules = parse_config(V3, "site.json")
    plan = plan_session("01", "A", SCANS, rules, header_lookup=lambda scan: HEADERS.get(scan.id, {}))
    assert stems(plan) == {
        "1": "sub-01_ses-A_acq-mprage_T1w",
        "2": Reason.NO_RULE,
        "3": "sub-01_ses-A_task-rest_acq-mb4_run-01_bold",
        "4": "sub-01_ses-A_task-rest_acq-mb4_run-02_bold",
        "5": "sub-01_ses-A_dir-PA_epi",
        "10": Reason.NO_RULE,
    }
    fmap = plan.targets_of("fmap")[0]
    assert fmap.rule == "dcm2bids:site.json#2"
    assert fmap.sidecar_changes["IntendedFor"] == [
        "ses-A/func/sub-01_ses-A_task-rest_acq-mb4_run-01_bold.nii.gz",
        "ses-A/func/sub-01_ses-A_task-rest_acq-mb4_run-02_bold.nii.gz",
    ]


def test_header_is_read_only_for_scans_the_listing_could_not_rule_out():
    asked = []
    rules = parse_config(V3, "site.json")
    plan = plan_session(
        "01", "A", SCANS, rules, header_lookup=lambda scan: asked.append(scan.id) or HEADERS.get(scan.id, {})
    )
    assert sorted(asked) == ["1", "2", "5"]
    assert sorted(plan.headers_read()) == ["1", "2", "5"]


def test_without_a_header_lookup_scans_needing_one_are_left_out_with_the_field():
    plan = plan_session("01", "A", SCANS, parse_config(V3, "site.json"))
    left = {entry.scan.id: entry for entry in plan.left_out}
    assert left["1"].reason is Reason.NEEDS_HEADER and "ImageType" in left["1"].detail
    assert left["5"].reason is Reason.NEEDS_HEADER and "EchoTime" in left["5"].detail
    assert [target.scan.id for target in plan.targets] == ["3", "4"]


def test_v2_config_with_regular_expressions_and_index_links():
    scans = [
        Scan("2", series_description="t2_tse"),
        Scan("3", series_description="DTI_64"),
        Scan("4", series_description="b0_PA"),
        Scan("5", series_description="xt2_tse"),
    ]
    plan = plan_session("01", "A", scans, parse_config(V2, "old.json"))
    assert stems(plan) == {
        "2": "sub-01_ses-A_T2w",
        "3": "sub-01_ses-A_dir-AP_dwi",
        "4": "sub-01_ses-A_dir-PA_epi",
        "5": Reason.NO_RULE,
    }
    dwi, fmap = plan.targets_of("dwi")[0], plan.targets_of("fmap")[0]
    assert dwi.sidecar_changes == {"PhaseEncodingDirection": "j-"}
    assert fmap.sidecar_changes["IntendedFor"] == ["ses-A/dwi/sub-01_ses-A_dir-AP_dwi.nii.gz"]


def test_fnmatch_is_the_default_and_case_sensitive_unless_configured():
    config = {"descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesDescription": "T1*"}}]}
    scans = [Scan("1", series_description="t1_x")]
    assert plan_session("1", "A", scans, parse_config(config, "c.json")).targets == ()
    relaxed = dict(config, case_sensitive=False)
    assert len(plan_session("1", "A", scans, parse_config(relaxed, "c.json")).targets) == 1


def test_series_number_criterion_uses_the_scan_id():
    config = {"descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesNumber": "7"}}]}
    plan = plan_session("1", "A", [Scan("7"), Scan("8")], parse_config(config, "c.json"))
    assert [target.scan.id for target in plan.targets] == ["7"]


def test_operators_any_and_numeric():
    config = {
        "descriptions": [
            {"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesDescription": {"any": ["*mprage*", "*spgr*"]}}},
            {
                "datatype": "anat",
                "suffix": "T2w",
                "criteria": {"RepetitionTime": {"gt": 2}, "SeriesDescription": "t2*"},
            },
        ]
    }
    headers = {"2": {"RepetitionTime": 3.2}, "3": {"RepetitionTime": 1.5}}
    scans = [
        Scan("1", series_description="fspgr"),
        Scan("2", series_description="t2a"),
        Scan("3", series_description="t2b"),
    ]
    plan = plan_session("1", "A", scans, parse_config(config, "c.json"), header_lookup=lambda s: headers[s.id])
    assert stems(plan) == {"1": "sub-1_ses-A_T1w", "2": "sub-1_ses-A_T2w", "3": Reason.NO_RULE}


def test_a_scan_matching_two_descriptions_is_left_out_as_ambiguous():
    config = {
        "descriptions": [
            {"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesDescription": "*t1*"}},
            {"datatype": "anat", "suffix": "T2w", "criteria": {"SeriesDescription": "*mprage*"}},
        ]
    }
    plan = plan_session("1", "A", [Scan("1", series_description="t1_mprage")], parse_config(config, "c.json"))
    assert plan.left_out[0].reason is Reason.AMBIGUOUS


def test_echo_entity_without_value_comes_from_echo_number():
    config = {
        "descriptions": [
            {
                "datatype": "anat",
                "suffix": "MEGRE",
                "custom_entities": ["echo"],
                "criteria": {"SeriesDescription": "megre"},
            }
        ]
    }
    scans = [Scan("1", series_description="megre"), Scan("2", series_description="megre")]
    plan = plan_session(
        "1", "A", scans, parse_config(config, "c.json"), header_lookup=lambda s: {"EchoNumber": int(s.id)}
    )
    assert [target.stem for target in plan.targets] == ["sub-1_ses-A_echo-1_MEGRE", "sub-1_ses-A_echo-2_MEGRE"]


@pytest.mark.parametrize(
    "config, problem",
    [
        ([], "top level"),
        ({}, "descriptions"),
        ({"descriptions": [{"suffix": "T1w", "criteria": {"A": "b"}}]}, "description 0: datatype"),
        ({"descriptions": [{"datatype": "anat", "dataType": "anat", "suffix": "T1w", "criteria": {"A": "b"}}]}, "both"),
        ({"descriptions": [{"datatype": "anat", "suffix": "T1 w", "criteria": {"A": "b"}}]}, "suffix"),
        ({"descriptions": [{"datatype": "anat", "suffix": "T1w"}]}, "criteria"),
        (
            {
                "descriptions": [
                    {"datatype": "anat", "suffix": "T1w", "criteria": {"A": "b"}, "custom_entities": "colour-red"}
                ]
            },
            "colour",
        ),
        (
            {
                "descriptions": [
                    {"datatype": "anat", "suffix": "T1w", "criteria": {"A": "b"}, "custom_entities": "task"}
                ]
            },
            "no value",
        ),
        ({"descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"A": {"near": 1}}}]}, "unknown operator"),
        (
            {"search_method": "re", "descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"A": "("}}]},
            "regular expression",
        ),
        (
            {"search_method": "glob", "descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"A": "b"}}]},
            "search_method",
        ),
        (
            {"descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"A": "b"}, "intendedFor": 4}]},
            "unknown description",
        ),
    ],
)
def test_bad_configs_are_one_line_typed_errors(config, problem):
    with pytest.raises(BidsConfigError, match=problem) as raised:
        parse_config(config, "/etc/site.json")
    message = str(raised.value)
    assert message.startswith("/etc/site.json: ") and "\n" not in message
    assert isinstance(raised.value, XnatError)


def test_load_config_reads_a_file_and_names_it_in_errors(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(V3))
    assert len(load_config(good).descriptions) == 3
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'descriptions': []\n}")
    with pytest.raises(BidsConfigError, match=r"bad\.json: not JSON.*line 2"):
        load_config(bad)
    with pytest.raises(BidsConfigError, match=r"missing\.json: cannot read"):
        load_config(tmp_path / "missing.json")
