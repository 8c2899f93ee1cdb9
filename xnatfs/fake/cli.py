"""``fake-server``: run the fake XNAT until SIGINT or SIGTERM.

Prints the server's URL on standard output (one line) once it is ready, so a
script can start it in the background and read where it listens.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .server import FakeXnat


def _user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    return name, password


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("a rate is a fraction between 0 and 1")
    return rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fake-server", description="Serve a fake XNAT (for tests and demos) on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--data", required=True, help="data directory (created if missing)")
    parser.add_argument("--sample", action="store_true", help="fill an empty data directory with a sample study")
    parser.add_argument("--sample-size", choices=("small", "bids", "large"), default="small")
    parser.add_argument(
        "--user",
        type=_user,
        action="append",
        metavar="NAME:PASSWORD",
        help="a user account (repeatable; default admin:admin)",
    )
    parser.add_argument(
        "--readonly-user",
        action="append",
        default=[],
        metavar="NAME",
        help="a user whose changes are refused with 403 (repeatable)",
    )
    parser.add_argument("--latency-ms", type=float, default=0, help="delay added to every request")
    parser.add_argument(
        "--honour-range", action="store_true", help="answer Range requests with 206 (default: send the whole file)"
    )
    parser.add_argument(
        "--session-timeout", type=float, default=900.0, help="idle seconds before a JSESSION expires (default 900)"
    )
    parser.add_argument(
        "--autorun-on-import", action="store_true", help="start a Queued AutoRun workflow on every DICOM import"
    )
    parser.add_argument(
        "--expired-password", action="store_true", help="answer password logins with the 'password expired' page"
    )
    parser.add_argument("--error-rate", type=_rate, default=0.0, help="fraction of answers that are 5xx")
    parser.add_argument("--error-statuses", default="500,503", help="statuses used for injected errors")
    parser.add_argument(
        "--drop-rate", type=_rate, default=0.0, help="fraction of answers whose connection is reset mid-body"
    )
    parser.add_argument("--truncate-rate", type=_rate, default=0.0, help="fraction of answers whose body is cut short")
    parser.add_argument("--stall-ms", type=float, default=0, help="length of an injected stall")
    parser.add_argument("--stall-rate", type=_rate, default=0.0, help="fraction of answers that stall")
    parser.add_argument(
        "--stall-first",
        action="store_true",
        help="a stalled request waits before it is carried out (and is carried out even if the client gave up)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for fault injection")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        statuses = tuple(int(s) for s in args.error_statuses.split(",") if s.strip())
    except ValueError:
        print("fake-server: --error-statuses takes numbers separated by commas", file=sys.stderr)
        return 2
    server = FakeXnat(
        args.data,
        port=args.port,
        sample=args.sample_size if args.sample else None,
        users=dict(args.user) if args.user else None,
        session_timeout=args.session_timeout,
        latency_ms=args.latency_ms,
        honour_range=args.honour_range,
        host=args.host,
        autorun_on_import=args.autorun_on_import,
        expired_password=args.expired_password,
        readonly_users=tuple(args.readonly_user),
    )
    server.set_faults(
        error_rate=args.error_rate,
        error_statuses=statuses,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        stall_ms=args.stall_ms,
        stall_rate=args.stall_rate,
        seed=args.seed,
        stall_first=args.stall_first,
    )
    stopping = threading.Event()

    def request_stop(signum, frame) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(server.url, flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
