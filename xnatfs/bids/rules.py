"""What a mapping rule answers for one scan, and the rule sets there are.

A rule set looks at one scan at a time and answers with a :class:`Match`
(where the scan goes in BIDS), an :class:`Exclusion` (the rule recognised
the scan and keeps it out on purpose: a localizer, a derived map) or None
(no rule applies). Run numbers and name collisions need the whole session
and are settled by :mod:`xnatfs.bids.plan`, not here.

Two rule sets exist:

- :class:`BuiltinRules`: the ReproIn convention first (a series named the
  ReproIn way says exactly what it is, so it wins over guessing), then the
  common vendor names (:mod:`xnatfs.bids.vendor`). Runs are written without
  padding (``run-1``) except where ReproIn's own numbering applies.
- a dcm2bids configuration (:func:`xnatfs.bids.dcm2bids.load_config`), which
  *replaces* the built-in rules as it replaces guessing for dcm2bids users;
  its runs are written ``run-01`` as dcm2bids writes them.

``Match.rule`` is a short stable text naming the rule that matched (it is
shown in ``user.xnat.rule`` and by ``bids-check``): ``reproin``,
``vendor:<name>``, ``dcm2bids:<file>#<index>``.
"""

from __future__ import annotations

from typing import Protocol

from xnatfs.bids import reproin, vendor
from xnatfs.bids.fields import ScanFields
from xnatfs.bids.outcome import Exclusion, Match, Outcome, Reason
from xnatfs.client.models import Scan

__all__ = ["MR_SCAN_TYPES", "BuiltinRules", "Exclusion", "Match", "Outcome", "Reason", "RuleSet"]

MR_SCAN_TYPES = frozenset({"", "xnat:mrScanData"})


class RuleSet(Protocol):
    """Anything that maps one scan; see the module docstring."""

    name: str
    run_digits: int  # zero padding of run numbers the planner assigns

    def classify(self, scan: Scan, fields: ScanFields) -> Outcome: ...


class BuiltinRules:
    """ReproIn names first, then vendor names; MR scans only."""

    name = "builtin"
    run_digits = 1

    def classify(self, scan: Scan, fields: ScanFields) -> Outcome:
        if scan.xsi_type not in MR_SCAN_TYPES:
            return Exclusion(Reason.NO_RULE, f"not an MR scan ({scan.xsi_type})")
        for text in (scan.series_description, scan.type):
            outcome = reproin.classify(text, fields)
            if outcome is not None:
                return outcome
        return vendor.classify(scan.series_description or scan.type, fields)
