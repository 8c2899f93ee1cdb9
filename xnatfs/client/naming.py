"""Naming scans from their series description (``assign_scan_names``).

A naming configuration maps a tag to the patterns that select it::

    {
        "T1":  {"SeriesDescription": ["T1w", "MPRAGE"]},
        "RST": {"SeriesDescription": "rest|fMRI"},
        "DTI": {"SeriesDescription": "DWI|DTI", "ImageType": "ORIGINAL"},
        "MET1": {"SeriesDescription": "multiecho", "EchoNumber": 1},
        "MET2": {"SeriesDescription": "multiecho", "EchoNumber": 2},
    }

``SeriesDescription`` is a regular expression, or a list of them (any may
match), searched case-insensitively in the scan's series description (its
type when it has none). ``ImageType``, when present, must also be found in
the scan's DICOM image type. A scan gets a tag when exactly one tag
matches; a multi-echo scan may get several when every match carries an
``EchoNumber``. Anything else is ambiguous and the scan stays unnamed.

The name given is ``<base>_<tag>_<series number, 2 digits>_<description>``
with every run of characters other than letters, digits, ``.`` and ``+``
in the description replaced by ``-`` (datman's file naming).

The configuration can be a plain mapping, an object with
``get_tags(site=None)`` (such as datman's study config or
:class:`xnatfs.client.config.ClientConfig`), or a result carrying the map as
``series_map``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def tag_map_from(config: Any, site: str | None = None) -> dict[str, Mapping[str, Any]]:
    """The tag → settings map of a naming configuration (see the module docs)."""
    source = config.get_tags(site=site) if hasattr(config, "get_tags") else config
    source = getattr(source, "series_map", source)
    if not isinstance(source, Mapping):
        raise TypeError("a naming configuration must map tags to their settings")
    return {str(tag): settings for tag, settings in source.items() if isinstance(settings, Mapping)}


def _patterns(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def matching_tags(
    description: str, image_type: str, multiecho: bool, tag_map: Mapping[str, Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """The tags a scan should carry, with their settings (empty if none or ambiguous)."""
    matches = {}
    for tag, settings in tag_map.items():
        wanted = _patterns(settings.get("SeriesDescription"))
        if not any(re.search(pattern, description or "", re.IGNORECASE) for pattern in wanted):
            continue
        image_pattern = settings.get("ImageType")
        if image_pattern and not any(re.search(p, image_type or "", re.IGNORECASE) for p in _patterns(image_pattern)):
            continue
        matches[tag] = settings
    if len(matches) <= 1:
        return matches
    if multiecho and all("EchoNumber" in settings for settings in matches.values()):
        return matches
    logger.info("series %r matches several tags (%s); leaving it unnamed", description, ", ".join(matches))
    return {}


def mangle(description: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.+]+", "-", description or "")


def scan_name(base: str, tag: str, series: str, description: str) -> str:
    return "_".join([base, tag, str(series).zfill(2), mangle(description)])
