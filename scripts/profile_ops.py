"""Time the warm FUSE requests of a mount, one kind at a time, and optionally profile the daemon.

Starts a fake XNAT with the small sample study, mounts it with
``xnatfs mount --foreground`` in a subprocess, walks and reads everything
once so that every listing and file is cached, then measures:

* round trips per second for each kind of request the kernel still sends
  when warm (a tight loop of one system call that causes exactly that
  request, e.g. ``os.getxattr`` of a name outside ``user.xnat.``);
* the wall time of the warm tool workloads: ``find``, ``ls -lR``,
  ``getfattr -d`` over a scan's files, and reading every file of a series.

Round trips are much steadier when the daemon and the caller share one
CPU (no cross-CPU wake-ups): ``--cpu N`` pins both to CPU ``N``.

With ``--profile FILE`` the daemon runs its event loop under cProfile
(``XNATFS_PROFILE``) and the heaviest functions are listed after the run.

Usage::

    .venv/bin/python scripts/profile_ops.py [--seconds 1.5] [--cpu 0] [--profile /tmp/ops.prof]
"""

from __future__ import annotations

import argparse
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xnatfs.fake import FakeXnat  # noqa: E402

logger = logging.getLogger("profile_ops")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
SERIES = "STUDY01/SUB002/SUB002_MR1/SCANS"


def mounted_at(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == real and " - fuse" in line for line in handle)


def start_mount(url: str, work: Path, profile: Path | None) -> subprocess.Popen:
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    home = work / "home"
    env = dict(
        os.environ,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CACHE_HOME=str(home / "cache"),
        NETRC=str(home / "no-netrc"),
        XNAT_USER="admin",
        XNAT_PASS="admin",
        PYTHONPATH=str(REPO),
    )
    if profile is not None:
        env["XNATFS_PROFILE"] = str(profile)
    command = [
        sys.executable,
        "-m",
        "xnatfs",
        "mount",
        url,
        str(mountpoint),
        "--foreground",
        "--cache-dir",
        str(work / "cache"),
        "--log-level",
        "WARNING",
        "--log-file",
        str(work / "mount.log"),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while not mounted_at(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the mount did not come up; see {work / 'mount.log'}")
        time.sleep(0.05)
    return process


def stop_mount(process: subprocess.Popen, mountpoint: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def rate(call: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``call`` over about ``seconds``; the best of three tries
    (the machine may be busy with other work)."""
    return max(_rate_once(call, seconds / 3) for _ in range(3))


def _rate_once(call: Callable[[], None], seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            call()
        done += 50
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


def best_of(runs: int, call: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def warm_up(mnt: Path) -> tuple[Path, list[Path]]:
    """List and read everything once; returns a scan folder and its DICOM files."""
    files = []
    for folder, _, names in os.walk(mnt):
        for name in names:
            path = Path(folder) / name
            path.read_bytes()
            files.append(path)
    scans = sorted((mnt / SERIES).iterdir())
    dicom = next(scan / "DICOM" for scan in scans if len(list((scan / "DICOM").iterdir())) >= 60)
    return dicom, sorted(dicom.iterdir())


def measure(mnt: Path, seconds: float) -> dict[str, float]:
    """Round trips per second by request kind, and warm workload times in seconds."""
    dicom, series = warm_up(mnt)
    one = series[0]

    def open_close() -> None:
        os.close(os.open(one, os.O_RDONLY))

    def open_read_close() -> None:
        descriptor = os.open(one, os.O_RDONLY)
        os.read(descriptor, 1 << 20)
        os.close(descriptor)

    def getxattr_foreign() -> None:
        try:
            os.getxattr(one, "security.selinux")
        except OSError:
            pass

    results = {
        "opendir+readdir+releasedir /s": rate(lambda: os.listdir(dicom), seconds),
        "getxattr user.xnat.uri /s": rate(lambda: os.getxattr(one, "user.xnat.uri"), seconds),
        "getxattr security.selinux (ENOTSUP) /s": rate(getxattr_foreign, seconds),
        "listxattr /s": rate(lambda: os.listxattr(one), seconds),
        "open+flush+release /s": rate(open_close, seconds),
        "open+read+close (page cache) /s": rate(open_read_close, seconds),
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    results["find, s"] = best_of(5, lambda: subprocess.run(["find", str(mnt)], check=True, **quiet))
    results["ls -lR, s"] = best_of(5, lambda: subprocess.run(["ls", "-lR", str(mnt)], check=True, **quiet))
    if shutil.which("getfattr"):
        results["getfattr -d series, s"] = best_of(
            5, lambda: subprocess.run(["getfattr", "-d", *map(str, series)], check=True, **quiet)
        )
    results[f"read series ({len(series)} files), s"] = best_of(5, lambda: [p.read_bytes() for p in series])
    return results


def show_profile(profile: Path, limit: int) -> None:
    print(f"\nheaviest functions in the daemon's event loop ({profile}):")
    stats = pstats.Stats(str(profile))
    stats.sort_stats("tottime").print_stats(limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each round-trip loop")
    parser.add_argument("--profile", type=Path, help="run the daemon under cProfile, statistics to this file")
    parser.add_argument("--cpu", type=int, help="pin this script, the server and the daemon to this CPU")
    parser.add_argument("--top", type=int, default=30, help="functions to list from the profile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # inherited by the daemon

    with tempfile.TemporaryDirectory(prefix="xnatfs-profile-") as scratch:
        work = Path(scratch)
        with FakeXnat(work / "server", sample="small") as server:
            process = start_mount(server.url, work, args.profile)
            try:
                results = measure(work / "mnt", args.seconds)
            finally:
                stop_mount(process, work / "mnt")
    width = max(map(len, results))
    for name, value in results.items():
        shown = f"{value:10.0f}" if name.endswith("/s") else f"{value:10.3f}"
        print(f"{name:<{width}}  {shown}")
    if args.profile is not None:
        show_profile(args.profile, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
