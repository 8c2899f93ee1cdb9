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


def fault_seed(pattern: list[int | str | None], **rates) -> int:
    """A seed for ``set_faults(**rates, seed=...)`` whose first answers go as ``pattern`` says.

    Each item is what happens to one answer: the error status injected,
    ``"drop"`` or ``"truncate"``, or None for an answer left alone.
    """
    injector = FaultInjector()
    for seed in range(100_000):
        injector.configure(**rates, seed=seed)
        if [(fault.error_status or fault.cut) for fault in map(lambda _: injector.pick(), pattern)] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern}")
