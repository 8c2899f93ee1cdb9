"""The bound on a series zip started before a file of it is opened (no server needed)."""

from __future__ import annotations

import pytest

from xnatfs.fs.series import SeriesAbandoned, SeriesFlight, _EarlyGate


class Collected:
    """Stands in for the zip parser: keeps what it is given."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> int:
        self.chunks.append(chunk)
        return len(chunk)


def gate(flight: SeriesFlight, bound: int) -> tuple[_EarlyGate, Collected]:
    parsed = Collected()
    return _EarlyGate(parsed, flight, "/data/experiments/E1/scans/2/resources/DICOM", bound), parsed


def test_an_early_zip_nobody_opened_stops_past_its_bound():
    flight = SeriesFlight(early=True)
    early, parsed = gate(flight, 10)
    early.write(b"12345678")
    with pytest.raises(SeriesAbandoned):
        early.write(b"12345678")
    assert flight.abandoned and flight.known.is_set()
    assert parsed.chunks == [b"12345678"]


def test_an_early_zip_a_file_of_which_was_opened_goes_on_past_its_bound():
    flight = SeriesFlight(early=True)
    early, parsed = gate(flight, 10)
    flight.claim()
    early.write(b"12345678")
    early.write(b"12345678")
    assert not flight.abandoned
    assert parsed.chunks == [b"12345678", b"12345678"]


def test_an_abandoned_zip_takes_no_more_bytes():
    flight = SeriesFlight(early=True)
    early, parsed = gate(flight, 1 << 20)
    flight.abandon("no file of it was opened", "/data/experiments/E1/scans/2/resources/DICOM")
    with pytest.raises(SeriesAbandoned):
        early.write(b"x")
    assert parsed.chunks == []
