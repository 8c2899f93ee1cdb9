"""The ``xnatfs`` command: mount, unmount, demo, prefetch, cache, uploads, status, refresh, bids-check, fake-server.

Every problem the user can fix (a wrong URL, refused credentials, a
mountpoint that is not an empty folder, no /dev/fuse) is reported as one
line on stderr with a non-zero exit status, before anything is forked.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import requests

from xnatfs import prefetch
from xnatfs.config import ConfigError, default_config_path
from xnatfs.errors import XnatAuthError, XnatError, XnatPasswordExpired, redact_url
from xnatfs.fs.settings import (
    MountSettings,
    default_cache_dir,
    default_state_dir,
    load_config,
    parse_size,
)
from xnatfs.prefetch import human_bytes

logger = logging.getLogger(__name__)

UNMOUNT_WAIT = 120.0


class UsageProblem(Exception):
    """Something the user asked for cannot work; the message is shown as is."""


# ---- logging ---------------------------------------------------------------


def configure_logging(level: str, log_file: Path | None) -> None:
    """Log to ``log_file`` (else stderr) at ``level``.

    Names that are not UTF-8 are held as surrogates (os.fsdecode); the
    handlers write those as backslash escapes, since a strict encoder would
    drop the whole line about them.
    """
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
    else:
        if hasattr(sys.stderr, "reconfigure"):
            sys.stderr.reconfigure(errors="backslashreplace")
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))


# ---- mount -------------------------------------------------------------------


def _settings_from_args(args) -> MountSettings:
    config_path = Path(args.config).expanduser() if args.config else default_config_path()
    try:
        settings = load_config(config_path, args.url)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    except OSError as exc:
        raise UsageProblem(f"config file {config_path}: {exc.strerror or exc}") from None
    changes: dict = {"url": args.url.rstrip("/"), "mountpoint": Path(args.mountpoint).expanduser()}
    if args.user is not None:
        changes["user"] = args.user
    if args.password_file is not None:
        changes["password_file"] = Path(args.password_file).expanduser()
    if args.cache_dir is not None:
        changes["cache_dir"] = Path(args.cache_dir).expanduser()
    if args.cache_size is not None:
        try:
            changes["cache_size"] = parse_size(args.cache_size)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    if args.series_zip_size is not None:
        try:
            changes["series_zip_size"] = parse_size(args.series_zip_size)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    if args.ttl is not None:
        changes["ttl"] = args.ttl
    if args.timeout is not None:
        changes["timeout"] = args.timeout
    options = list(settings.fuse_options)
    for group in args.options or []:
        options.extend(o.strip() for o in group.split(",") if o.strip())
    changes["fuse_options"] = tuple(options)
    if args.read_only or "ro" in options:
        changes["read_only"] = True
    if args.allow_delete:
        changes["allow_delete"] = True
    if args.experiment_type:
        changes["experiment_type"] = args.experiment_type
    if args.foreground:
        changes["foreground"] = True
    if args.log_level is not None:
        changes["log_level"] = args.log_level
    if args.log_file is not None:
        changes["log_file"] = Path(args.log_file).expanduser()
    if args.insecure:
        changes["verify_tls"] = False
    if args.no_bids:
        changes["bids"] = False
    if args.bids_config is not None:
        changes["bids_config"] = Path(args.bids_config).expanduser()
    try:
        settings = replace(settings, **changes)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if settings.bids and settings.bids_config is not None:
        _check_bids_config(settings.bids_config)
    # The daemon works from "/": every path it is given must stand on its own.
    return replace(
        settings,
        cache_dir=Path(os.path.abspath(settings.cache_dir)),
        log_file=_absolute(settings.log_file),
        password_file=_absolute(settings.password_file),
        bids_config=_absolute(settings.bids_config),
    )


def _check_bids_config(path: Path) -> None:
    """Refuse a dcm2bids config that cannot be used before the mount starts."""
    from xnatfs.bids.dcm2bids import load_config as load_bids_config

    try:
        load_bids_config(path)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None


def _absolute(path: Path | None) -> Path | None:
    return Path(os.path.abspath(path)) if path is not None else None


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageProblem(f"not a server address: {redact_url(url)} (expected http(s)://host[:port])")


def check_fuse_device() -> None:
    if not os.path.exists("/dev/fuse"):
        raise UsageProblem("/dev/fuse is missing: install fuse3 and load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageProblem("no permission to use /dev/fuse")


def check_mountpoint(mountpoint: Path) -> None:
    """An existing, empty folder we may write to; a stale xnatfs mount there is cleaned."""
    from xnatfs.fs.mount import clean_stale, mount_state

    state = mount_state(mountpoint)
    if state == "stale":
        logger.warning("cleaning a stale mount at %s", mountpoint)
        clean_stale(mountpoint)
    elif state == "mounted":
        raise UsageProblem(f"{mountpoint} is already mounted; unmount it first (xnatfs unmount {mountpoint})")
    if not mountpoint.exists():
        raise UsageProblem(f"mountpoint {mountpoint} does not exist")
    if not mountpoint.is_dir():
        raise UsageProblem(f"mountpoint {mountpoint} is not a directory")
    try:
        if any(os.scandir(mountpoint)):
            raise UsageProblem(f"mountpoint {mountpoint} is not empty; mount on an empty folder")
    except PermissionError:
        raise UsageProblem(f"no permission to read mountpoint {mountpoint}") from None
    if not os.access(mountpoint, os.W_OK | os.X_OK):
        raise UsageProblem(f"no permission to mount on {mountpoint}")


def check_outside_mount(settings: MountSettings) -> None:
    """The daemon must never use its own mount: that would wait on itself forever."""
    inside = str(settings.mountpoint).rstrip("/") + "/"
    for what, path in (("cache folder", settings.cache_dir), ("log file", settings.log_file)):
        if path is not None and (os.path.realpath(path) + "/").startswith(inside):
            raise UsageProblem(f"the {what} {path} cannot be inside the mountpoint")


def _password_from_file(path: Path) -> str:
    try:
        return path.read_text().splitlines()[0] if path.stat().st_size else ""
    except (OSError, IndexError) as exc:
        raise UsageProblem(f"cannot read password file {path}: {getattr(exc, 'strerror', exc)}") from None


def _credentials(settings: MountSettings) -> tuple[str | None, str | None]:
    from xnatfs.client.credentials import resolve_credentials

    password = _password_from_file(settings.password_file) if settings.password_file else None
    found = resolve_credentials(settings.url, settings.user, password)
    if found is not None:
        return found.username, found.password
    if settings.user and sys.stdin.isatty():
        return settings.user, getpass.getpass(f"Password for {settings.user} at {redact_url(settings.url)}: ")
    return settings.user, None


STARTUP_RETRIES = 1
# A server answering 500 or 502-504 is there but busy (a transient database error, or
# restarting behind its proxy): the check asks it this many times, each with its own
# retry, within the one --timeout.
STARTUP_BUSY_ATTEMPTS = 4
STARTUP_BUSY_STATUSES = frozenset({500, 502, 503, 504})


def connect(settings: MountSettings):
    """A connection that has been shown to work, and the project listing that proved it.

    The check retries little, so a wrong address is reported in seconds, and
    a server that does not answer within the timeout; the mount itself
    retries more. Only a server that answers that it is busy is asked again.
    """
    from xnatfs.client.budget import Budget, bounded_by
    from xnatfs.client.connection import XnatConnection
    from xnatfs.client.models import Project

    user, password = _credentials(settings)
    who = f"user {user}" if user else "guest access"

    def check() -> tuple[XnatConnection, list[Project]]:
        connection = XnatConnection(
            settings.url,
            user,
            password,
            verify=settings.verify_tls,
            timeout=settings.timeout,
            retries=min(STARTUP_RETRIES, settings.retries),
        )
        try:
            return connection, connection.list_projects()
        except BaseException:
            connection.close()
            raise

    try:
        with bounded_by(Budget(settings.timeout)):
            for attempt in range(1, STARTUP_BUSY_ATTEMPTS + 1):
                try:
                    connection, projects = check()
                    break
                except XnatError as exc:
                    if exc.status not in STARTUP_BUSY_STATUSES or attempt == STARTUP_BUSY_ATTEMPTS:
                        raise
                    logger.warning("%s is busy (%s); asking again", redact_url(settings.url), exc.message)
    except XnatAuthError as exc:
        raise UsageProblem(f"{redact_url(settings.url)} refused {who}: {exc.message}; {_advice(exc)}") from None
    except XnatError as exc:
        raise UsageProblem(f"cannot use {redact_url(settings.url)}: {exc.message}; {_advice(exc)}") from None
    connection.retries = settings.retries
    connection.max_answer_bytes = settings.max_answer_size
    return connection, projects


def _advice(exc: XnatError) -> str:
    """What the user can do about a failed start-up check."""
    cause = exc.__cause__
    if isinstance(exc, XnatPasswordExpired):
        return "set a new password in the server's web page, then mount again"
    if isinstance(exc, XnatAuthError):
        return "check the user name and password (--user, --password-file, ~/.netrc)"
    if isinstance(cause, requests.exceptions.SSLError):
        return (
            "check the address (http or https?); for a private CA set REQUESTS_CA_BUNDLE, "
            "or skip the check with --insecure"
        )
    if isinstance(cause, requests.exceptions.ConnectionError):
        return "check the address and port, and that the server is up and reachable from here"
    return "see the log file for details"


def _daemon_log_file(settings: MountSettings) -> Path:
    return settings.log_file or default_state_dir() / "xnatfs.log"


def run_mount(settings: MountSettings, connection, projects, notify=None) -> int:
    """Serve the mount in this process until it is unmounted; 0 on a clean end."""
    from xnatfs.fs.mount import build_operations, remove_record, serve, write_record

    try:
        ops = build_operations(settings, connection, projects=projects)
    except (OSError, XnatError) as exc:
        message = f"cannot start: {exc}"
        if notify:
            notify(message)
            return 1
        raise UsageProblem(message) from None
    write_record(settings)
    try:
        serve(ops, settings, on_mounted=(lambda: notify(None)) if notify else None)
    except RuntimeError as exc:
        message = f"cannot mount {settings.mountpoint}: {exc}"
        if notify:
            notify(message)
            return 1
        raise UsageProblem(message) from None
    finally:
        remove_record(settings.mountpoint)
        connection.close()
    return 0


def cmd_mount(args) -> int:
    settings = _settings_from_args(args)
    # A detached mount logs to its file from the start, so that retries of the
    # start-up check do not clutter the one line a failure prints.
    configure_logging(settings.log_level, settings.log_file if settings.foreground else _daemon_log_file(settings))
    check_url(settings.url)
    check_fuse_device()
    check_mountpoint(settings.mountpoint)
    settings = replace(settings, mountpoint=settings.mountpoint.resolve())
    check_outside_mount(settings)
    connection, projects = connect(settings)
    if settings.foreground:
        return run_mount(settings, connection, projects)

    from xnatfs.fs.mount import run_detached

    return run_detached(lambda notify: run_mount(settings, connection, projects, notify))


# ---- unmount -----------------------------------------------------------------


def cmd_unmount(args) -> int:
    from xnatfs.fs.mount import (
        clean_stale,
        fusermount_unmount,
        mount_state,
        processes_using,
        read_record,
        remove_record,
    )

    mountpoint = Path(args.mountpoint).expanduser()
    state = mount_state(mountpoint)
    if state == "stale":
        clean_stale(mountpoint)
        print(f"cleaned a stale mount at {mountpoint}", file=sys.stderr)
        return 0
    if state == "none":
        remove_record(mountpoint)
        raise UsageProblem(f"{mountpoint} is not mounted")
    record = read_record(mountpoint)
    done, error = fusermount_unmount(mountpoint, lazy=args.force)
    if not done:
        users = processes_using(mountpoint)
        if users:
            raise UsageProblem(
                f"cannot unmount {mountpoint}: in use by {', '.join(users)}; "
                "close their files or leave the folder, or detach it with --force"
            )
        hint = " (try --force)" if not args.force else ""
        raise UsageProblem(f"cannot unmount {mountpoint}: {error or 'fusermount3 failed'}{hint}")
    if args.force:
        # A lazy unmount leaves the daemon serving whoever still has a file open.
        print(
            f"detached {mountpoint}; the daemon exits once nothing uses it, and its unsent uploads stay in the spool",
            file=sys.stderr,
        )
        return 0
    if record is not None:
        _wait_for_daemon(record, args.timeout)
    return 0


def _wait_for_daemon(record: dict, timeout: float) -> None:
    """Wait until the daemon has sent what it can and exited, telling how many uploads remain."""
    from xnatfs.cache.spool import UploadSpool
    from xnatfs.fs.mount import process_alive

    spool = UploadSpool(record["spool"]) if record.get("spool") else None
    deadline = time.monotonic() + timeout
    shown = None
    while process_alive(record["pid"]):
        if spool is not None:
            remaining = len(spool.pending(record.get("url")))
            if remaining and remaining != shown:
                print(f"waiting for {remaining} upload(s) to {record.get('url')} ...", file=sys.stderr, flush=True)
                shown = remaining
        if time.monotonic() > deadline:
            raise UsageProblem(f"unmounted, but the daemon (pid {record['pid']}) is still running")
        time.sleep(0.1)
    if spool is not None:
        left = spool.pending(record.get("url"))
        if left:
            print(
                f"{len(left)} upload(s) could not be sent and stay in the spool; see `xnatfs uploads list`",
                file=sys.stderr,
            )


# ---- demo --------------------------------------------------------------------


def _default_demo_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "xnatfs" / "demo"


def _fake_server_module():
    """The fake server, or a one-line hint when its extra is not installed."""
    try:
        import xnatfs.fake
    except ImportError as exc:
        raise UsageProblem(
            f"the fake XNAT server needs its extra ({exc.name} is missing): pip install 'xnatfs[fake]'"
        ) from None
    return xnatfs.fake


def cmd_demo(args) -> int:
    from xnatfs.client.connection import XnatConnection

    FakeXnat = _fake_server_module().FakeXnat

    data_dir = Path(args.data).expanduser() if args.data else _default_demo_dir()
    mountpoint = Path(args.mountpoint).expanduser()
    mountpoint.mkdir(parents=True, exist_ok=True)
    configure_logging(args.log_level, Path(args.log_file) if args.log_file else None)
    check_fuse_device()
    check_mountpoint(mountpoint)
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"Starting a fake XNAT with a sample study in {data_dir} ...", flush=True)
    server = FakeXnat(data_dir / "server", sample="small").start()
    try:
        settings = MountSettings(
            url=server.url,
            mountpoint=mountpoint.resolve(),
            user="admin",
            cache_dir=data_dir / "cache",
            foreground=True,
            log_level=args.log_level,
        )
        connection = XnatConnection(server.url, "admin", "admin")
        projects = connection.list_projects()
        root = settings.mountpoint

        def announce() -> None:
            print(_demo_text(server.url, root), flush=True)

        from xnatfs.fs.mount import build_operations, serve

        ops = build_operations(settings, connection, projects=projects)
        try:
            serve(ops, settings, on_mounted=announce)
        finally:
            connection.close()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("Unmounted and stopped.", flush=True)
    return 0


def _demo_text(url: str, root: Path) -> str:
    session = root / "STUDY01" / "SUB001" / "SUB001_MR1"
    return f"""
