"""What a rule may ask about a scan: listing fields for free, header fields lazily.

Rules speak dcm2niix sidecar field names (``SeriesDescription``,
``ImageType``, ...), because that is what dcm2bids configs are written in.
Three of them are answered from the XNAT listing the mount already holds,
without any I/O:

- ``SeriesDescription``: the scan's ``series_description``;
- ``SeriesNumber``: the scan ID, when it is a plain number (XNAT's DICOM
  receiver names scans by series number);
- ``XnatScanType``: the scan's ``type`` (not ``ProtocolName``: which DICOM
  field XNAT copies into the type is a site setting, so treating it as
  ``ProtocolName`` would match differently from dcm2bids on the same data).

Every other field comes from "one DICOM header of the series", which the
caller provides as a :data:`HeaderLookup`: a callable taking the
:class:`~xnatfs.client.models.Scan` and returning a mapping of sidecar-style
fields (lists for multi-valued fields such as ``ImageType``, numbers as
numbers). It is called at most once per scan and only when a rule actually
needs a field the listing lacks, so a config that only looks at series
descriptions never reads a file. Without a lookup, such a rule raises
:class:`HeaderNeeded` and the plan records the scan as left out for that
reason. A lookup may raise :class:`~xnatfs.errors.XnatError` (the header
could not be read); that too leaves the scan out, with the message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xnatfs.client.models import Scan

HeaderLookup = Callable[[Scan], Mapping[str, Any]]

LISTING_FIELDS = frozenset({"SeriesDescription", "SeriesNumber", "XnatScanType"})

_MISSING = object()


def image_type_words(value: Any) -> tuple[str, ...]:
    """``ImageType`` as upper-case words, given as a list (sidecar) or as ``A\\B`` text (DICOM)."""
    if not value:
        return ()
    parts = value if isinstance(value, list | tuple) else str(value).split("\\")
    return tuple(str(part).upper() for part in parts)


class HeaderNeeded(Exception):
    """A rule needs a header field and no header lookup was given."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(f"needs DICOM field {field}, and no header was available")


class ScanFields:
    """Field lookup for one scan; remembers whether the header was read."""

    def __init__(self, scan: Scan, header_lookup: HeaderLookup | None = None):
        self.scan = scan
        self._lookup = header_lookup
        self._header: Mapping[str, Any] | None = None

    @property
    def header_used(self) -> bool:
        return self._header is not None

    def listing_value(self, field: str) -> Any:
        """The listing's answer for ``field``, or None where the listing has none."""
        if field == "SeriesDescription":
            return self.scan.series_description or None
        if field == "SeriesNumber":
            return int(self.scan.id) if self.scan.id.isdigit() else None
        if field == "XnatScanType":
            return self.scan.type or None
        return None

    def get(self, field: str) -> Any:
        """The value of ``field``; None when the series does not have it.

        Reads the header (once) when the listing cannot answer.
        """
        value = self.listing_value(field)
        if value is not None:
            return value
        try:
            return self.header().get(field)
        except HeaderNeeded:
            raise HeaderNeeded(field) from None

    def header(self) -> Mapping[str, Any]:
        if self._header is None:
            if self._lookup is None:
                raise HeaderNeeded("the DICOM header")
            self._header = dict(self._lookup(self.scan))
        return self._header

    def header_if_read(self) -> Mapping[str, Any]:
        """The header if some rule already read it, else an empty mapping (never reads)."""
        return self._header or {}
