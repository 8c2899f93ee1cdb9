"""Guessing BIDS names from the series descriptions scanners write by default.

Most archives were never named for BIDS; their series carry the vendor's
protocol names (``t1_mprage_sag_p2_iso``, ``ep2d_bold_rest``,
``gre_field_mapping``, ``Ax DWI``). The rules below look at the words of the
description (split at anything that is not a letter or digit, lower-cased)
and go from the most specific to the most general, because the same word
appears in several kinds of series (``T2_FLAIR`` is FLAIR, not T2w;
``DTI_FA`` is a derived map, not dwi):

1. **Left out on purpose** (``excluded``): localizers and scouts (they are
   for planning and BIDS has no place for them), derived maps the scanner
   computed (ADC, FA, TRACE, colour FA, tensor, MoCo series, MIP
   projections, anything called derived) and the vendor's report series.
   ``MPR`` is *not* taken as a reformat: HCP-style protocols call their T1w
   acquisition ``T1w_MPR``.
   If another rule already read the header, an ``ImageType`` saying
   ``DERIVED`` also leaves a series out; the header is never read just for
   this, so listing stays free.
2. **Field maps**: spin-echo / EPI / "topup" series → ``fmap`` ``epi`` with
   the phase-encoding direction from the name (``AP``, ``PA``, ``LR``,
   ``RL``; BIDS requires it, so none in the name leaves the series out);
   gradient-echo field maps → ``magnitude1`` or ``phasediff``. Scanners give
   both GRE series the same description, so unless the name says ``phase``
   or ``mag`` the header's ``ImageType`` decides, which is the one case
   where the built-in rules read a header.
3. **Diffusion**: DWI, DTI, HARDI, "diff" → ``dwi`` (direction if named).
4. **Functional**: rest, resting, BOLD, fMRI → ``func`` ``bold`` with
   ``task-rest`` (a ``task-<label>`` in the name wins); single-band
   references (SBRef) of those → ``sbref``.
5. **Anatomical**: FLAIR → ``FLAIR``; an explicit T1 → ``T1w``, an explicit
   T2 → ``T2w``; then sequence names: MPRAGE, SPGR, BRAVO, TFL → ``T1w``;
   SPACE, CUBE, TSE → ``T2w`` (after the explicit T1 test, so ``t1_space``
   stays T1w).

Anything else matches no rule and is reported as such.
"""

from __future__ import annotations

import itertools
import re

from xnatfs.bids.fields import ScanFields, image_type_words
from xnatfs.bids.labels import bids_label
from xnatfs.bids.outcome import Exclusion, Match, Outcome, Reason

_WORD = re.compile(r"[a-z0-9]+")
_TASK = re.compile(r"task[-_]([A-Za-z0-9]+)", re.IGNORECASE)

LOCALIZER_WORDS = frozenset(
    {"localizer", "localiser", "loc", "scout", "survey", "aahead", "aascout", "3plane", "triplane"}
)
DERIVED_WORDS = frozenset(
    {
        "adc",
        "fa",
        "trace",
        "tracew",
        "colfa",
        "tensor",
        "moco",
        "mocoseries",
        "mip",
        "derived",
        "isotropic",
        "exp",
        "phoenixzipreport",
        "phoenix",
    }
)
DIRECTIONS = {"ap": "AP", "pa": "PA", "lr": "LR", "rl": "RL", "si": "SI", "is": "IS"}
EPI_FMAP_WORDS = frozenset(
    {"topup", "sefmap", "seepi", "spinecho", "spinechofieldmap", "pepolar", "epifmap", "fmapepi", "blipup", "blipdown"}
)
GRE_FMAP_WORDS = frozenset({"fieldmap", "fieldmapping", "fmap", "b0map", "grefieldmap"})
DWI_WORDS = frozenset({"dwi", "dti", "hardi", "diff", "diffusion", "dmri", "mddw"})
FUNC_WORDS = frozenset({"rest", "resting", "restingstate", "rsfmri", "bold", "fmri", "func"})
T1_SEQUENCE_WORDS = frozenset({"mprage", "mpr", "spgr", "fspgr", "bravo", "tfl", "tfl3d"})
T2_SEQUENCE_WORDS = frozenset({"space", "cube", "tse", "fse"})


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def _joined_words(words: tuple[str, ...]) -> set[str]:
    """Adjacent word pairs run together, so ``field_map`` and ``se_epi`` are recognised."""
    return {a + b for a, b in itertools.pairwise(words)} | {a + b + c for a, b, c in zip(words, words[1:], words[2:])}


