"""The request counters behind `xnatfs status`: errors by kind per minute, and the server's health."""

from __future__ import annotations

import requests

from xnatfs.client.activity import MINUTES, RequestActivity, error_kind


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def request(activity: RequestActivity, clock: Clock, seconds: float, outcome) -> None:
    ticket = activity.started()
    clock.now += seconds
    activity.finished(ticket, outcome)


def test_errors_are_counted_by_kind_and_age_out():
    clock = Clock()
    activity = RequestActivity(clock=clock)
    request(activity, clock, 0.1, 200)
    request(activity, clock, 0.1, 503)
    request(activity, clock, 0.1, requests.exceptions.ReadTimeout())
    summary = activity.summary(minutes=5)
    assert summary["requests"] == 3
    assert summary["errors"] == {"HTTP 503": 1, "timeout": 1}
    clock.now += 6 * 60
    assert activity.summary(minutes=5)["errors"] == {}
    clock.now += MINUTES * 60
    request(activity, clock, 0.1, 200)
    assert activity.summary(minutes=MINUTES)["requests"] == 1


def test_health_answering_slow_unreachable_stalled():
    clock = Clock()
    activity = RequestActivity(slow_after=2.0, stall_after=30.0, clock=clock)
    assert activity.summary()["health"] == "answering"
    request(activity, clock, 0.2, 200)
    assert activity.summary()["health"] == "answering"
    request(activity, clock, 9.0, 200)
    assert activity.summary()["health"] == "slow"
    clock.now += 120
    request(activity, clock, 0.0, requests.exceptions.ConnectionError())
    assert activity.summary()["health"] == "unreachable"
    request(activity, clock, 0.1, 200)
    assert activity.summary()["health"] == "answering"
    # A server that accepts the connection and never answers: after one timed-out request.
    request(activity, clock, 10.0, requests.exceptions.ReadTimeout())
    assert activity.summary()["health"] == "unreachable"
    clock.now += 120
    request(activity, clock, 0.1, 200)
    assert activity.summary()["health"] == "answering"
    activity.started()
    clock.now += 31
    summary = activity.summary()
    assert summary["health"] == "stalled" and summary["in_flight"] == 1


def test_error_kinds():
    assert error_kind(404) == "HTTP 404"
    assert error_kind(requests.exceptions.SSLError()) == "tls"
    assert error_kind(requests.exceptions.ConnectTimeout()) == "timeout"
    assert error_kind(requests.exceptions.ConnectionError()) == "connection"
