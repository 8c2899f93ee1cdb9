"""Turning names the server sends into safe, unique file names.

XNAT labels are supposed to hold only letters, digits, ``_`` and ``-``, but
file paths inside resources, scan types and anything an old or odd server
sends may hold anything. Nothing the server says is used as a path as it is:

- ``/``, NUL, control characters (C0, DEL, C1) and unpaired surrogates
  become ``_``; an empty name becomes ``_``, ``.`` becomes ``_`` and ``..``
  becomes ``__``, so no entry can point outside its directory;
- a name longer than 255 bytes (UTF-8) is cut and given a suffix ``~`` plus
  12 hex digits of a hash of the original, keeping a short extension, so the
  result is the same on every listing;
- in subject and experiment labels ``@`` also becomes ``_``, because ``@``
  introduces the accession ID that tells colliding entries apart
  (``<label>@<accession ID>``);
- whatever is still ambiguous after these rules gets ``~2``, ``~3``, ... in
  the order of the raw names, so no entry ever hides another.

Names the other way, given by a user for a new entry, are checked by
:func:`unstorable_reason`: a name the mount accepts must be stored by XNAT
as it is and shown back unchanged (docs/LAYOUT.md, "Names XNAT can store").
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

NAME_MAX = 255
HASH_CHARS = 12
EXTENSION_MAX = 16

RESOURCES = "RESOURCES"
SCANS = "SCANS"
BIDS = "BIDS"
RESERVED = frozenset({RESOURCES, SCANS})
# A project folder also holds the BIDS view; the name stays reserved when the
# view is turned off, so a subject's folder name never depends on a mount option.
PROJECT_RESERVED = RESERVED | {BIDS}

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\ud800-\udfff]")
_UNSAFE_IN_TYPE = re.compile(r"[^A-Za-z0-9._+-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut_to_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits in ``limit`` bytes."""
    encoded = text.encode("utf-8")[: max(limit, 0)]
    return encoded.decode("utf-8", errors="ignore")


def shorten(name: str, limit: int = NAME_MAX) -> str:
    """Fit ``name`` into ``limit`` UTF-8 bytes, deterministically.

    Long names keep their beginning and a short extension, with a hash of the
    whole original in between, so two long names that share a prefix stay
    distinct.
    """
    if _utf8_len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    stem, dot, ext = name.rpartition(".")
    extension = f".{ext}" if dot and stem and _utf8_len(ext) + 1 <= EXTENSION_MAX else ""
    head = name[: len(name) - len(extension)] if extension else name
    tail = f"~{digest}{extension}"
    return _cut_to_bytes(head, limit - _utf8_len(tail)) + tail


def safe_component(raw: str) -> str:
    """One path component the kernel will accept and that stays in its folder."""
    name = _UNSAFE.sub("_", raw)
    if name in ("", "."):
        name = "_"
    elif name == "..":
        name = "__"
    return shorten(name)


def unstorable_reason(name: str) -> str:
    """Why XNAT could not store ``name`` as one path component and give it
    back unchanged, or "" when it can."""
    control = _CONTROL.search(name)
    if control:
        # Shown as "_" by safe_component, and XNAT's XML catalog reads tab and
        # newline back as spaces and cannot hold the other C0 characters at all.
        return f"it holds the control character {control.group()!r}"
    if "\\" in name:
        # XNAT treats a backslash as a path separator, and Tomcat in front of
        # it answers 400 to a request path holding one.
        return "it holds a backslash"
    if name in ("", ".", ".."):
        return "it is not a name"
    return ""


def safe_label(raw: str) -> str:
    """A subject or experiment label made safe; ``@`` is kept for disambiguation."""
    return safe_component(raw.replace("@", "_"))


def safe_scan_type(raw: str) -> str:
    """A scan type in the form XNAT uses in its own zip folders: unsafe characters to ``_``."""
    return _UNSAFE_IN_TYPE.sub("_", raw)


