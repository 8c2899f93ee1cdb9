"""BIDS-safe labels for subjects, sessions and entity values.

BIDS allows only letters and digits in a label (``sub-<label>``,
``task-<label>``, ...), while XNAT labels may also hold ``_`` and ``-`` and
old servers send anything. The rule, the same on every listing so names
never move under a reader:

1. **Drop** every character that is not an ASCII letter or digit
   (``SUB_001`` → ``SUB001``, ``pre-op`` → ``preop``). Dropping, rather than
   spelling out, keeps the common case (labels that only use ``_``/``-`` as
   separators) readable.
2. A label left **empty** takes the letters and digits of the object's
   accession ID (``XNAT_S00012`` → ``XNATS00012``), which is never empty.
3. **Collisions**: within one project for subjects, within one subject for
   sessions, several XNAT labels may drop to the same BIDS label. Compared
   case-insensitively (a dataset copied to a case-insensitive disk must not
   merge two subjects), every member of such a group whose XNAT label is
   *not* already exactly its BIDS label gets the letters and digits of its
   accession ID appended (``SUB_01`` next to ``SUB01`` → ``SUB01XNATS00007``).
   A label that was already BIDS-safe keeps its name, so adding a look-alike
   subject later never renames an existing one; accession IDs are unique on a
   server, so the appended forms cannot collide with each other. Should one
   still meet another label (an XNAT label spelled like a disambiguated
   one), the later in accession-ID order adds ``x`` and the first 8 hex
   digits of the SHA-256 of its XNAT label until it is unique.

Session labels first lose the subject's label where XNAT convention put it
in front (``SUB001_MR1`` of subject ``SUB001`` → ``MR1``): the ``sub-``
folder already says whose session it is, and BIDS names repeat both labels
in every file name. The prefix is dropped only when it is followed by ``_``,
``-`` or ``.``, or by a letter/digit boundary that leaves something behind,
so ``SUB001`` alone (a session named like its subject) stays ``SUB001``.

Entity order (:data:`ENTITY_ORDER`) is the one the BIDS specification
(1.9) fixes for file names; :func:`ordered_entities` puts any set of
entities in that order so that rules can produce them in any order.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from xnatfs.client.models import Experiment, Subject

ENTITY_ORDER: tuple[str, ...] = (
    "sub",
    "ses",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "seg",
    "res",
    "den",
    "label",
    "desc",
)
_ENTITY_RANK = {name: rank for rank, name in enumerate(ENTITY_ORDER)}

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_SEPARATORS = "_-."


class UnknownEntity(ValueError):
    """An entity key BIDS does not define."""


def bids_label(raw: str) -> str:
    """Rule 1: ``raw`` with everything but ASCII letters and digits dropped (may be empty)."""
    return _NOT_ALNUM.sub("", raw)


def is_entity(key: str) -> bool:
    return key in _ENTITY_RANK


def ordered_entities(entities: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``entities`` in BIDS file-name order; an unknown key raises :class:`UnknownEntity`."""
    pairs = list(entities)
    for key, _ in pairs:
        if key not in _ENTITY_RANK:
            raise UnknownEntity(f"{key!r} is not a BIDS entity")
    return tuple(sorted(pairs, key=lambda pair: _ENTITY_RANK[pair[0]]))


def drop_subject_prefix(session_label: str, subject_label: str) -> str:
    """The session label without its subject's label in front, where XNAT put one there."""
    if not subject_label or not session_label.lower().startswith(subject_label.lower()):
        return session_label
    rest = session_label[len(subject_label) :]
    stripped = rest.lstrip(_SEPARATORS)
    if not stripped:
        return session_label
    if stripped != rest:
        return stripped
    # No separator: only a letter/digit change marks a boundary (SUB001MR1 → MR1, not SUB0011 → 1).
    boundary = subject_label[-1].isdigit() != rest[0].isdigit()
    return rest if boundary else session_label


def _hash_suffix(raw_label: str) -> str:
    return "x" + hashlib.sha256(raw_label.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def assign_labels(objects: Sequence[tuple[str, str]]) -> dict[str, str]:
    """BIDS labels for ``(accession_id, xnat_label)`` pairs of one scope, by the rules above.

    Returns accession ID → BIDS label. The answer depends only on the set of
    pairs, never on their order.
    """
    ordered = sorted(objects)
    candidates: dict[str, str] = {}
    for accession, raw in ordered:
        candidates[accession] = bids_label(raw) or bids_label(accession)
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for accession, raw in ordered:
        groups[candidates[accession].casefold()].append((accession, raw))
    for members in groups.values():
        if len(members) < 2:
            continue
        for accession, raw in members:
            if raw != candidates[accession]:
                candidates[accession] += bids_label(accession)
    return _make_unique(ordered, candidates)


def _make_unique(ordered: Sequence[tuple[str, str]], candidates: Mapping[str, str]) -> dict[str, str]:
    taken: set[str] = set()
    labels: dict[str, str] = {}
    for accession, raw in ordered:
        label = candidates[accession]
        while label.casefold() in taken:
            label += _hash_suffix(raw + label)
        taken.add(label.casefold())
        labels[accession] = label
    return labels


def subject_labels(subjects: Iterable[Subject]) -> dict[str, str]:
    """Subject accession ID → BIDS label for one project's subjects (``Subject`` records)."""
    return assign_labels([(subject.id, subject.label) for subject in subjects])


def session_labels(experiments: Iterable[Experiment], subject_label: str) -> dict[str, str]:
    """Experiment accession ID → BIDS session label for one subject's experiments.

    ``subject_label`` is the subject's XNAT label, whose prefix is dropped.
    """
    return assign_labels(
        [(experiment.id, drop_subject_prefix(experiment.label, subject_label)) for experiment in experiments]
    )
