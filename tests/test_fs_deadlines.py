"""The bound on every request, and the early answer to a caller that was killed (no kernel).

A killed process whose request waits cannot die until the daemon answers it.
The callers here are real processes: a zombie left by SIGKILL reads in /proc
as a thread exiting because of a signal, as a caller killed in the kernel does.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from xnatfs.errors import XnatTimeout
from xnatfs.fs.callers import is_killed
from xnatfs.fs.deadlines import CallerKilled, RequestDeadlines, asked_by, bounded


def state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


@contextlib.contextmanager
def zombie(command: list[str], sig: signal.Signals | None = None) -> Iterator[int]:
    """A process that ended (after ``sig``, if given) and is not reaped yet: its ID."""
    process = subprocess.Popen(command)
    try:
        if sig is not None:
            process.send_signal(sig)
        deadline = time.monotonic() + 10
        while state(process.pid) != "Z":
            assert time.monotonic() < deadline, "the process did not end"
            time.sleep(0.01)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_caller_ended_by_a_signal_counts_as_killed_and_no_other_does():
    with zombie(["sleep", "60"], signal.SIGKILL) as killed:
        assert is_killed(killed)
    with zombie(["sleep", "60"], signal.SIGTERM) as terminated:
        assert is_killed(terminated)
    with zombie(["true"]) as exited:
        assert not is_killed(exited)
    with subprocess.Popen(["sleep", "60"]) as alive:
        try:
            assert not is_killed(alive.pid)
        finally:
            alive.kill()
    assert not is_killed(2**22 + 1)  # above any pid_max: no such process


def wait_as(deadlines: RequestDeadlines, caller: int, seconds: float):
    async def request() -> None:
        asked_by(caller)
        await bounded(trio.sleep(seconds))

    return deadlines.run(request)


def given_up_with(timeout: float, caller: int) -> tuple[type[Exception], float]:
    """How a request of ``caller`` waiting 60 s under ``timeout`` ended, and after how long."""

    async def main() -> tuple[type[Exception], float]:
        deadlines = RequestDeadlines(timeout)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deadlines.watch)
            started = trio.current_time()
            try:
                with trio.fail_after(30):
                    await wait_as(deadlines, caller, 60)
            except (CallerKilled, XnatTimeout) as exc:
                return type(exc), trio.current_time() - started
            finally:
                nursery.cancel_scope.cancel()
        pytest.fail("the wait was not given up")

    return trio.run(main)


def test_a_request_whose_caller_was_killed_is_given_up_long_before_its_timeout():
    with zombie(["sleep", "60"], signal.SIGKILL) as killed:
        kind, after = given_up_with(20.0, killed)
    assert kind is CallerKilled
    assert after < 10  # its timeout is 20 s


def test_a_request_whose_caller_lives_waits_for_its_timeout():
    with subprocess.Popen(["sleep", "60"]) as alive:
        try:
            kind, after = given_up_with(1.0, alive.pid)
        finally:
            alive.kill()
    assert kind is XnatTimeout
    assert after >= 1.0