def scan_dir_name(scan_id: str, scan_type: str) -> str:
    """``<scan ID>-<type made safe>``, or the bare ID when the scan has no type."""
    scan_id = safe_label(scan_id)
    if not scan_type:
        return scan_id
    return shorten(f"{scan_id}-{safe_scan_type(scan_type)}")


def with_tag(name: str, tag: str, separator: str = "@", limit: int = NAME_MAX) -> str:
    """``name`` + separator + tag, fitted into ``limit`` bytes by cutting ``name``."""
    suffix = f"{separator}{tag}"
    room = limit - _utf8_len(suffix)
    if room < 1:
        return shorten(tag or "_", limit)
    return shorten(name, room) + suffix


def _tag_before_extension(name: str, tag: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if dot and stem and _utf8_len(ext) < EXTENSION_MAX:
        return with_tag(stem, tag, "~", NAME_MAX - _utf8_len(ext) - 1) + "." + ext
    return with_tag(name, tag, "~")


def make_unique(names: Sequence[str], taken: Iterable[str] = ()) -> list[str]:
    """Resolve whatever duplicates remain by appending ``~2``, ``~3``, ...

    The first occurrence keeps its name unless it is in ``taken``; callers
    pass names in a deterministic order (sorted by the raw name) so the same
    listing always gives the same result.
    """
    used = set(taken)
    result = []
    for name in names:
        candidate = name
        counter = 1
        while candidate in used:
            counter += 1
            candidate = _tag_before_extension(name, str(counter))
        used.add(candidate)
        result.append(candidate)
    return result


def _unique_in_input_order(names: list[str], entries: Sequence[tuple[str, str]], reserved: set[str]) -> list[str]:
    """``make_unique`` applied in a fixed (sorted) order, returned in input order.

    Sorting first makes the suffixes independent of the order the server
    listed the entries in.
    """
    order = sorted(range(len(entries)), key=lambda i: (names[i], entries[i]))
    unique = make_unique([names[i] for i in order], reserved)
    result = [""] * len(entries)
    for position, index in enumerate(order):
        result[index] = unique[position]
    return result


def label_names(entries: Sequence[tuple[str, str]], reserved: Iterable[str] = ()) -> list[str]:
    """Directory names for subjects or experiments, given (label, accession ID) pairs.

    A label that is reserved in this folder (``RESOURCES``, ``SCANS``) or that
    several entries share after sanitising is shown as ``<label>@<accession
    ID>`` for every entry involved, so the result does not depend on which
    one the server listed first. The returned list is in the input order.
    """
    reserved = set(reserved)
    bases = [safe_label(label) for label, _ in entries]
    counts = Counter(bases)
    names = []
    for base, (_, accession) in zip(bases, entries):
        if base in reserved or counts[base] > 1:
            names.append(with_tag(base, safe_label(accession)))
        else:
            names.append(base)
    return _unique_in_input_order(names, entries, reserved)


def resource_names(entries: Sequence[tuple[str, str]], reserved: Iterable[str] = ()) -> list[str]:
    """Directory names for resources, given (label, resource ID) pairs.

    Resource labels are unique within their parent on XNAT, so collisions
    only come from sanitising or missing labels; those get ``@<resource ID>``
    (or ``~N`` when there is no ID), like subjects and experiments.
    """
    reserved = set(reserved)
    bases = [safe_component(label) if label else "No_Label" for label, _ in entries]
    counts = Counter(bases)
    names = []
    for base, (_, resource_id) in zip(bases, entries):
        if (base in reserved or counts[base] > 1) and resource_id:
            names.append(with_tag(base, safe_component(resource_id)))
        else:
            names.append(base)
    return _unique_in_input_order(names, entries, reserved)


def split_file_path(raw_path: str) -> list[str]:
    """The safe components of a file path inside a resource (empty parts dropped)."""
    parts = [safe_component(part) for part in raw_path.split("/") if part]
    return parts or ["_"]
