"""dcm2bids configuration files as rule sets.

Sites that already convert with dcm2bids have a JSON file whose
``descriptions`` say, for each acquisition, the datatype, suffix, extra
entities and the sidecar criteria that pick it. Reading that same file lets
a site keep its names: the view then names scans as dcm2bids would for the
same criteria, and the file replaces the built-in rules entirely (mixing
both would make names depend on which rule happened to fire).

Both spellings found in the wild are read: dcm2bids 3 (``datatype``,
``suffix``, ``custom_entities``, ``sidecar_changes``, ``search_method``,
``case_sensitive``, field-map links by description ``id`` in
``sidecar_changes.IntendedFor``) and dcm2bids 2 (``dataType``,
``modalityLabel``, ``customLabels``, ``sidecarChanges``, ``searchMethod``,
``intendedFor`` by description index). A description that gives both
spellings of one key is an error rather than a silent choice.

Matching follows dcm2bids:

- every criterion must hold; a field the series lacks fails its criterion;
- a string pattern is a shell wildcard on the field's text (case-sensitive)
  or, with ``search_method: "re"``, a regular expression matched at the
  start of the text;
- a list pattern matches a list field of the same length element by
  element;
- dcm2bids 3 operators: ``{"any": [patterns]}``, and numeric
  ``lt``/``lte``/``gt``/``gte`` (one number) and ``btw``/``btwe`` (two
  numbers, bounds excluded/included);
- a series that matches several descriptions is left out (``ambiguous``),
  as dcm2bids leaves it out.

Criteria on listing fields (:mod:`xnatfs.bids.fields`) are tried first, so
the DICOM header is read only for series the listing could not rule out.
An entity given without a value (dcm2bids 3's automatic extraction) is
supported for ``echo`` (from ``EchoNumber``); others are a config error.

Runs that dcm2bids would number come out as ``run-01``, ``run-02``: its
padding, so names match the site's existing datasets. Repeats are ordered
by scan ID, which XNAT takes from the DICOM SeriesNumber, as dcm2bids
orders them by SeriesNumber first.

A file that cannot be used raises :class:`BidsConfigError`, one line naming
the file and the problem.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xnatfs.bids.fields import LISTING_FIELDS, ScanFields
from xnatfs.bids.labels import bids_label, is_entity
from xnatfs.bids.outcome import Exclusion, Match, Outcome, Reason
from xnatfs.client.models import Scan
from xnatfs.config import ConfigError

SEARCH_METHODS = frozenset({"fnmatch", "re"})
AUTO_ENTITIES = {"echo": "EchoNumber"}
NUMERIC_OPERATORS = frozenset({"lt", "lte", "gt", "gte", "btw", "btwe"})
RUN_DIGITS = 2

# (3.x key, 2.x key) for each description field.
_SPELLINGS = {
    "datatype": ("datatype", "dataType"),
    "suffix": ("suffix", "modalityLabel"),
    "custom_entities": ("custom_entities", "customLabels"),
    "sidecar_changes": ("sidecar_changes", "sidecarChanges"),
}


class BidsConfigError(ConfigError):
    """A dcm2bids-format configuration cannot be used."""


@dataclass(frozen=True, slots=True)
class Description:
    """One parsed entry of ``descriptions``."""

    index: int
    datatype: str
    suffix: str
    entities: tuple[tuple[str, str], ...]  # value "" = take it from the header (echo)
    criteria: tuple[tuple[str, Any], ...]  # listing fields first
    sidecar_changes: Mapping[str, Any]
    link_ids: tuple[str, ...]  # its "id" (3.x) and "#<index>" (2.x)
    intended_for: tuple[str, ...]


class Dcm2bidsRules:
    """A loaded configuration; a :class:`xnatfs.bids.rules.RuleSet`."""

    run_digits = RUN_DIGITS

    def __init__(self, source: str, descriptions: Sequence[Description], search_method: str, case_sensitive: bool):
        self.source = source
        self.name = f"dcm2bids:{source}"
        self.descriptions = tuple(descriptions)
        self.search_method = search_method
        self.case_sensitive = case_sensitive

    def rule_name(self, description: Description) -> str:
        return f"dcm2bids:{Path(self.source).name}#{description.index}"

    def classify(self, scan: Scan, fields: ScanFields) -> Outcome:
        matching = [
            description
            for description in self.descriptions
            if all(self._holds(pattern, fields.get(name)) for name, pattern in description.criteria)
        ]
        if not matching:
            return None
        if len(matching) > 1:
            names = ", ".join(self.rule_name(description) for description in matching)
            return Exclusion(Reason.AMBIGUOUS, f"matches several descriptions: {names}", names)
        return self._match(matching[0], fields)

    def _match(self, description: Description, fields: ScanFields) -> Outcome:
        entities = []
        for key, value in description.entities:
            if not value:
                value = bids_label(str(fields.get(AUTO_ENTITIES[key]) or ""))
                if not value:
                    return Exclusion(
                        Reason.NEEDS_HEADER,
                        f"{key} needs {AUTO_ENTITIES[key]}, which the series lacks",
                        self.rule_name(description),
                    )
            entities.append((key, value))
        return Match(
            description.datatype,
            description.suffix,
            tuple(entities),
            self.rule_name(description),
            description.sidecar_changes,
            description.link_ids,
            description.intended_for,
        )

    def _holds(self, pattern: Any, value: Any) -> bool:
        if value is None:
            return False
        if isinstance(pattern, Mapping):
            return self._operator_holds(pattern, value)
        if isinstance(pattern, list):
            return (
                isinstance(value, list | tuple)
                and len(value) == len(pattern)
                and all(self._holds(part, item) for part, item in zip(pattern, value))
            )
        return self._text_matches(str(pattern), _text(value))

    def _operator_holds(self, pattern: Mapping[str, Any], value: Any) -> bool:
        ((operator, operand),) = pattern.items()
        if operator == "any":
            return any(self._holds(part, value) for part in operand)
        number = _number(value)
        if number is None:
            return False
        if operator == "btw":
            return operand[0] < number < operand[1]
        if operator == "btwe":
            return operand[0] <= number <= operand[1]
        return {"lt": number < operand, "lte": number <= operand, "gt": number > operand, "gte": number >= operand}[
            operator
        ]

    def _text_matches(self, pattern: str, text: str) -> bool:
        if not self.case_sensitive:
            pattern, text = pattern.lower(), text.lower()
        if self.search_method == "re":
            return re.match(pattern, text) is not None
        return fnmatch.fnmatchcase(text, pattern)


def _text(value: Any) -> str:
    """A sidecar value as dcm2bids compares it: the text of the value."""
    return str(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# -- reading -----------------------------------------------------------------


def load_config(path: str | Path) -> Dcm2bidsRules:
    """Read a dcm2bids-format JSON file; :class:`BidsConfigError` if it cannot be used."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BidsConfigError(f"{source}: cannot read: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BidsConfigError(f"{source}: not JSON: {error.msg} at line {error.lineno}") from None
    return parse_config(data, source)


