"""The answers a mapping rule gives for one scan (see :mod:`xnatfs.bids.rules`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a scan is not in the BIDS view."""

    NO_RULE = "no-rule"  # nothing recognised the scan
    EXCLUDED = "excluded"  # recognised and kept out: localizer, scout, derived map
    UNUSABLE = "unusable"  # quality marked unusable in XNAT
    NEEDS_HEADER = "needs-header"  # a rule needs a DICOM field that could not be had
    AMBIGUOUS = "ambiguous"  # several descriptions of a config match
    COLLISION = "collision"  # another scan got the very same name
    INVALID = "invalid"  # the rule's answer is not a valid BIDS name
    NO_FILES = "no-files"  # named, but no DICOM files nor a server conversion to serve


@dataclass(frozen=True, slots=True)
class Match:
    """Where a rule puts a scan, before run numbers are settled.

    ``entities`` hold everything but ``sub`` and ``ses``, in any order, with
    labels already BIDS-safe; a ``run`` value of ``+`` or ``=`` is a ReproIn
    marker the planner resolves. ``link_ids`` (the names other rules may
    point at) and ``intended_for`` (the names this one points at) link field
    maps to their targets (dcm2bids ``id`` / ``IntendedFor``).
    """

    datatype: str
    suffix: str
    entities: tuple[tuple[str, str], ...] = ()
    rule: str = ""
    sidecar_changes: Mapping[str, Any] = field(default_factory=dict)
    link_ids: tuple[str, ...] = ()
    intended_for: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Exclusion:
    reason: Reason
    detail: str
    rule: str = ""


Outcome = Match | Exclusion | None
