"""BIDS-safe labels: alphanumerics only, stable, collision-free; session prefixes dropped."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xnatfs.bids.labels import (
    ENTITY_ORDER,
    UnknownEntity,
    assign_labels,
    bids_label,
    drop_subject_prefix,
    ordered_entities,
    session_labels,
    subject_labels,
)
from xnatfs.client.models import Experiment, Subject


def test_label_keeps_only_ascii_letters_and_digits():
    assert bids_label("SUB_001-a.b c/ü") == "SUB001abc"
    assert bids_label("___") == ""


def test_empty_label_takes_the_accession_id():
    assert assign_labels([("XNAT_S00012", "__")]) == {"XNAT_S00012": "XNATS00012"}


def test_colliding_labels_get_the_accession_id_and_a_safe_label_keeps_its_name():
    labels = assign_labels([("XNAT_S2", "SUB_01"), ("XNAT_S1", "SUB01"), ("XNAT_S3", "sub-01"), ("XNAT_S4", "SUB02")])
    assert labels == {"XNAT_S1": "SUB01", "XNAT_S2": "SUB01XNATS2", "XNAT_S3": "sub01XNATS3", "XNAT_S4": "SUB02"}


def test_collisions_are_case_insensitive():
    labels = assign_labels([("E1", "ab"), ("E2", "AB")])
    assert len({label.casefold() for label in labels.values()}) == 2


def test_adding_a_look_alike_does_not_rename_a_safe_label():
    before = assign_labels([("S1", "P01")])
    after = assign_labels([("S1", "P01"), ("S2", "P_01")])
    assert before["S1"] == after["S1"] == "P01"


def test_a_label_spelled_like_a_disambiguated_one_still_gets_a_unique_name():
    labels = assign_labels([("S1", "A"), ("S2", "A_"), ("S3", "AS2")])
    assert len({label.casefold() for label in labels.values()}) == 3
    assert labels["S1"] == "A"


@given(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=6)), max_size=12, unique_by=lambda p: p[0]))
def test_labels_are_alphanumeric_unique_and_independent_of_order(pairs):
    pairs = [(bids_label(accession) or "X" + str(i), raw) for i, (accession, raw) in enumerate(pairs)]
    pairs = list(dict(pairs).items())
    labels = assign_labels(pairs)
    assert all(label and label.isascii() and label.isalnum() for label in labels.values())
    assert len({label.casefold() for label in labels.values()}) == len(pairs)
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    assert assign_labels(shuffled) == labels


def test_session_labels_drop_the_subject_prefix():
    assert drop_subject_prefix("SUB001_MR1", "SUB001") == "MR1"
    assert drop_subject_prefix("sub001-MR2", "SUB001") == "MR2"
    assert drop_subject_prefix("SUB001MR1", "SUB001") == "MR1"
    assert drop_subject_prefix("SUB0011", "SUB001") == "SUB0011"
    assert drop_subject_prefix("SUB001", "SUB001") == "SUB001"
    assert drop_subject_prefix("MR1", "SUB001") == "MR1"


def test_session_and_subject_labels_from_model_records():
    subjects = [Subject("XNAT_S1", "SUB_001", "P"), Subject("XNAT_S2", "SUB002", "P")]
    assert subject_labels(subjects) == {"XNAT_S1": "SUB001", "XNAT_S2": "SUB002"}
    experiments = [Experiment("XNAT_E1", "SUB_001_MR1", "P"), Experiment("XNAT_E2", "SUB_001_MR_1", "P")]
    assert session_labels(experiments, "SUB_001") == {"XNAT_E1": "MR1", "XNAT_E2": "MR1XNATE2"}


def test_entities_are_put_in_bids_order():
    assert ordered_entities(
        [
            ("run", "1"),
            ("dir", "AP"),
            ("task", "rest"),
            ("ses", "A"),
            ("sub", "1"),
            ("acq", "x"),
            ("echo", "2"),
            ("ce", "gad"),
            ("rec", "moco"),
        ]
    ) == (
        ("sub", "1"),
        ("ses", "A"),
        ("task", "rest"),
        ("acq", "x"),
        ("ce", "gad"),
        ("rec", "moco"),
        ("dir", "AP"),
        ("run", "1"),
        ("echo", "2"),
    )
    assert ENTITY_ORDER[:2] == ("sub", "ses")


def test_unknown_entity_is_refused():
    with pytest.raises(UnknownEntity, match="colour"):
        ordered_entities([("colour", "red")])