def parse_config(data: Any, source: str) -> Dcm2bidsRules:
    """A rule set from an already decoded configuration; ``source`` names it in errors."""

    def fail(problem: str) -> BidsConfigError:
        return BidsConfigError(f"{source}: {problem}")

    if not isinstance(data, Mapping):
        raise fail("the top level must be a JSON object")
    search_method = _one_of(data, ("search_method", "searchMethod"), "fnmatch", fail)
    if search_method not in SEARCH_METHODS:
        raise fail(f"search_method must be 'fnmatch' or 're', not {search_method!r}")
    case_sensitive = data.get("case_sensitive", True)
    if not isinstance(case_sensitive, bool):
        raise fail("case_sensitive must be true or false")
    raw_descriptions = data.get("descriptions")
    if not isinstance(raw_descriptions, list) or not raw_descriptions:
        raise fail("'descriptions' must be a non-empty list")
    descriptions = [
        _description(index, raw, search_method, lambda problem, i=index: fail(f"description {i}: {problem}"))
        for index, raw in enumerate(raw_descriptions)
    ]
    _check_links(descriptions, fail)
    return Dcm2bidsRules(source, descriptions, search_method, case_sensitive)


def _one_of(raw: Mapping[str, Any], keys: tuple[str, str], default: Any, fail) -> Any:
    present = [key for key in keys if key in raw]
    if len(present) > 1:
        raise fail(f"both {keys[0]!r} and {keys[1]!r} given")
    return raw[present[0]] if present else default


