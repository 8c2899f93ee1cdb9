"""Running a mount: building the file system, serving it with trio, stopping cleanly.

``serve`` mounts and runs the loop until the file system is unmounted
(``fusermount3 -u``) or the process gets SIGINT/SIGTERM, then unmounts.
``run_detached`` forks the daemon BEFORE any thread or trio loop exists; the
parent waits on a pipe until the child reports the mount is up (or its
one-line error) so that ``xnatfs mount`` returns only when the mount can be
used. A small JSON record per mountpoint in the state folder lets
``xnatfs unmount`` find the daemon and wait for it to exit.

Debugging aid: with ``XNATFS_PROFILE=<file>`` in its environment the daemon
runs its event loop under cProfile and writes the statistics to that file
when the mount ends (see ``scripts/profile_ops.py``).
"""

from __future__ import annotations

import cProfile
import errno
import hashlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from xnatfs.bids.convert import Converter
from xnatfs.bids.dcm2bids import load_config as load_bids_config
from xnatfs.bids.rules import BuiltinRules
from xnatfs.cache.content import ContentCache
from xnatfs.cache.listing import ListingCache
from xnatfs.cache.spool import UploadSpool
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import Project
from xnatfs.errors import XnatError, redact_url
from xnatfs.fs.bidsview import BidsView
from xnatfs.fs.control import ControlServer
from xnatfs.fs.keys import ProjectsKey
from xnatfs.fs.names import BIDS
from xnatfs.fs.operations import XnatOperations
from xnatfs.fs.settings import MountSettings, default_state_dir
from xnatfs.fs.tree import Tree

logger = logging.getLogger(__name__)

Notify = Callable[[str | None], None]

PROFILE_ENV = "XNATFS_PROFILE"
# How long a thread may hold the GIL while another waits for it (CPython's default is 5 ms).
# A download, its MD5 and the reads it feeds each take the GIL back after every piece
# of work that takes about a millisecond; waiting up to 5 ms each time for it, a cold
# read of a large file went about a fifth slower than with 0.5 ms.
GIL_SWITCH_INTERVAL = 0.0005
# dcm2niix runs at once, and how long one may take (the sample's series take well under a second).
BIDS_CONVERSIONS = 2
BIDS_CONVERSION_TIMEOUT = 300.0


def build_operations(
    settings: MountSettings, connection: ArchiveClient, *, projects: list[Project] | None = None
) -> XnatOperations:
    """The file system for ``settings`` over ``connection``.

    ``projects``, when given, is a project listing just fetched (by the
    start-up check) and saves the first request of the mount.
    """
    # Before the file system sizes what it keeps open by the limit.
    _raise_open_file_limit()
    listings = ListingCache(settings.ttl)
    if projects is not None:
        listings.put(ProjectsKey(), projects)
    limiter = trio.CapacityLimiter(settings.workers)
    tree = Tree(connection, listings, limiter, started_at=time.time())
    cache = ContentCache(settings.cache_dir, settings.cache_size)
    ops = XnatOperations(tree, cache, settings, UploadSpool(settings.spool_dir))
    if settings.bids:
        add_bids_view(ops)
    return ops


def add_bids_view(ops: XnatOperations) -> None:
    """Show ``BIDS/`` in every project folder; without a converter that runs, say so and show none."""
    settings = ops.settings
    try:
        converter = Converter(ops.cache, max_parallel=BIDS_CONVERSIONS, timeout=BIDS_CONVERSION_TIMEOUT)
        rules = load_bids_config(settings.bids_config) if settings.bids_config is not None else BuiltinRules()
    except XnatError as exc:
        logger.warning("no BIDS view: %s", exc)
        return
    view = BidsView(
        ops.connection,
        ops.cache,
        converter,
        rules,
        series=ops.series,
        key_for=ops.cache_key,
        server_url=settings.url,
        max_parallel=BIDS_CONVERSIONS,
    )
    ops.bids = view
    ops.tree.views[BIDS] = view.folder


