"""Series named by the ReproIn convention.

Sites that follow ReproIn name their scanner protocols in BIDS terms, so
the name alone says where a series goes and no guessing is needed:

    [PREFIX:]<datatype>[-<suffix>][_<entity>-<label>...][_run+|_run=][__<free text>]

- An upper-case ``PREFIX:`` is the console's folder and is ignored.
- The datatype comes first (``anat``, ``func``, ``dwi``, ``fmap``, ``perf``);
  anything else is not a ReproIn name, and the vendor rules get a go.
- ``__`` ends the BIDS part; what follows is a free comment.
- ``func`` defaults to ``bold`` and ``dwi`` to ``dwi``; an ``fmap`` without a
  suffix is told apart by its image type (phase → ``phasediff``, magnitude →
  ``magnitude1``, diffusion-weighted → ``epi``), which needs the header.
- ``func`` without a task gets ``task-UNKNOWN``, as the convention says,
  since BIDS requires one.
- ``_ses-`` is ignored: the session is the XNAT experiment.
- ``_run-<N>`` is written zero-padded to two digits, ``_run+`` takes the
  next number of the session's counter and ``_run=`` repeats the current
  one; the counter is kept across the session's ReproIn series in scan
  order, by the planner. A phase field map marked ``run+`` shares the run
  of the magnitude before it.
- ``anat-scout*`` series (localizers) are excluded.
- Entity labels are made BIDS-safe by :func:`xnatfs.bids.labels.bids_label`;
  a name with an unknown entity, or a label that drops to nothing, is not a
  ReproIn name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xnatfs.bids.fields import ScanFields, image_type_words
from xnatfs.bids.labels import bids_label, is_entity
from xnatfs.bids.outcome import Exclusion, Match, Outcome, Reason

RULE = "reproin"
DATATYPES = frozenset({"anat", "func", "dwi", "fmap", "perf"})
DEFAULT_SUFFIX = {"func": "bold", "dwi": "dwi"}
RUN_MARKERS = frozenset({"+", "="})
RUN_DIGITS = 2

_CONSOLE_PREFIX = re.compile(r"^[A-Z][A-Z0-9]*:")


@dataclass(frozen=True, slots=True)
class ReproinName:
    datatype: str
    suffix: str  # "" when the name gives none
    entities: tuple[tuple[str, str], ...]  # BIDS-safe labels; run may be "+" or "="


def _run_value(raw: str) -> str | None:
    if raw in RUN_MARKERS:
        return raw
    if raw.isdigit():
        return f"{int(raw):0{RUN_DIGITS}d}"
    return None


def parse(text: str) -> ReproinName | None:
    """The BIDS part of a ReproIn series name, or None if ``text`` is not one."""
    bids_part = _CONSOLE_PREFIX.sub("", text.strip()).split("__", 1)[0]
    head, *pieces = bids_part.split("_")
    datatype, _, suffix = head.partition("-")
    if datatype not in DATATYPES or (suffix and bids_label(suffix) != suffix):
        return None
    entities: dict[str, str] = {}
    for piece in pieces:
        if piece in ("run+", "run="):
            entities["run"] = piece[-1]
            continue
        if piece in ("ses+", "ses="):
            continue
        key, dash, raw = piece.partition("-")
        if not dash or not is_entity(key) or key == "sub" or key in entities:
            return None
        if key == "ses":
            continue
        label = _run_value(raw) if key == "run" else bids_label(raw)
        if not label:
            return None
        entities[key] = label
    return ReproinName(datatype, suffix, tuple(entities.items()))


def _fmap_suffix(fields: ScanFields) -> str | None:
    image_type = image_type_words(fields.get("ImageType"))
    if "P" in image_type or "PHASE" in image_type:
        return "phasediff"
    if "DIFFUSION" in image_type:
        return "epi"
    if "M" in image_type or "MAGNITUDE" in image_type:
        return "magnitude1"
    return None


def classify(text: str, fields: ScanFields) -> Outcome:
    """Where a series named ``text`` goes under ReproIn; None if it is not a ReproIn name."""
    name = parse(text)
    if name is None:
        return None
    if name.datatype == "anat" and name.suffix.lower().startswith("scout"):
        return Exclusion(Reason.EXCLUDED, "localizer (ReproIn scout)", RULE)
    suffix = name.suffix or DEFAULT_SUFFIX.get(name.datatype, "")
    entities = dict(name.entities)
    if not suffix and name.datatype == "fmap":
        suffix = _fmap_suffix(fields) or ""
        if suffix == "phasediff" and entities.get("run") == "+":
            entities["run"] = "="
    if not suffix:
        return Exclusion(Reason.NO_RULE, f"ReproIn {name.datatype} series without a suffix", RULE)
    if name.datatype == "func":
        entities.setdefault("task", "UNKNOWN")
    return Match(name.datatype, suffix, tuple(entities.items()), RULE)