def _description(index: int, raw: Any, search_method: str, fail) -> Description:
    if not isinstance(raw, Mapping):
        raise fail("must be a JSON object")
    datatype = _one_of(raw, _SPELLINGS["datatype"], None, fail)
    suffix = _one_of(raw, _SPELLINGS["suffix"], None, fail)
    for key, value in (("datatype", datatype), ("suffix", suffix)):
        if not isinstance(value, str) or not value or bids_label(value) != value:
            raise fail(f"{key} must be letters and digits, not {value!r}")
    entities = _entities(_one_of(raw, _SPELLINGS["custom_entities"], [], fail), fail)
    criteria = raw.get("criteria")
    if not isinstance(criteria, Mapping) or not criteria:
        raise fail("'criteria' must be a non-empty object")
    for name, pattern in criteria.items():
        _check_pattern(name, pattern, search_method, fail)
    changes = _one_of(raw, _SPELLINGS["sidecar_changes"], {}, fail)
    if not isinstance(changes, Mapping):
        raise fail("sidecar_changes must be an object")
    changes = dict(changes)
    intended_for = _links(changes.pop("IntendedFor", None), raw.get("intendedFor"), fail)
    description_id = raw.get("id", "")
    if not isinstance(description_id, str):
        raise fail("id must be a string")
    ordered_criteria = sorted(criteria.items(), key=lambda item: item[0] not in LISTING_FIELDS)
    return Description(
        index,
        datatype,
        suffix,
        entities,
        tuple(ordered_criteria),
        changes,
        tuple(filter(None, (description_id, f"#{index}"))),
        intended_for,
    )


def _entities(raw: Any, fail) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, str):
        pieces = [piece for piece in raw.split("_") if piece]
    elif isinstance(raw, list) and all(isinstance(piece, str) for piece in raw):
        pieces = [part for piece in raw for part in piece.split("_") if part]
    else:
        raise fail("custom_entities must be a string or a list of strings")
    entities: dict[str, str] = {}
    for piece in pieces:
        key, dash, value = piece.partition("-")
        if not is_entity(key) or key in ("sub", "ses"):
            raise fail(f"custom entity {piece!r}: {key!r} is not an entity a rule may set")
        if not dash:
            if key not in AUTO_ENTITIES:
                raise fail(f"custom entity {key!r} has no value (only {', '.join(AUTO_ENTITIES)} can be automatic)")
            entities[key] = ""
            continue
        label = bids_label(value)
        if not label:
            raise fail(f"custom entity {piece!r} has no letters or digits in its value")
        entities[key] = label
    return tuple(entities.items())


def _check_pattern(name: str, pattern: Any, search_method: str, fail) -> None:
    if isinstance(pattern, Mapping):
        if len(pattern) != 1:
            raise fail(f"criterion {name}: an operator object has exactly one key")
        ((operator, operand),) = pattern.items()
        if operator == "any":
            if not isinstance(operand, list):
                raise fail(f"criterion {name}: 'any' takes a list")
            for part in operand:
                _check_pattern(name, part, search_method, fail)
        elif operator in ("btw", "btwe"):
            if not (isinstance(operand, list) and len(operand) == 2 and all(_is_number(x) for x in operand)):
                raise fail(f"criterion {name}: {operator!r} takes two numbers")
        elif operator in NUMERIC_OPERATORS:
            if not _is_number(operand):
                raise fail(f"criterion {name}: {operator!r} takes a number")
        else:
            raise fail(f"criterion {name}: unknown operator {operator!r}")
    elif isinstance(pattern, list):
        for part in pattern:
            _check_pattern(name, part, search_method, fail)
    elif search_method == "re":
        try:
            re.compile(str(pattern))
        except re.error as error:
            raise fail(f"criterion {name}: bad regular expression: {error}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _links(v3: Any, v2: Any, fail) -> tuple[str, ...]:
    """Field-map targets: 3.x description ids, or 2.x description indices (as ``#<index>``)."""
    if v3 is not None and v2 is not None:
        raise fail("both 'IntendedFor' in sidecar_changes and 'intendedFor' given")
    if v3 is not None:
        values = v3 if isinstance(v3, list) else [v3]
        if not all(isinstance(value, str) for value in values):
            raise fail("IntendedFor must name description ids")
        return tuple(values)
    if v2 is not None:
        values = v2 if isinstance(v2, list) else [v2]
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            raise fail("intendedFor must give description indices")
        return tuple(f"#{value}" for value in values)
    return ()


def _check_links(descriptions: Sequence[Description], fail) -> None:
    known = {link for description in descriptions for link in description.link_ids}
    for description in descriptions:
        for target in description.intended_for:
            if target not in known:
                raise fail(f"description {description.index}: IntendedFor names unknown description {target!r}")
