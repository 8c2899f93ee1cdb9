"""The test helpers' own checks: the daemon-log check of mount tests, and the reason mount tests are skipped."""

from __future__ import annotations

from mountutil import fuse_unavailable, log_problems

RECORD = "2026-01-01 12:00:00,000 1234 {level} xnatfs.fs.errno: {message}"


def test_mount_tests_are_skipped_with_the_reason_where_dev_fuse_is_missing(tmp_path):
    missing = tmp_path / "nowhere" / "fuse"
    assert fuse_unavailable(str(missing)).startswith(f"{missing} is missing")
    device = tmp_path / "fuse"
    device.write_bytes(b"")
    device.chmod(0o000)
    reason = fuse_unavailable(str(device))
    assert reason is None or "cannot be opened" in reason  # root may open it anyway


def test_the_log_check_finds_tracebacks_and_unexpected_errors_only():
    log = "\n".join(
        [
            RECORD.format(level="INFO", message="mounted"),
            RECORD.format(level="WARNING", message="mkdir x refused (EPERM)"),
            RECORD.format(level="ERROR", message="mkdir SUB061 failed: HTTP 502"),
            RECORD.format(level="ERROR", message="read failed unexpectedly"),
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in f',
            "ValueError: boom",
        ]
    )
    problems = log_problems(log, expected_errors=(r"failed: HTTP 502",))
    assert problems == [
        RECORD.format(level="ERROR", message="read failed unexpectedly"),
        "traceback after: " + RECORD.format(level="ERROR", message="read failed unexpectedly"),
    ]
    assert log_problems(RECORD.format(level="INFO", message="Traceback is only a word here")) == []
    assert log_problems("Traceback (most recent call last):\n") == ["traceback after: (start of log)"]
