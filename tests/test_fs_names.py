"""Server names become safe, unique file names."""

from hypothesis import given, settings
from hypothesis import strategies as st

from xnatfs.fs.names import (
    NAME_MAX,
    label_names,
    make_unique,
    resource_names,
    safe_component,
    safe_label,
    scan_dir_name,
    shorten,
    split_file_path,
)


def _is_valid_component(name: str) -> bool:
    encoded = name.encode("utf-8")
    return (
        0 < len(encoded) <= NAME_MAX
        and b"/" not in encoded
        and b"\0" not in encoded
        and name not in (".", "..")
        and not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in name)
    )


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_any_text_becomes_a_valid_component(raw):
    name = safe_component(raw)
    assert _is_valid_component(name)
    assert safe_component(raw) == name


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_file_paths_never_escape(raw):
    parts = split_file_path(raw)
    assert parts
    assert all(_is_valid_component(part) for part in parts)


def test_dots_and_slashes():
    assert safe_component("..") == "__"
    assert safe_component(".") == "_"
    assert safe_component("") == "_"
    assert safe_component("a/b") == "a_b"
    assert safe_component("a\x00b\x1fc\x7f") == "a_b_c_"
    assert safe_component("..hidden") == "..hidden"
    assert split_file_path("../../etc/passwd") == ["__", "__", "etc", "passwd"]
    assert split_file_path("/a//b/") == ["a", "b"]


def test_long_names_are_shortened_deterministically():
    long_a = "x" * 300 + "a.dcm"
    long_b = "x" * 300 + "b.dcm"
    short_a, short_b = shorten(long_a), shorten(long_b)
    assert len(short_a.encode()) <= NAME_MAX
    assert short_a.endswith(".dcm")
    assert short_a != short_b
    assert shorten(long_a) == short_a
    assert shorten("short.dcm") == "short.dcm"


def test_long_multibyte_names_are_cut_on_character_boundaries():
    name = "é" * 200  # 400 bytes
    short = shorten(name)
    assert len(short.encode()) <= NAME_MAX
    short.encode("utf-8").decode("utf-8")
    assert short.startswith("é")


def test_scan_directory_names():
    assert scan_dir_name("3", "T1w MPRAGE") == "3-T1w_MPRAGE"
    assert scan_dir_name("3", "") == "3"
    assert scan_dir_name("4", "fMRI/rest (AP)") == "4-fMRI_rest__AP_"
    assert scan_dir_name("../5", "x") == ".._5-x"


def test_reserved_label_gets_accession_id():
    names = label_names([("RESOURCES", "XNAT_S00001"), ("SUB002", "XNAT_S00002")], {"RESOURCES"})
    assert names == ["RESOURCES@XNAT_S00001", "SUB002"]


def test_colliding_labels_both_get_accession_ids_whatever_the_order():
    entries = [("a/b", "XNAT_E1"), ("a_b", "XNAT_E2"), ("c", "XNAT_E3")]
    names = label_names(entries)
    assert names == ["a_b@XNAT_E1", "a_b@XNAT_E2", "c"]
    assert label_names(list(reversed(entries))) == list(reversed(names))


def test_at_sign_in_label_cannot_imitate_a_disambiguated_name():
    names = label_names([("x@XNAT_E2", "XNAT_E9"), ("x", "XNAT_E2"), ("x", "XNAT_E3")])
    assert len(set(names)) == 3
    assert safe_label("x@y") == "x_y"


@given(
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=12)), max_size=20),
    st.sets(st.sampled_from(["RESOURCES", "SCANS"])),
)
@settings(max_examples=200, deadline=None)
def test_label_names_are_unique_valid_and_avoid_reserved(entries, reserved):
    names = label_names(entries, reserved)
    assert len(names) == len(entries)
    assert len(set(names)) == len(names)
    assert not set(names) & reserved
    assert all(_is_valid_component(name) for name in names)


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=6)), max_size=20))
@settings(max_examples=200, deadline=None)
def test_resource_names_are_unique(entries):
    names = resource_names(entries)
    assert len(set(names)) == len(names)
    assert all(_is_valid_component(name) for name in names)


def test_resource_without_label_and_sanitised_collision():
    assert resource_names([("", "12")]) == ["No_Label"]
    assert resource_names([("a/b", "1"), ("a_b", "2")]) == ["a_b@1", "a_b@2"]


def test_make_unique_keeps_extensions_and_respects_taken():
    assert make_unique(["a.dcm", "a.dcm", "a.dcm"]) == ["a.dcm", "a~2.dcm", "a~3.dcm"]
    assert make_unique(["SCANS"], taken={"SCANS"}) == ["SCANS~2"]