def fuse_options(settings: MountSettings) -> set[str]:
    options = set(pyfuse3.default_options)
    options.update({"fsname=xnatfs", "subtype=xnatfs"})
    options.update(o for o in settings.fuse_options if o not in ("ro", "rw"))
    if settings.read_only:
        options.add("ro")
    return options


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            logger.info("got %s, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _run_loop(ops: XnatOperations) -> None:
    async with trio.open_nursery() as nursery:
        ops.start_background(nursery)
        nursery.start_soon(_stop_on_signal)
        nursery.start_soon(ControlServer(ops, ops.tree.started_at).serve)
        await pyfuse3.main()
        ops.unmounted()
        nursery.cancel_scope.cancel()


def _raise_open_file_limit() -> None:
    # Every open file of every reader, and the recently read files kept open,
    # each hold a descriptor; the usual soft limit of 1024 is soon reached.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.debug("cannot raise the open-file limit: %s", exc)


def _run_profiled(ops: XnatOperations, profile_file: str) -> None:
    profiler = cProfile.Profile()
    try:
        profiler.runcall(trio.run, _run_loop, ops)
    finally:
        profiler.dump_stats(profile_file)
        logger.info("profile of the event loop written to %s", profile_file)


def serve(ops: XnatOperations, settings: MountSettings, *, on_mounted: Callable[[], None] | None = None) -> None:
    """Mount ``ops`` at the settings' mountpoint and serve until unmounted or signalled."""
    _raise_open_file_limit()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    mountpoint = str(settings.mountpoint)
    pyfuse3.init(ops, mountpoint, fuse_options(settings))
    logger.info("mounted %s at %s", redact_url(settings.url), mountpoint)
    try:
        if on_mounted is not None:
            on_mounted()
        profile_file = os.environ.get(PROFILE_ENV)
        if profile_file:
            _run_profiled(ops, profile_file)
        else:
            trio.run(_run_loop, ops)
    except BaseException:
        logger.exception("file system loop stopped")
        raise
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            logger.exception("unmounting %s failed", mountpoint)
        logger.info("unmounted %s", mountpoint)
        try:
            ops.retries.finish()
        except Exception:
            logger.exception("sending pending uploads at exit failed")
        ops.changes.save_times()
        for held in ops.hot.clear():
            held.close()
        ops.cache.close()


# ---- the record of a running mount ---------------------------------------


def record_path(mountpoint: Path | str) -> Path:
    real = os.path.realpath(os.fspath(mountpoint))
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return default_state_dir() / "mounts" / f"{digest}.json"


def write_record(settings: MountSettings) -> Path:
    path = record_path(settings.mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "pid": os.getpid(),
        "mountpoint": os.path.realpath(settings.mountpoint),
        "url": redact_url(settings.url),
        "spool": str(settings.spool_dir),
        "started": time.time(),
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)
    return path


def read_record(mountpoint: Path | str) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(record_path(mountpoint).read_text())
        return record
    except (OSError, ValueError):
        return None


def remove_record(mountpoint: Path | str) -> None:
    try:
        record_path(mountpoint).unlink()
    except FileNotFoundError:
        pass


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# ---- the state of a mountpoint --------------------------------------------


def mount_state(mountpoint: Path | str) -> str:
    """``"mounted"``, ``"stale"`` (daemon gone: "Transport endpoint is not connected"),
    or ``"none"``. Never waits on a live FUSE daemon."""
    real = os.path.realpath(os.fspath(mountpoint))
    if real not in fuse_mounts():
        try:
            os.stat(real)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return "stale"
        return "none"
    record = read_record(real)
    if record is not None and not process_alive(record["pid"]):
        return "stale"
    return "mounted"


def fuse_mounts() -> set[str]:
    """FUSE mount points in this namespace, from /proc/self/mountinfo (no file system traffic)."""
    paths = set()
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                before, _, after = line.partition(" - ")
                fields = before.split()
                if len(fields) > 4 and after.startswith("fuse"):
                    paths.add(_unescape_mountinfo(fields[4]))
    except OSError:
        pass
    return paths


def _unescape_mountinfo(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fusermount_unmount(mountpoint: Path | str, *, lazy: bool = False) -> tuple[bool, str]:
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [os.fspath(mountpoint)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        done = subprocess.run(
            ["umount"] + (["-l"] if lazy else []) + [os.fspath(mountpoint)], capture_output=True, text=True, timeout=60
        )
    return done.returncode == 0, done.stderr.strip()


def processes_using(mountpoint: Path | str, limit: int = 5) -> list[str]:
    """``"PID (name)"`` of up to ``limit`` processes whose folder, root or an
    open file lies inside ``mountpoint``.

    Only /proc's links are read, never the mount itself, so a stalled mount
    cannot hang the caller.
    """
    inside = os.fspath(Path(mountpoint).absolute())
    found: list[str] = []
    for pid in sorted((name for name in os.listdir("/proc") if name.isdigit()), key=int):
        if len(found) >= limit:
            break
        if any(_is_inside(link, inside) for link in _proc_links(pid)):
            found.append(f"{pid} ({_process_name(pid)})")
    return found


def _proc_links(pid: str) -> list[str]:
    base = f"/proc/{pid}"
    links = [f"{base}/cwd", f"{base}/root"]
    try:
        links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
    except OSError:
        pass  # gone, or another user's
    targets = []
    for link in links:
        try:
            targets.append(os.readlink(link))
        except OSError:
            continue
    return targets


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _process_name(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def clean_stale(mountpoint: Path | str) -> None:
    """Detach a mount whose daemon died, so the folder can be used again."""
    fusermount_unmount(mountpoint, lazy=True)
    remove_record(mountpoint)


# ---- detaching ------------------------------------------------------------


def run_detached(child: Callable[[Notify], int]) -> int:
    """Run ``child`` in a daemon process; return once it reported success or failure.

    ``child`` gets a ``notify`` function: ``notify(None)`` when the mount is
    up, ``notify("message")`` when it cannot start; the message is printed by
    the parent, which then exits non-zero. Must be called before any thread
    is started in this process.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode("utf-8", "replace").strip()
        if answer == "ok":
            return 0
        if answer:
            print(f"xnatfs: {answer}", file=sys.stderr)
        else:
            print("xnatfs: the mount daemon stopped while starting; see its log", file=sys.stderr)
        return 1

    os.close(read_end)
    os.setsid()
    os.chdir("/")
    _detach_stdio()
    told = False

    def notify(message: str | None) -> None:
        nonlocal told
        if told:
            return
        told = True
        try:
            os.write(write_end, b"ok" if message is None else message.encode("utf-8"))
        finally:
            os.close(write_end)

    code = 1
    try:
        code = child(notify)
    except BaseException as exc:
        logger.exception("mount daemon failed")
        notify(str(exc) or type(exc).__name__)
    finally:
        notify("the mount daemon stopped while starting; see its log")
        logging.shutdown()
        os._exit(code)


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for descriptor in (0, 1, 2):
        os.dup2(null, descriptor)
    if null > 2:
        os.close(null)