A fake XNAT ({url}, user admin, password admin) is mounted at {root}
Try, in another terminal:

  ls {root}
  ls -l {session}/SCANS
  getfattr -d {session}/SCANS/2-*
  dcm2niix -o /tmp {session}/SCANS/2-*/DICOM
  python -c "import pydicom, glob; print(pydicom.dcmread(sorted(glob.glob('{session}/SCANS/2-*/DICOM/*'))[0]))"

Press Ctrl-C here to unmount and stop.
"""


# ---- cache -------------------------------------------------------------------


def cmd_cache(args) -> int:
    from xnatfs.cache.content import ContentCache

    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    cache = ContentCache(directory, parse_size(args.cache_size))
    try:
        before = cache.info()
        if args.action == "clear":
            cache.clear()
            after = cache.info()
            freed = human_bytes(before.bytes_used - after.bytes_used)
            print(
                f"removed {before.entries - after.entries} files ({freed})"
                f" from {directory}" + (f"; {after.entries} in use kept" if after.entries else "")
            )
        else:
            print(
                f"directory: {before.directory}\nfiles:     {before.entries}\n"
                f"used:      {human_bytes(before.bytes_used)} of {human_bytes(before.max_bytes)}\n"
                f"disk:      {human_bytes(before.disk_free)} free"
            )
    finally:
        cache.close()
    return 0


# ---- uploads -------------------------------------------------------------------


def cmd_uploads(args) -> int:
    from xnatfs.cache.spool import UploadSpool

    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    spool = UploadSpool(cache_dir / "spool")
    server = args.server.rstrip("/") if args.server else None
    if args.action == "list":
        entries = spool.pending(server) + spool.unclosed(server) + spool.refused(server)
        _print_uploads(sorted(entries, key=lambda entry: (entry.created, entry.id)))
        return 0
    if args.action == "discard":
        return _discard_upload(spool, args)
    sent: dict[str, str] = {}
    try:
        if args.entry is not None:
            return _retry_upload(spool, args, sent)
        return _retry_all(spool, server, args, sent)
    finally:
        _tell_mounts(spool, sent=sent)


def _retry_all(spool, server: str | None, args, sent: dict[str, str]) -> int:
    refused = spool.refused(server)
    if refused:
        print(
            f"{len(refused)} upload(s) refused by the server are not sent again on their own; "
            "see `xnatfs uploads list`, then `uploads retry ID` once fixed or `uploads discard ID --yes`",
            file=sys.stderr,
        )
    busy = []
    if args.include_unclosed:
        for entry in spool.unclosed(server):
            if spool.release(entry):
                print(f"{entry.id}: never closed; sending it as it is ({human_bytes(entry.size)})")
            elif (current := spool.get(entry.id)) is not None and current.state == "unclosed":
                busy.append(entry.id)
    elif spool.unclosed(server):
        print(
            "writes never closed are not sent; see `xnatfs uploads list`, "
            "then `uploads retry --include-unclosed` or `uploads discard ID --yes`",
            file=sys.stderr,
        )
    status = _retry_uploads(spool, sorted({entry.target.server for entry in spool.pending(server)}), args, sent)
    for entry_id in busy:
        print(f"{entry_id}: not sent, another process holds it right now; try again", file=sys.stderr)
    return status or int(bool(busy))


UPLOAD_COLUMNS = ("ID", "STATE", "SIZE", "TRIES", "TARGET", "LAST ERROR")
ERROR_WIDTH = 80


def _print_uploads(entries: list) -> None:
    """One row per spool entry, columns aligned; the target includes its server."""
    if not entries:
        print("no uploads waiting")
        return
    rows = [UPLOAD_COLUMNS]
    for entry in entries:
        error = entry.last_error.splitlines()[0][:ERROR_WIDTH] if entry.last_error else "-"
        rows.append(
            (
                entry.id,
                entry.state,
                human_bytes(entry.size),
                str(entry.attempts),
                entry.target.server + entry.target.describe()
                if entry.target.kind == "file"
                else f"{entry.target.server}: {entry.target.describe()}",
                error,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(UPLOAD_COLUMNS) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if any(entry.state == "refused" for entry in entries):
        print(
            "\nrefused: the server refused the upload as it is (its reason under LAST ERROR), so it is not "
            "sent again on its own;\n  once that is fixed, send it with `xnatfs uploads retry ID`, or drop it "
            "with `xnatfs uploads discard ID --yes`."
        )
    if any(entry.state == "unclosed" for entry in entries):
        print(
            "\nunclosed: written by a process that stopped before closing the file, so possibly "
            "incomplete and never sent on its own;\n  send it with `xnatfs uploads retry --include-unclosed`"
            " or drop it with `xnatfs uploads discard ID --yes`."
        )


def _discard_upload(spool, args) -> int:
    if args.entry is None:
        raise UsageProblem("which upload? `xnatfs uploads discard ID --yes` (IDs: `xnatfs uploads list`)")
    entry = spool.get(args.entry)
    if entry is None:
        raise UsageProblem(f"no upload {args.entry} in {spool.directory}")
    what = f"{entry.id} ({entry.state}, {human_bytes(entry.size)}, {entry.target.describe()})"
    if not args.yes:
        raise UsageProblem(f"this drops {what} without sending it; add --yes to do so")
    if not spool.discard(entry):
        raise UsageProblem(f"{entry.id} is being written or sent right now; try again later")
    _tell_mounts(spool, discarded=[entry.id])
    print(f"discarded {what}")
    return 0


def _retry_upload(spool, args, sent: dict[str, str]) -> int:
    """`uploads retry ID`: send one upload now, whatever its state (a user's decision);
    ``sent`` takes the MD5 of what the server got."""
    from xnatfs.cache.uploader import Uploader
    from xnatfs.errors import XnatError

    entry = spool.get(args.entry)
    if entry is None:
        raise UsageProblem(f"no upload {args.entry} in {spool.directory}")
    if entry.state in ("unclosed", "refused") and not spool.release(entry):
        raise UsageProblem(f"{entry.id} is being written or sent right now; try again later")
    connection, _projects = connect(_upload_settings(entry.target.server, args))
    try:
        digest = Uploader(spool, connection).push(entry)
    except XnatError as exc:
        print(f"{entry.id}: {entry.state}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if digest:
        sent[entry.id] = digest
    print(f"{entry.id}: sent ({entry.target.describe()})")
    return 0


def _tell_mounts(spool, *, sent: dict[str, str] | None = None, discarded: list[str] | None = None) -> None:
    """Mounts sharing this spool learn at once what was ``sent`` (entry ID → MD5 of what the
    server got) or ``discarded`` here, rather than at their next retry round, and show the
    server's files from then on (not their copy)."""
    from xnatfs.fs.control import ControlError, ask

    request = {"request": "uploads-changed", "sent": sent or {}, "discarded": discarded or []}
    for mountpoint in _running_mountpoints(spool.directory):
        try:
            ask(mountpoint, request, timeout=10.0)
        except ControlError as exc:
            logger.debug("the mount at %s was not told of the spool's changes: %s", mountpoint, exc)


def _upload_settings(server: str, args) -> MountSettings:
    return MountSettings(
        url=server, user=args.user, password_file=Path(args.password_file).expanduser() if args.password_file else None
    )


def _retry_uploads(spool, servers: list[str], args, sent: dict[str, str]) -> int:
    from xnatfs.cache.uploader import Uploader

    if not servers:
        print("no uploads waiting")
        return 0
    failed = 0
    for server in servers:
        connection, _projects = connect(_upload_settings(server, args))
        uploader = Uploader(spool, connection)
        try:
            report = uploader.push_pending(server)
        finally:
            connection.close()
        sent.update(uploader.sent_digests())
        print(f"{server}: {report.ok} sent, {report.failed} failed, {report.skipped} busy elsewhere")
        for entry_id, message in report.errors:
            print(f"  {entry_id}: {message.splitlines()[0][:200]}", file=sys.stderr)
        failed += report.failed
    return 1 if failed else 0


# ---- prefetch -----------------------------------------------------


def cmd_prefetch(args) -> int:
    return prefetch.main(args)


# ---- status and refresh ----------------------------------------------------------


def _running_mountpoints(spool_dir: Path | None = None) -> list[str]:
    """Mountpoints with a record of a mount of this user's (without touching the mounts);
    with ``spool_dir``, only those whose uploads wait in that spool."""
    from xnatfs.fs.mount import fuse_mounts

    mounted = fuse_mounts()
    found = []
    for record_file in sorted((default_state_dir() / "mounts").glob("*.json")):
        try:
            record = json.loads(record_file.read_text())
            mountpoint, spool = record["mountpoint"], record.get("spool")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if mountpoint not in mounted:
            continue
        if spool_dir is None or (spool and os.path.realpath(spool) == os.path.realpath(spool_dir)):
            found.append(mountpoint)
    return found


def cmd_status(args) -> int:
    from xnatfs.fs.control import ControlError, ask

    if args.mountpoint:
        mountpoints = [os.path.abspath(os.path.expanduser(args.mountpoint))]
    else:
        mountpoints = _running_mountpoints()
    answers = []
    for mountpoint in mountpoints:
        try:
            answers.append(ask(mountpoint, {"request": "status"}))
        except ControlError as exc:
            if args.mountpoint:
                raise UsageProblem(f"{exc} (is it mounted? `xnatfs mount` starts one)") from None
            answers.append({"mountpoint": mountpoint, "error": str(exc)})
    if args.json:
        print(json.dumps(answers, indent=2))
    elif not answers:
        print("no xnatfs mounts running")
    else:
        print("\n\n".join(_status_text(answer) for answer in answers))
    return 0


def _status_text(status: dict) -> str:
    if "error" in status:
        return f"{status['mountpoint']}\n  not answering: {status['error']}"
    cache, requests_seen, meta = status["cache"], status["requests"], status["metadata"]
    hit_rate = "-" if cache["hit_rate"] is None else f"{cache['hit_rate']:.0%}"
    lines = [
        f"{status['mountpoint']}",
        f"  server:    {status['server']} as {status['user'] or 'guest'} ({requests_seen['health']})",
        f"  uptime:    {_duration(status['uptime_seconds'])}, pid {status['pid']}"
        + (", read-only" if status["read_only"] else ""),
        f"  cache:     {human_bytes(cache['bytes_used'])} of {human_bytes(cache['max_bytes'])} "
        f"({human_bytes(cache['disk_free'])} free on its disk), "
        f"{cache['files']} files, hit rate {hit_rate} ({cache['hits']} hits, {cache['misses']} misses)",
        f"  metadata:  {meta['listing_rows']} of {meta['listing_rows_max']} listing rows held, "
        f"{meta['derived_rows']} of {meta['derived_rows_max']} worked out, {meta['inodes']} inodes",
        f"  requests:  {requests_seen['requests']} in the last {requests_seen['minutes']} min, "
        f"mean {requests_seen['mean_seconds']:.2f} s, {requests_seen['in_flight']} in flight",
    ]
    errors = requests_seen["errors"]
    lines.append(
        "  errors:    "
        + (", ".join(f"{kind} ×{count}" for kind, count in sorted(errors.items())) if errors else "none")
    )
    for download in status["downloads"]:
        done, total = download["bytes_done"], download["bytes_total"]
        lines.append(
            f"  download:  {download['uri']} {human_bytes(done)} of {human_bytes(total)} ({done / total:.0%})"
            if total
            else f"  download:  {download['uri']}"
        )
    for upload in status["uploads"]:
        sent = upload["bytes_sent"]
        size = human_bytes(upload["size"]) if sent is None else f"{human_bytes(sent)} of {human_bytes(upload['size'])}"
        lines.append(
            f"  upload:    {upload['id']} {upload['state']} {size} {upload['target']}"
            + (f" ({upload['last_error']})" if upload["last_error"] else "")
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def cmd_refresh(args) -> int:
    from xnatfs.fs.control import ControlError, ask
    from xnatfs.fs.mount import fuse_mounts

    target = os.path.abspath(os.path.expanduser(args.path))
    inside = [m for m in fuse_mounts() if target == m or target.startswith(m.rstrip("/") + "/")]
    if not inside:
        raise UsageProblem(f"{args.path} is not inside a mounted file system")
    mountpoint = max(inside, key=len)
    relative = os.path.relpath(target, mountpoint)
    try:
        answer = ask(
            mountpoint, {"request": "refresh", "path": "" if relative == "." else relative, "recursive": args.recursive}
        )
    except ControlError as exc:
        raise UsageProblem(f"cannot refresh {args.path}: {exc}") from None
    print(f"refreshed {args.path}: {answer['entries']} entries" + (" (and below)" if args.recursive else ""))
    return 0


def cmd_bids_check(args) -> int:
    from xnatfs.fs.control import ControlError, ask

    mountpoint, relative = _inside_mount(args.path)
    try:
        answer = ask(mountpoint, {"request": "bids-check", "path": relative})
    except ControlError as exc:
        raise UsageProblem(f"cannot check {args.path}: {exc}") from None
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for entry in answer["left_out"] + answer["failed"]:
        print(
            f"{entry['session']}  scan {entry['scan']} ({entry['description'] or 'no description'}): "
            f"{entry['reason']}: {entry['detail']}"
        )
    print(f"{len(answer['left_out'])} series left out, {len(answer['failed'])} conversion(s) failed")
    return 0


def _inside_mount(path: str) -> tuple[str, str]:
    """``(mountpoint, path relative to it)`` for a path inside a running mount."""
    from xnatfs.fs.mount import fuse_mounts

    target = os.path.abspath(os.path.expanduser(path))
    inside = [m for m in fuse_mounts() if target == m or target.startswith(m.rstrip("/") + "/")]
    if not inside:
        raise UsageProblem(f"{path} is not inside a mounted file system")
    mountpoint = max(inside, key=len)
    relative = os.path.relpath(target, mountpoint)
    return mountpoint, "" if relative == "." else relative


# ---- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xnatfs", description="Mount an XNAT archive as a file system.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount an XNAT server")
    mount.add_argument("url", help="server address, e.g. https://xnat.example.org")
    mount.add_argument("mountpoint", help="an empty folder")
    mount.add_argument("--user", help="XNAT user name (else XNAT_USER, ~/.netrc, alias token)")
    mount.add_argument("--password-file", help="read the password from the first line of this file")
    mount.add_argument("--cache-dir", help="file content cache (default ~/.cache/xnatfs)")
    mount.add_argument("--cache-size", help="cache bound, e.g. 10G (default 10G)")
    mount.add_argument(
        "--series-zip-size",
        help="fetch a scan resource up to this size as one zip on its first read (default 1G; 0: off)",
    )
    mount.add_argument("--ttl", type=float, help="seconds a listing is trusted (default 60)")
    mount.add_argument(
        "--timeout",
        type=float,
        help="seconds a request may wait for the server without progress before it fails with EIO (default 30)",
    )
    mount.add_argument("--read-only", action="store_true", help="refuse every write (EROFS)")
    mount.add_argument(
        "--allow-delete", action="store_true", help="let rmdir delete subjects and experiments on the server"
    )
    mount.add_argument("--experiment-type", help="xsiType of experiments made by mkdir (default xnat:mrSessionData)")
    mount.add_argument(
        "-o", dest="options", action="append", metavar="OPT[,OPT...]", help="FUSE mount options, e.g. allow_other, ro"
    )
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    mount.add_argument("--log-file", help="log here (daemon default: ~/.local/state/xnatfs/xnatfs.log)")
    mount.add_argument("--config", help="TOML config file (default ~/.config/xnatfs/config.toml)")
    mount.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    mount.add_argument("--no-bids", action="store_true", help="do not show the BIDS/ view of each project")
    mount.add_argument(
        "--bids-config",
        metavar="FILE",
        help="a dcm2bids config (JSON) naming the BIDS view's files instead of the built-in rules",
    )
    mount.set_defaults(handler=cmd_mount)

    unmount = commands.add_parser("unmount", help="unmount and wait for the daemon to finish")
    unmount.add_argument("mountpoint")
    unmount.add_argument("--timeout", type=float, default=UNMOUNT_WAIT, help="seconds to wait for the daemon")
    unmount.add_argument(
        "--force",
        action="store_true",
        help="detach at once (lazy unmount), even while files are open or the server "
        "does not answer; do not wait for the daemon",
    )
    unmount.set_defaults(handler=cmd_unmount)

    demo = commands.add_parser("demo", help="mount an embedded fake XNAT with a sample study")
    demo.add_argument("mountpoint", nargs="?", default="mnt")
    demo.add_argument("--data", help="where the fake server keeps its data (default ~/.local/share/xnatfs/demo)")
    demo.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    demo.add_argument("--log-file")
    demo.set_defaults(handler=cmd_demo)

    cache = commands.add_parser("cache", help="show or clear the file content cache")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir")
    cache.add_argument("--cache-size", default="10G")
    cache.set_defaults(handler=cmd_cache)

    uploads = commands.add_parser(
        "uploads", help="list, retry or discard writes waiting for (or refused by) the server"
    )
    uploads.add_argument("action", choices=["list", "retry", "discard"])
    uploads.add_argument(
        "entry",
        nargs="?",
        metavar="ID",
        help="for discard: the upload to drop; for retry: send only this one, even if refused",
    )
    uploads.add_argument(
        "--include-unclosed", action="store_true", help="retry: also send writes never closed (they may be incomplete)"
    )
    uploads.add_argument("--yes", action="store_true", help="discard: really drop the upload")
    uploads.add_argument("--cache-dir", help="the mount's cache folder (default ~/.cache/xnatfs)")
    uploads.add_argument("--server", help="only uploads to this server")
    uploads.add_argument("--user", help="XNAT user name for retry (else XNAT_USER, ~/.netrc, alias token)")
    uploads.add_argument("--password-file", help="read the password from the first line of this file")
    uploads.set_defaults(handler=cmd_uploads)

    prefetch_command = commands.add_parser("prefetch", help="read files under a mount once, to warm the cache")
    prefetch.add_arguments(prefetch_command)
    prefetch_command.set_defaults(handler=cmd_prefetch)

    status = commands.add_parser("status", help="what running mounts are doing: cache, transfers, errors")
    status.add_argument("mountpoint", nargs="?", help="only this mount (default: every mount of yours)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    refresh = commands.add_parser("refresh", help="forget cached listings of a folder so the server is asked again")
    refresh.add_argument("path", help="a folder inside a mount")
    refresh.add_argument("-r", "--recursive", action="store_true", help="also the folders below it")
    refresh.set_defaults(handler=cmd_refresh)

    bids_check = commands.add_parser("bids-check", help="list the series a project's BIDS view leaves out, and why")
    bids_check.add_argument("path", help="MOUNT/<project>/BIDS")
    bids_check.add_argument("--json", action="store_true", help="print the answer as JSON")
    bids_check.set_defaults(handler=cmd_bids_check)

    # Listed for --help; main() hands its arguments to the fake server's parser.
    commands.add_parser("fake-server", help="run the fake XNAT server (see xnatfs fake-server --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["fake-server"]:
            # Its options belong to the fake server's own parser, untouched by ours.
            _fake_server_module()
            from xnatfs.fake.cli import main as fake_main

            return fake_main(argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except UsageProblem as problem:
        print(f"xnatfs: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
