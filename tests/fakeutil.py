"""Helpers for tests that drive the fake XNAT (fixtures live in conftest.py)."""

from __future__ import annotations

from xnatfs.fake.server import FaultInjector


def listing(http, server, path: str, **params) -> dict:
    """The ``ResultSet`` of a listing, checked to be a 200 whose ``totalRecords`` is right."""
    answer = http.get(server.url + path, params={"format": "json", **params})
    assert answer.status_code == 200, answer.text
    result = answer.json()["ResultSet"]
    assert result["totalRecords"] == str(len(result["Result"]))
    return result


def rows(http, server, path: str, **params) -> list[dict]:
    """The rows of a listing (see :func:`listing`)."""
    return listing(http, server, path, **params)["Result"]


def fault_seed(pattern: list[int | None], error_rate: float = 0.5) -> int:
    """A ``set_faults`` seed whose first answers fail exactly as ``pattern`` says.

    Each item is the error status injected into that answer, or None for an
    answer left alone; only ``error_rate`` and the statuses in ``pattern`` are used.
    """
    statuses = tuple(sorted({status for status in pattern if status is not None})) or (503,)
    injector = FaultInjector()
    for seed in range(100_000):
        injector.configure(error_rate=error_rate, error_statuses=statuses, seed=seed)
        if [injector.pick().error_status for _ in pattern] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern}")