def _direction(words: tuple[str, ...]) -> str | None:
    found = [DIRECTIONS[word] for word in words if word in DIRECTIONS]
    return found[-1] if found else None


def _direction_entities(words: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    direction = _direction(words)
    return (("dir", direction),) if direction else ()


def _excluded(words: tuple[str, ...], vocabulary: set[str], fields: ScanFields) -> Exclusion | None:
    if vocabulary & LOCALIZER_WORDS:
        return Exclusion(Reason.EXCLUDED, "localizer or scout", "vendor:localizer")
    derived = vocabulary & DERIVED_WORDS
    if derived:
        return Exclusion(Reason.EXCLUDED, f"derived series ({', '.join(sorted(derived))})", "vendor:derived")
    if "DERIVED" in image_type_words(fields.header_if_read().get("ImageType")):
        return Exclusion(Reason.EXCLUDED, "derived series (ImageType DERIVED)", "vendor:derived")
    return None


def _field_map(words: tuple[str, ...], vocabulary: set[str], fields: ScanFields) -> Outcome:
    if vocabulary & EPI_FMAP_WORDS:
        direction = _direction_entities(words)
        if not direction:
            return Exclusion(Reason.NO_RULE, "spin-echo field map without a direction in its name", "vendor:fmap-epi")
        return Match("fmap", "epi", direction, "vendor:fmap-epi")
    if not vocabulary & GRE_FMAP_WORDS:
        return None
    if vocabulary & {"phase", "ph", "phasediff"}:
        return Match("fmap", "phasediff", (), "vendor:fmap-gre")
    if vocabulary & {"mag", "magnitude"}:
        return Match("fmap", "magnitude1", (), "vendor:fmap-gre")
    image_type = image_type_words(fields.get("ImageType"))
    if "P" in image_type or "PHASE" in image_type:
        return Match("fmap", "phasediff", (), "vendor:fmap-gre")
    if "M" in image_type or "MAGNITUDE" in image_type:
        return Match("fmap", "magnitude1", (), "vendor:fmap-gre")
    return Exclusion(Reason.NO_RULE, "field map whose ImageType says neither magnitude nor phase", "vendor:fmap-gre")


def _functional(text: str, words: tuple[str, ...], vocabulary: set[str]) -> Match | None:
    if not vocabulary & FUNC_WORDS:
        return None
    named = _TASK.search(text)
    task = bids_label(named.group(1)) if named else "rest"
    suffix = "sbref" if "sbref" in vocabulary else "bold"
    return Match("func", suffix, (("task", task),) + _direction_entities(words), "vendor:func")


def _anatomical(vocabulary: set[str]) -> Match | None:
    if "flair" in vocabulary:
        return Match("anat", "FLAIR", (), "vendor:anat-FLAIR")
    if vocabulary & {"t1", "t1w"}:
        return Match("anat", "T1w", (), "vendor:anat-T1w")
    if vocabulary & {"t2", "t2w"}:
        return Match("anat", "T2w", (), "vendor:anat-T2w")
    if vocabulary & T1_SEQUENCE_WORDS:
        return Match("anat", "T1w", (), "vendor:anat-T1w")
    if vocabulary & T2_SEQUENCE_WORDS:
        return Match("anat", "T2w", (), "vendor:anat-T2w")
    return None


def classify(text: str, fields: ScanFields) -> Outcome:
    """The vendor rules for a series described as ``text``; None if none applies."""
    words = _words(text)
    vocabulary = set(words) | _joined_words(words)
    excluded = _excluded(words, vocabulary, fields)
    if excluded is not None:
        return excluded
    field_map = _field_map(words, vocabulary, fields)
    if field_map is not None:
        return field_map
    if vocabulary & DWI_WORDS:
        if "sbref" in vocabulary:
            return Match("dwi", "sbref", _direction_entities(words), "vendor:dwi")
        return Match("dwi", "dwi", _direction_entities(words), "vendor:dwi")
    return _functional(text, words, vocabulary) or _anatomical(vocabulary)
