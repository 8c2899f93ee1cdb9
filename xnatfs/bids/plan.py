"""One session's scans turned into BIDS names: the plan the view serves.

:func:`plan_session` takes the scans of one experiment (as the XNAT listing
gives them) and a rule set, and answers a :class:`SessionPlan`: one entry
per scan, in scan order, each either a :class:`BidsTarget` (where its
converted files go) or a :class:`LeftOut` (why it is not in the view).
Nothing is silently dropped, so ``bids-check`` can list every scan.

Why the steps are what they are:

- **Scan order** is the numeric order of scan IDs (``2`` before ``10``;
  IDs with a non-numeric tail such as ``3-MR2`` after their number, by
  text). XNAT's scan IDs are the DICOM SeriesNumber, which is the first key
  dcm2bids sorts by, and no header is read just to order scans.
- **Unusable** scans (XNAT quality ``unusable``, any case) are left out
  before any rule runs, unless the caller includes them: whoever marked
  them did so to keep them out of analyses.
- **Runs**: scans that end up with the same name apart from ``run`` are
  repeats and get ``run-1``, ``run-2``, ... in scan order (``run-01`` ... for
  a rule set that pads, see :attr:`RuleSet.run_digits`); numbers a rule
  gave explicitly are kept and skipped. A name that is unique gets no run.
  ReproIn's ``run+``/``run=`` markers are resolved first, with one counter
  across the session, as the convention defines.
- **Collisions**: if two scans still get the very same name (explicit runs
  repeated, as when a run was cancelled and redone under the same name),
  the later scan keeps the name and the earlier is left out (``collision``);
  the redo is the one meant to be used.
- ``func`` targets get ``TaskName`` in their sidecar changes (BIDS requires
  it and dcm2niix cannot know it); field-map links (``IntendedFor``) become
  the subject-relative paths of the targets they name.

A target's files are ``<datatype>/<stem><extension>`` inside the session
folder, where :attr:`BidsTarget.stem` is ``sub-…_ses-…[_entities]_<suffix>``.
A series dcm2niix writes as several files (echoes, a second magnitude) is
named by the converter from the target with :meth:`BidsTarget.variant`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xnatfs.bids.fields import HeaderLookup, HeaderNeeded, ScanFields
from xnatfs.bids.labels import ordered_entities
from xnatfs.bids.outcome import Exclusion, Match, Reason
from xnatfs.bids.reproin import RUN_DIGITS as REPROIN_RUN_DIGITS
from xnatfs.bids.reproin import RUN_MARKERS
from xnatfs.bids.rules import BuiltinRules, RuleSet
from xnatfs.client.models import Scan
from xnatfs.errors import XnatError

NIFTI_EXTENSION = ".nii.gz"
UNUSABLE = "unusable"

_LEADING_NUMBER = re.compile(r"(\d+)(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class BidsTarget:
    """Where one scan goes: ``sub-<s>/ses-<t>/<datatype>/<stem>.<ext>``.

    ``entities`` are complete (``sub`` and ``ses`` included) and in BIDS
    order; ``sidecar_changes`` are fields to set in the sidecar JSON after
    conversion; ``header_used`` says whether a DICOM header was read to
    decide.
    """

    scan: Scan
    datatype: str
    entities: tuple[tuple[str, str], ...]
    suffix: str
    rule: str
    sidecar_changes: Mapping[str, Any] = field(default_factory=dict)
    header_used: bool = False

    @property
    def stem(self) -> str:
        return "_".join([f"{key}-{value}" for key, value in self.entities] + [self.suffix])

    def entity(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    def path(self, extension: str = NIFTI_EXTENSION) -> str:
        """The file's path relative to the session folder, e.g. ``anat/sub-1_ses-A_T1w.nii.gz``."""
        return f"{self.datatype}/{self.stem}{extension}"

    def variant(self, suffix: str | None = None, **entities: str) -> str:
        """The stem with ``suffix`` and/or entities replaced or added (e.g. ``echo="2"``)."""
        merged = dict(self.entities) | entities
        return "_".join([f"{key}-{value}" for key, value in ordered_entities(merged.items())] + [suffix or self.suffix])


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A scan that is not in the view, and why (shown by ``bids-check``)."""

    scan: Scan
    reason: Reason
    detail: str
    rule: str = ""
    header_used: bool = False


PlanEntry = BidsTarget | LeftOut

# A scan with what the rules said about it, and whether its header was read.
Classified = tuple[Scan, Match | LeftOut, bool]


@dataclass(frozen=True, slots=True)
class SessionPlan:
    subject: str  # BIDS label, without "sub-"
    session: str  # BIDS label, without "ses-"
    entries: tuple[PlanEntry, ...]  # one per scan, in scan order

    @property
    def folder(self) -> str:
        """The session folder relative to the dataset root."""
        return f"sub-{self.subject}/ses-{self.session}"

    @property
    def targets(self) -> tuple[BidsTarget, ...]:
        return tuple(entry for entry in self.entries if isinstance(entry, BidsTarget))

    @property
    def left_out(self) -> tuple[LeftOut, ...]:
        return tuple(entry for entry in self.entries if isinstance(entry, LeftOut))

    def datatypes(self) -> tuple[str, ...]:
        """The datatype folders the session has, sorted."""
        return tuple(sorted({target.datatype for target in self.targets}))

    def targets_of(self, datatype: str) -> tuple[BidsTarget, ...]:
        return tuple(target for target in self.targets if target.datatype == datatype)

    def headers_read(self) -> tuple[str, ...]:
        """IDs of the scans whose DICOM header was read to plan them."""
        return tuple(entry.scan.id for entry in self.entries if entry.header_used)


def scan_order_key(scan_id: str) -> tuple[int, int, str]:
    """Numeric order of scan IDs; IDs that do not start with a number come last, by text."""
    found = _LEADING_NUMBER.fullmatch(scan_id)
    if found is None:
        return (1, 0, scan_id)
    return (0, int(found.group(1)), found.group(2))


def is_unusable(scan: Scan) -> bool:
    return scan.quality.strip().lower() == UNUSABLE


def plan_session(
    subject: str,
    session: str,
    scans: Iterable[Scan],
    rules: RuleSet | None = None,
    *,
    header_lookup: HeaderLookup | None = None,
    include_unusable: bool = False,
    extension: str = NIFTI_EXTENSION,
) -> SessionPlan:
    """The plan for one session; ``subject``/``session`` are BIDS labels (see :mod:`.labels`).

    ``rules`` defaults to the built-in rules; ``header_lookup`` is called at
    most once per scan, only for scans a rule needs a header field of;
    ``extension`` is the NIfTI extension the converter writes, used in
    ``IntendedFor`` links.
    """
    rules = rules or BuiltinRules()
    ordered = sorted(scans, key=lambda scan: scan_order_key(scan.id))
    outcomes: list[Classified] = [_classify(scan, rules, header_lookup, include_unusable) for scan in ordered]
    outcomes = _resolve_reproin_runs(outcomes)
    outcomes = _number_repeats(outcomes, rules.run_digits)
    entries = _settle_collisions(subject, session, outcomes)
    return SessionPlan(subject, session, _link_field_maps(entries, outcomes, session, extension))


def _classify(scan: Scan, rules: RuleSet, header_lookup: HeaderLookup | None, include_unusable: bool) -> Classified:
    if is_unusable(scan) and not include_unusable:
        return scan, LeftOut(scan, Reason.UNUSABLE, "quality marked unusable in XNAT"), False
    fields = ScanFields(scan, header_lookup)
    try:
        outcome = rules.classify(scan, fields)
    except HeaderNeeded as needed:
        return scan, LeftOut(scan, Reason.NEEDS_HEADER, str(needed)), False
    except XnatError as error:
        return (
            scan,
            LeftOut(scan, Reason.NEEDS_HEADER, f"DICOM header could not be read: {error}", header_used=True),
            True,
        )
    if outcome is None:
        description = scan.series_description or scan.type or "(no description)"
        return (
            scan,
            LeftOut(scan, Reason.NO_RULE, f"no rule matched {description!r}", header_used=fields.header_used),
            fields.header_used,
        )
    if isinstance(outcome, Exclusion):
        return scan, LeftOut(scan, outcome.reason, outcome.detail, outcome.rule, fields.header_used), fields.header_used
    return scan, outcome, fields.header_used


def _with_run(match: Match, run: str | None) -> Match:
    entities = tuple((key, value) for key, value in match.entities if key != "run")
    if run is not None:
        entities += (("run", run),)
    return Match(
        match.datatype, match.suffix, entities, match.rule, match.sidecar_changes, match.link_ids, match.intended_for
    )


def _resolve_reproin_runs(outcomes: Sequence[Classified]) -> list[Classified]:
    counter = 0
    resolved = []
    for scan, outcome, header_used in outcomes:
        if not isinstance(outcome, Match) or (run := dict(outcome.entities).get("run")) is None:
            resolved.append((scan, outcome, header_used))
            continue
        if run == "+":
            counter += 1
        elif run == "=":
            counter = counter or 1
        else:
            counter = int(run)
        if run in RUN_MARKERS:
            outcome = _with_run(outcome, f"{counter:0{REPROIN_RUN_DIGITS}d}")
        resolved.append((scan, outcome, header_used))
    return resolved


def _name_key(match: Match) -> tuple:
    """Everything of a name but its run: scans sharing it are repeats."""
    return (match.datatype, match.suffix, tuple(sorted((k, v) for k, v in match.entities if k != "run")))


def _number_repeats(outcomes: Sequence[Classified], run_digits: int) -> list[Classified]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    matches: dict[int, Match] = {}
    for position, (_, outcome, _) in enumerate(outcomes):
        if isinstance(outcome, Match):
            groups[_name_key(outcome)].append(position)
            matches[position] = outcome
    numbered = list(outcomes)
    for positions in groups.values():
        if len(positions) < 2:
            continue
        taken = {
            int(run) for position in positions if (run := dict(matches[position].entities).get("run")) and run.isdigit()
        }
        number = 0
        for position in positions:
            scan, _, header_used = outcomes[position]
            match = matches[position]
            if "run" in dict(match.entities):
                continue
            number += 1
            while number in taken:
                number += 1
            numbered[position] = (scan, _with_run(match, f"{number:0{run_digits}d}"), header_used)
    return numbered


def _target(subject: str, session: str, scan: Scan, match: Match, header_used: bool) -> BidsTarget:
    entities = ordered_entities((("sub", subject), ("ses", session)) + match.entities)
    changes = dict(match.sidecar_changes)
    if match.datatype == "func" and "task" in dict(match.entities):
        changes.setdefault("TaskName", dict(match.entities)["task"])
    return BidsTarget(scan, match.datatype, entities, match.suffix, match.rule, changes, header_used)


def _settle_collisions(subject: str, session: str, outcomes: Sequence[Classified]) -> list[PlanEntry]:
    entries: list[PlanEntry] = []
    for scan, outcome, header_used in outcomes:
        entries.append(
            outcome if isinstance(outcome, LeftOut) else _target(subject, session, scan, outcome, header_used)
        )
    last_holder: dict[str, int] = {}
    for position, entry in enumerate(entries):
        if isinstance(entry, BidsTarget):
            last_holder[entry.path()] = position
    for position, entry in enumerate(entries):
        if isinstance(entry, BidsTarget) and last_holder[entry.path()] != position:
            winner = entries[last_holder[entry.path()]].scan.id
            entries[position] = LeftOut(
                entry.scan,
                Reason.COLLISION,
                f"{entry.stem} is taken by later scan {winner}",
                entry.rule,
                entry.header_used,
            )
    return entries


def _link_field_maps(
    entries: Sequence[PlanEntry], outcomes: Sequence[Classified], session: str, extension: str
) -> tuple[PlanEntry, ...]:
    paths_by_link: dict[str, list[str]] = defaultdict(list)
    for entry, (_, outcome, _) in zip(entries, outcomes):
        if isinstance(entry, BidsTarget) and isinstance(outcome, Match):
            for link in outcome.link_ids:
                paths_by_link[link].append(f"ses-{session}/{entry.path(extension)}")
    linked: list[PlanEntry] = []
    for entry, (_, outcome, _) in zip(entries, outcomes):
        if isinstance(entry, BidsTarget) and isinstance(outcome, Match) and outcome.intended_for:
            paths = [path for link in outcome.intended_for for path in paths_by_link.get(link, ())]
            changes = dict(entry.sidecar_changes)
            if paths:
                changes["IntendedFor"] = sorted(set(paths))
            entry = BidsTarget(
                entry.scan, entry.datatype, entry.entities, entry.suffix, entry.rule, changes, entry.header_used
            )
        linked.append(entry)
    return tuple(linked)
