"""Benchmark xnatfs against direct transfers from the same XNAT, side by side.

Runs the fake XNAT (``--sample-size large``, 20 ms added to every request, as
on a campus link) in a child process on 127.0.0.1, mounts it with the real
``xnatfs mount`` daemon, and times each task through the mount and by the
usual alternative (curl, a naive requests script, a local copy) in the same
run. Where it applies, the same task also runs through rclone mount, the peer
a user would pick: Debian's rclone, its ``http`` and ``webdav`` backends with
``--vfs-cache-mode full`` and ``off``, on a static server of the same files
(``scripts/static_files.py``) with the same added latency; the best
configuration is reported beside the alternative, and a row where xnatfs is
slower than rclone is MISSED whatever its other goal. Each row is repeated
(``--runs``); the table gives medians with their min–max spread and the
ratios per run, then ``docs/BENCHMARKS.md`` is written with the machine, the
settings and the table.

Cold measurements use a fresh mount with an empty cache folder, after the
kernel's page cache has been dropped (when running as root). Nothing but
127.0.0.1 is contacted; every mount is taken down in ``finally``.

    .venv/bin/python scripts/bench.py [--quick] [--only 1,4] [--runs N] [--out FILE]
                                      [--rclone webdav-off,http-full | none]

Row 7 (the BIDS view) reads one session's converted files through a fresh
mount against curl + unzip + dcm2niix + arranging by hand, and times pybids'
``BIDSLayout`` on the view against a local copy (pybids comes with the
``test`` extra).

Rows 8–10 show how costs grow, in project SCALE of the large sample: cold
walks of 100, 1 000 and 10 000 sessions (the last once a run of the bench),
a 4 800-file DTI series, and 8 readers of 8 series at once against one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

logger = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
LATENCY_MS = 20.0
TTL = 600.0
FULL_RUNS = 3
QUICK_RUNS = 1
FULL_UPLOAD_MB = 100
QUICK_UPLOAD_MB = 20
UPLOAD_FILE_MB = 1
MANY_FILES = 2000  # row 6b: small files copied one by one into one folder
MANY_TENTH = MANY_FILES // 10
PARALLEL_LISTINGS = 16
CHUNK = 1 << 20
USER = PASSWORD = "admin"
MOUNT_TIMEOUT = 180.0
RSS_LIMIT_MB = 200.0
SERVER_START_TIMEOUT = 900.0

# Where the large sample keeps what each benchmark needs (xnatfs/fake/sample.py).
PROJECT = "BENCH"
HIRES_SUBJECT = "HIRES"
HIRES_SESSION = "HIRES_MR1"
SERIES_SCAN = "2"
BIG_RESOURCE = "RAW"
BIG_FILE = "raw_data.bin"
UPLOAD_SUBJECT = "B0001"
UPLOAD_SESSION = "B0001_MR1"
# A walk of some subjects (5d, 5e): the first ones of the project, in order.
WALKED_SUBJECTS = [f"B{number:04d}" for number in range(1, 11)]
WALK_AHEAD_LIMIT = 10
# A smaller tree for the warm walks, to see their cost per entry at two sizes.
SMALL_TREE_SUBJECTS = [f"B{number:04d}" for number in range(1, 21)]

# rclone mount configurations: backend-cache mode.
RCLONE_CONFIGS = ("http-full", "http-off", "webdav-full", "webdav-off")
# A warm walk asks rclone's own caches only; which backend and cache mode filled them does not matter.
RCLONE_WARM_WALK_PREFERRED = "webdav-off"
STATIC_SERVER = REPO / "scripts" / "static_files.py"

BIDS_PROJECT = "BIDS01"
BIDS_SUBJECT = "P01"
BIDS_SESSION = "P01_MR1"

# Cost as the work grows (8–10), in project SCALE of the large sample.
SCALE_PROJECT = "SCALE"
SCALE_SESSIONS_PER_SUBJECT = 2
# Sessions walked → the rows of its time and of its requests.
SCALE_WALKS = {100: ("8a", "8d"), 1000: ("8b", "8e"), 10_000: ("8c", "8f")}
# The largest walk takes minutes a run; it runs this many times whatever --runs says.
SCALE_LARGEST_RUNS = 1
# rclone walks only the smallest: it lists folder by folder, one request each.
SCALE_PEER_SESSIONS = 100
DTI_SUBJECT = "DTI"
DTI_SESSION = "DTI_MR1"
DTI_SCAN = "1"
# dcm2niix through a cold mount takes half a minute on the DTI series; once is enough to see its cost.
DTI_DCM2NIIX_RUNS = 1
PARALLEL_SUBJECT = "PAR"
PARALLEL_SCAN = "2"
PARALLEL_READERS = 8


# ---- results -------------------------------------------------------------


@dataclass
class Goal:
    """A bound on the median ratio: ``at_most`` or ``at_least`` the value."""

    op: str
    value: float
    label: str = ""

    def met(self, ratio: float) -> bool:
        return ratio <= self.value if self.op == "at_most" else ratio >= self.value

    def text(self) -> str:
        return self.label or f"{'≤' if self.op == 'at_most' else '≥'} {self.value:g}×"


@dataclass
class Row:
    key: str
    what: str
    ours_name: str
    theirs_name: str
    unit: str
    goal: Goal | None = None
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    not_measured: str = ""
    peer: dict[str, list[float]] = field(default_factory=dict)  # rclone configuration → value per run
    peer_not_measured: str = ""

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.theirs) if b]

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "MB/s"

    def best_peer(self) -> tuple[str, list[float]] | None:
        """rclone's best configuration for this row (by its median) and its value per run."""
        measured = {config: values for config, values in self.peer.items() if values}
        if not measured:
            return None
        pick = max if self.higher_is_better else min
        config = pick(measured, key=lambda name: statistics.median(measured[name]))
        return config, measured[config]

    @property
    def peer_ratios(self) -> list[float]:
        """xnatfs ÷ rclone's best configuration, run by run."""
        best = self.best_peer()
        return [a / b for a, b in zip(self.ours, best[1]) if b] if best else []

    def behind_peer(self) -> bool:
        ratios = self.peer_ratios
        if not ratios:
            return False
        ratio = statistics.median(ratios)
        return ratio < 1.0 if self.higher_is_better else ratio > 1.0

    @property
    def measured(self) -> bool:
        return not self.not_measured and bool(self.ratios)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def verdict(self) -> str:
        if not self.measured:
            return "not measured"
        if self.behind_peer():
            return "MISSED"
        if self.goal is None:
            return "(report)"
        return "met" if self.goal.met(self.ratio) else "MISSED"


def spread(values: list[float], unit: str) -> str:
    if not values:
        return "–"
    digits = 0 if unit in ("requests", "MB") else (1 if unit == "MB/s" else 2)
    middle = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1 or min(values) == max(values):
        return f"{middle} {unit}"
    return f"{middle} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def ratio_text(ratios: list[float]) -> str:
    if not ratios:
        return "–"
    middle = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{middle:.2f}×"
    return f"{middle:.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def peer_text(row: Row) -> str:
    best = row.best_peer()
    if best is not None:
        return f"{best[0]}: {spread(best[1], row.unit)}"
    return "not measured" if row.peer_not_measured else "–"


def table_lines(rows: list[Row], markdown: bool) -> list[str]:
    header = ["#", "what", "xnatfs", "reference", "ratio", "rclone (best config)", "÷ rclone", "goal", "result"]
    body = []
    for row in rows:
        if row.not_measured:
            ours, theirs = f"{row.ours_name}: not measured", row.theirs_name
        else:
            ours = f"{row.ours_name}: {spread(row.ours, row.unit)}"
            theirs = f"{row.theirs_name}: {spread(row.theirs, row.unit)}"
        body.append(
            [
                row.key,
                row.what,
                ours,
                theirs,
                ratio_text(row.ratios if row.measured else []),
                peer_text(row),
                ratio_text(row.peer_ratios),
                row.goal.text() if row.goal else "–",
                row.verdict(),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return lines
    widths = [max(len(cells[i]) for cells in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) for cells in body]
    return lines


# ---- the fake XNAT in a child process --------------------------------------


def _host_server(data_dir: str, latency_ms: float, pipe) -> None:
    """Child process: run a FakeXnat with the large sample and answer the parent's questions."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s fake-xnat %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from xnatfs.fake import FakeXnat

    server = FakeXnat(data_dir, sample="large", latency_ms=latency_ms).start()
    pipe.send(server.url)
    try:
        while True:
            command, *args = pipe.recv()
            if command == "stop":
                break
            if command == "requests":
                pipe.send(server.requests)
            elif command == "reset":
                server.reset_counts()
                pipe.send(None)
            elif command == "latency":
                server.latency_ms = args[0]
                pipe.send(None)
    finally:
        server.close()


class ServerHost:
    """The fake XNAT running in its own process, so the benchmark's own work never slows it."""

    def __init__(self, data_dir: Path, latency_ms: float):
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(
            target=_host_server, args=(str(data_dir), latency_ms, child_end), name="fake-xnat", daemon=True
        )
        self.latency_ms = latency_ms
        self.url = ""

    def start(self) -> ServerHost:
        self._process.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self._pipe.poll(1.0):
            if not self._process.is_alive():
                raise RuntimeError(f"the fake XNAT exited with status {self._process.exitcode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fake XNAT did not start within {SERVER_START_TIMEOUT:g} s")
        self.url = self._pipe.recv()
        return self

    def _call(self, *command):
        self._pipe.send(command)
        return self._pipe.recv()

    def requests(self) -> list[tuple[str, str, int]]:
        return self._call("requests")

    def reset_counts(self) -> None:
        self._call("reset")

    @contextmanager
    def no_latency(self) -> Iterator[None]:
        """Set-up work (copies, clean-up) need not wait for the simulated link."""
        self._call("latency", 0)
        try:
            yield
        finally:
            self._call("latency", self.latency_ms)

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self._pipe.send(("stop",))
            except OSError:
                pass
            self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)


# ---- mounts ----------------------------------------------------------------


class Mount:
    """One ``xnatfs mount`` daemon, started and stopped through the command line."""

    def __init__(self, url: str, path: Path, cache_dir: Path, log_file: Path, options: tuple[str, ...] = ()):
        self.url = url
        self.path = path
        self.cache_dir = cache_dir
        self.log_file = log_file
        self.options = options
        self.pid: int | None = None

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "xnatfs",
            "mount",
            self.url,
            str(self.path),
            "--cache-dir",
            str(self.cache_dir),
            "--ttl",
            str(TTL),
            "--log-file",
            str(self.log_file),
            "--log-level",
            "WARNING",
            *self.options,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"xnatfs mount failed: {done.stderr.strip()}")
        from xnatfs.fs.mount import read_record

        record = read_record(self.path)
        if record is None:
            raise RuntimeError(f"no record of the daemon mounted at {self.path}")
        self.pid = record["pid"]

    def peak_rss_mb(self) -> float | None:
        """The daemon's high-water mark of resident memory (VmHWM), in MB."""
        try:
            with open(f"/proc/{self.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "xnatfs", "unmount", str(self.path)],
            capture_output=True,
            text=True,
            timeout=MOUNT_TIMEOUT,
        )
        if done.returncode == 0:
            return
        logger.warning("xnatfs unmount %s failed (%s); detaching it", self.path, done.stderr.strip())
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=60)
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def fuse_mounted(path: Path) -> bool:
    """Whether a FUSE file system is mounted at ``path`` (from mountinfo, no FUSE traffic)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            before, _, after = line.partition(" - ")
            fields = before.split()
            if len(fields) > 4 and fields[4] == real and after.startswith("fuse"):
                return True
    return False


class StaticHost:
    """``scripts/static_files.py`` in its own process: the benchmark's tree, for rclone."""

    def __init__(self, root: Path, latency_ms: float, log_file: Path):
        self.root = root
        self.latency_ms = latency_ms
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> StaticHost:
        with open(self.log_file, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(STATIC_SERVER), str(self.root), "--latency-ms", str(self.latency_ms)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the static server did not start: {self.log_file.read_text().strip()}")
        return self

    @contextmanager
    def no_latency(self) -> Iterator[None]:
        """Set-up work (filling rclone's caches for a warm run) need not wait for the simulated link."""
        self.process.send_signal(signal.SIGUSR1)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGUSR2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


class RcloneMount:
    """One ``rclone mount`` of the static server, in one configuration (``backend-cachemode``)."""

    def __init__(self, config: str, url: str, path: Path, cache_dir: Path, log_file: Path):
        self.backend, self.cache_mode = config.split("-")
        self.url = url
        self.path = path
        self.cache_dir = cache_dir
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # The same caching as the xnatfs mount: listings and the kernel's attributes for --ttl.
        command = [
            "rclone",
            "mount",
            f":{self.backend}:",
            str(self.path),
            f"--{self.backend}-url",
            self.url,
            "--vfs-cache-mode",
            self.cache_mode,
            "--cache-dir",
            str(self.cache_dir),
            "--dir-cache-time",
            f"{TTL:g}s",
            "--attr-timeout",
            f"{TTL:g}s",
            "--read-only",
            "--log-file",
            str(self.log_file),
        ]
        if self.backend == "webdav":
            command += ["--webdav-vendor", "other"]
        environment = dict(os.environ, RCLONE_CONFIG=str(self.cache_dir.parent / "rclone.conf"))
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not fuse_mounted(self.path):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"rclone mount exited with {self.process.returncode}: "
                    f"{self.log_file.read_text(errors='replace').strip()[-500:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"rclone did not mount within {MOUNT_TIMEOUT:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, timeout=60)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            logger.warning("rclone at %s did not stop; detaching it", self.path)
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=60)
            self.process.kill()
            self.process.wait(30)


# ---- the run's shared state ------------------------------------------------


class Bench:
    """What every benchmark needs: the server, a work folder, fresh mounts, tools."""

    def __init__(self, work: Path, server: ServerHost, runs: int, upload_mb: int, rclone_configs: list[str]):
        self.work = work
        self.server = server
        self.runs = runs
        self.upload_mb = upload_mb
        self.rclone_configs = rclone_configs
        self.static: StaticHost | None = None
        self.netrc = work / "netrc"
        self.netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
        self.netrc.chmod(0o600)
        self.can_drop_caches = True
        self.peak_rss: dict[str, list[float]] = {}
        self._mounts = 0
        self.listing_requests: Counter[str] = Counter()
        self.walk_requests: Counter[str] = Counter()
        self.scale_requests: dict[int, Counter[str]] = {}
        self.dti_series: tuple[int, int] | None = None  # files, bytes
        self.parallel_bytes: dict[str, int] = {}

    @property
    def url(self) -> str:
        return self.server.url

    def drop_caches(self) -> None:
        """Empty the kernel's page cache so 'cold' also means cold on the server's disk."""
        if not self.can_drop_caches:
            return
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as handle:
                handle.write("3\n")
        except OSError as exc:
            logger.warning("cannot drop the page cache (%s); cold runs only get fresh mounts", exc)
            self.can_drop_caches = False

    @contextmanager
    def fresh_mount(self, purpose: str, options: tuple[str, ...] = ()) -> Iterator[Mount]:
        """A new daemon (given ``options`` of ``xnatfs mount``) with an empty cache folder;
        unmounted (and its cache removed) afterwards."""
        self._mounts += 1
        name = f"{self._mounts:03d}-{purpose}"
        cache_dir = self.work / "caches" / name
        mount = Mount(self.url, self.work / "mnt", cache_dir, self.work / "logs" / f"{name}.log", options)
        mount.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.drop_caches()
        mount.start()
        try:
            yield mount
        finally:
            rss = mount.peak_rss_mb()
            if rss is not None:
                self.peak_rss.setdefault(purpose, []).append(rss)
            mount.stop()
            shutil.rmtree(cache_dir, ignore_errors=True)

    @contextmanager
    def fresh_rclone(self, config: str, purpose: str) -> Iterator[RcloneMount]:
        """A new rclone mount of the static server with an empty cache folder, as cold as ours."""
        self._mounts += 1
        name = f"{self._mounts:03d}-rclone-{config}-{purpose}"
        mount = RcloneMount(
            config,
            self.static.url,
            self.work / "mnt-rclone",
            self.work / "caches" / name,
            self.work / "logs" / f"{name}.log",
        )
        mount.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.drop_caches()
        mount.start()
        try:
            yield mount
        finally:
            mount.stop()
            shutil.rmtree(mount.cache_dir, ignore_errors=True)

    def as_peer(self, rows: dict[str, Row], keys: set[str], action: Callable[[], None]) -> None:
        """Run rclone's side of rows ``keys``. When it fails, those rows show why and no rclone
        numbers (a run missing would pair the others with the wrong runs of the mount)."""
        if any(rows[key].peer_not_measured for key in keys):
            return
        try:
            action()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            logger.exception("rclone failed on %s", ", ".join(sorted(keys)))
            for key in keys:
                rows[key].peer = {}
                rows[key].peer_not_measured = f"rclone failed: {exc}"

    def start_peer(self) -> None:
        """The benchmark project's tree on local disk, served for rclone with the same latency."""
        root = self.work / "static"
        with self.server.no_latency(), self.fresh_mount("static-copy") as mount:
            entries = replicate_tree(
                mount.path / PROJECT,
                root / PROJECT,
                real=lambda relative: relative.parts[:2] == (HIRES_SUBJECT, HIRES_SESSION),
            )
        logger.info("static copy of %s for rclone: %d entries", PROJECT, entries)
        self.static = StaticHost(root, self.server.latency_ms, self.work / "logs" / "static-server.log").start()
        logger.info("static server at %s", self.static.url)

    def curl(self, url: str, *, output: str = "/dev/null") -> None:
        command = ["curl", "-sS", "--fail", "--netrc-file", str(self.netrc), "-o", output, url]
        subprocess.run(command, check=True, timeout=600)

    def curl_md5(self, url: str) -> None:
        """curl piped into md5sum: a download script that checks what it got."""
        curl = subprocess.Popen(["curl", "-sS", "--fail", "--netrc-file", str(self.netrc), url], stdout=subprocess.PIPE)
        subprocess.run(["md5sum"], stdin=curl.stdout, check=True, stdout=subprocess.DEVNULL, timeout=600)
        curl.stdout.close()
        if curl.wait(timeout=600) != 0:
            raise RuntimeError(f"curl failed on {url}")

    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def read_files(paths: list[Path]) -> int:
    """Read each file to its end, in order, as a tool reading a series does."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(view):
                total += count
    return total


def timed_read(paths: Callable[[], list[Path]]) -> tuple[float, int]:
    """Seconds to read every file ``paths()`` names (finding them included), and the bytes read."""
    read = 0

    def read_them() -> None:
        nonlocal read
        read = read_files(paths())

    return timed(read_them), read


def check_bytes(read: int, paths: list[Path]) -> int:
    """A timing means nothing if the mount served fewer or more bytes than the listing promised."""
    expected = sum(os.stat(path).st_size for path in paths)
    if read != expected:
        raise RuntimeError(f"read {read} bytes through the mount where the listing says {expected}")
    return expected


def run_quietly(command: list[str], timeout: float = 900) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)


def dcm2niix(source: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run_quietly(["dcm2niix", "-z", "n", "-o", str(out), "-f", "%s_%d", str(source)])
    if not list(out.glob("*.nii")):
        raise RuntimeError(f"dcm2niix wrote no NIfTI from {source}")


def server_json(bench: Bench, path: str) -> dict:
    """The fake XNAT's JSON answer for ``path``, asked for directly (not through a mount)."""
    answer = requests.get(f"{bench.url}{path}", params={"format": "json"}, auth=bench.auth(), timeout=60)
    answer.raise_for_status()
    return answer.json()


def experiment_id(bench: Bench, subject: str, session: str, project: str = PROJECT) -> str:
    answer = server_json(bench, f"/data/projects/{project}/subjects/{subject}/experiments/{session}")
    return answer["items"][0]["data_fields"]["ID"]


# ---- 1–3: a 208-file DICOM series -------------------------------------------


def series_folder(mount: Mount) -> Path:
    scans = mount.path / PROJECT / HIRES_SUBJECT / HIRES_SESSION / "SCANS"
    names = [name for name in os.listdir(scans) if name.split("-", 1)[0] == SERIES_SCAN]
    if len(names) != 1:
        raise RuntimeError(f"scan {SERIES_SCAN} not found in {scans}: {names}")
    return scans / names[0] / "DICOM"


def series_files(folder: Path) -> list[Path]:
    return sorted(folder / name for name in os.listdir(folder))


def naive_download(bench: Bench, resource_uri: str) -> int:
    """What a download script does: list the resource, then fetch the files one at a time."""
    total = 0
    with requests.Session() as http:
        http.auth = bench.auth()
        listing = http.get(f"{bench.url}{resource_uri}/files", params={"format": "json"}, timeout=60)
        listing.raise_for_status()
        rows = sorted(listing.json()["ResultSet"]["Result"], key=lambda row: row["Name"])
        for row in rows:
            with http.get(f"{bench.url}{row['URI']}", stream=True, timeout=60) as answer:
                answer.raise_for_status()
                for chunk in answer.iter_content(CHUNK):
                    total += len(chunk)
    return total


def curl_unzip(bench: Bench, url: str) -> None:
    """curl of the series zip into a file, then unzip into a folder: the series by hand."""
    archive = bench.work / "series.zip"
    folder = bench.work / "unzipped-series"
    shutil.rmtree(folder, ignore_errors=True)
    bench.curl(url, output=str(archive))
    subprocess.run(["unzip", "-q", "-d", str(folder), str(archive)], check=True, timeout=600)


def bench_series(bench: Bench, rows: dict[str, Row], wanted: set[int]) -> None:
    session_id = experiment_id(bench, HIRES_SUBJECT, HIRES_SESSION)
    resource_uri = f"/data/experiments/{session_id}/scans/{SERIES_SCAN}/resources/DICOM"
    local = bench.work / "local-series"
    niix = bench.work / "niix"
    for run in range(1, bench.runs + 1):
        logger.info("series, run %d/%d", run, bench.runs)
        with bench.fresh_mount("series") as mount:
            cold, read = timed_read(lambda: series_files(series_folder(mount)))
            folder = series_folder(mount)
            files = series_files(folder)
            check_bytes(read, files)
            if not local.exists():
                shutil.copytree(folder, local)
            if 3 in wanted:
                rows["3"].ours.append(timed(lambda folder=folder: read_files(series_files(folder))))
            if 2 in wanted:
                rows["2b"].ours.append(timed(lambda folder=folder: dcm2niix(folder, niix / "mount-warm")))
        local_files = series_files(local)
        if len(local_files) != len(files):
            raise RuntimeError(f"local copy has {len(local_files)} files, the mount {len(files)}")
        if 1 in wanted:
            rows["1a"].ours.append(cold)
            rows["1b"].ours.append(cold)
            bench.drop_caches()
            rows["1a"].theirs.append(timed(lambda: bench.curl(f"{bench.url}{resource_uri}/files?format=zip")))
            rows["1d"].ours.append(cold)
            bench.drop_caches()
            rows["1d"].theirs.append(timed(lambda: curl_unzip(bench, f"{bench.url}{resource_uri}/files?format=zip")))
            bench.drop_caches()
            rows["1b"].theirs.append(timed(lambda: naive_download(bench, resource_uri)))
            with bench.fresh_mount("series-listed") as mount:
                listed = series_files(series_folder(mount))
                [path.stat() for path in listed]
                bench.drop_caches()
                rows["1c"].ours.append(timed(lambda listed=listed: read_files(listed)))
            bench.drop_caches()
            rows["1c"].theirs.append(timed(lambda: bench.curl(f"{bench.url}{resource_uri}/files?format=zip")))
        read_files(local_files)
        if 3 in wanted:
            rows["3"].theirs.append(timed(lambda: read_files(series_files(local))))
        if 2 in wanted:
            local_time = timed(lambda: dcm2niix(local, niix / "local"))
            rows["2a"].theirs.append(local_time)
            rows["2b"].theirs.append(local_time)
            with bench.fresh_mount("dcm2niix-cold") as mount:
                rows["2a"].ours.append(timed(lambda: dcm2niix(series_folder(mount), niix / "mount-cold")))
            with bench.fresh_mount("dcm2niix-read-only", ("-o", "ro")) as mount:
                folder = series_folder(mount)
                read_files(series_files(folder))
                rows["2c"].ours.append(timed(lambda folder=folder: dcm2niix(folder, niix / "mount-read-only")))
            rows["2c"].theirs.append(local_time)
        for config in bench.rclone_configs:
            bench.as_peer(rows, {"1a", "2a", "2b", "3"}, lambda: peer_series(bench, rows, wanted, config, len(files)))


def peer_series(bench: Bench, rows: dict[str, Row], wanted: set[int], config: str, file_count: int) -> None:
    """Rows 1a, 2a, 2b and 3 through rclone mount in one configuration."""
    niix = bench.work / "niix"
    with bench.fresh_rclone(config, "series") as peer:
        cold, read = timed_read(lambda: series_files(series_folder(peer)))
        folder = series_folder(peer)
        files = series_files(folder)
        if len(files) != file_count:
            raise RuntimeError(f"rclone shows {len(files)} files of the series, the mount {file_count}")
        check_bytes(read, files)
        if 1 in wanted:
            rows["1a"].peer.setdefault(config, []).append(cold)
        if 3 in wanted:
            rows["3"].peer.setdefault(config, []).append(timed(lambda: read_files(series_files(folder))))
        if 2 in wanted:
            rows["2b"].peer.setdefault(config, []).append(timed(lambda: dcm2niix(folder, niix / "rclone-warm")))
    if 2 in wanted:
        with bench.fresh_rclone(config, "dcm2niix-cold") as peer:
            rows["2a"].peer.setdefault(config, []).append(
                timed(lambda: dcm2niix(series_folder(peer), niix / "rclone-cold"))
            )


# ---- 7: the BIDS view -----------------------------------------------------------


def all_files(root: Path) -> list[Path]:
    """Every file below ``root`` in path order (listing a BIDS datatype folder converts it)."""
    return sorted(Path(folder) / name for folder, _dirs, names in os.walk(root) for name in names)


def bids_the_usual_way(bench: Bench, session_id: str, plan, target: Path) -> list[Path]:
    """curl the session's zip, unzip it, run dcm2niix on each series the plan names, put the
    outputs under their BIDS names: what a user does by hand (with dcm2bids or a script)."""
    import zipfile

    import dcm2niix as wheel

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = target / "session.zip"
    bench.curl(f"{bench.url}/data/experiments/{session_id}/scans/ALL/files?format=zip", output=str(archive))
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(target / "dicom")
    folders = {path.parents[2].name.split("-", 1)[0]: path for path in (target / "dicom").rglob("DICOM/files")}
    written = []
    for entry in plan.targets:
        out = target / "bids" / plan.folder / entry.datatype
        out.mkdir(parents=True, exist_ok=True)
        run_quietly(
            [wheel.bin, "-z", "n", "-b", "y", "-ba", "y", "-f", entry.stem, "-o", str(out), str(folders[entry.scan.id])]
        )
        written += sorted(out.glob(f"{entry.stem}.*"))
    return written


def bench_bids(bench: Bench, rows: dict[str, Row]) -> None:
    from xnatfs.bids.plan import plan_session
    from xnatfs.client.connection import XnatConnection

    session_id = experiment_id(bench, BIDS_SUBJECT, BIDS_SESSION, BIDS_PROJECT)
    with XnatConnection(bench.url, USER, PASSWORD) as connection:
        plan = plan_session("P01", "MR1", connection.get_experiment_contents(session_id).scans, extension=".nii")
    usual = bench.work / "bids-usual"
    local = bench.work / "bids-local"
    for run in range(1, bench.runs + 1):
        logger.info("BIDS view, run %d/%d", run, bench.runs)
        with bench.fresh_mount("bids") as mount:
            session = mount.path / BIDS_PROJECT / "BIDS" / f"sub-{BIDS_SUBJECT}" / "ses-MR1"
            seconds, read = timed_read(lambda: all_files(session))
            rows["7a"].ours.append(seconds)
            files = all_files(session)
            check_bytes(read, files)
            rows["7b"].ours.append(timed(lambda: read_files(all_files(session))))
            view = mount.path / BIDS_PROJECT / "BIDS"
            shutil.rmtree(local, ignore_errors=True)
            shutil.copytree(view, local)
            layout_time = bids_layout_time(view)
            if layout_time is None:
                rows["7c"].not_measured = "pybids is not installed (pip install '.[test]')"
            else:
                rows["7c"].ours.append(layout_time)
                rows["7c"].theirs.append(bids_layout_time(local))
        bench.drop_caches()
        rows["7a"].theirs.append(timed(lambda: bids_the_usual_way(bench, session_id, plan, usual)))
        local_session = local / f"sub-{BIDS_SUBJECT}" / "ses-MR1"
        read_files(all_files(local_session))
        rows["7b"].theirs.append(timed(lambda: read_files(all_files(local_session))))


def bids_layout_time(root: Path) -> float | None:
    try:
        from bids import BIDSLayout
    except ImportError:
        return None
    return timed(lambda: BIDSLayout(str(root), validate=False))


# ---- 4: the 1 GiB file -------------------------------------------------------


def bench_big_file(bench: Bench, rows: dict[str, Row]) -> None:
    session_id = experiment_id(bench, HIRES_SUBJECT, HIRES_SESSION)
    url = f"{bench.url}/data/experiments/{session_id}/resources/{BIG_RESOURCE}/files/{BIG_FILE}"
    for run in range(1, bench.runs + 1):
        logger.info("1 GiB file, run %d/%d", run, bench.runs)
        seconds, size, rss = cold_big_read(bench)
        bench.server.honour_range = True
        try:
            ranged_seconds, _size, ranged_rss = cold_big_read(bench)
        finally:
            bench.server.honour_range = False
        rows["4e"].ours.append(size / ranged_seconds / 1e6)
        rows["4a"].ours.append(size / seconds / 1e6)
        rows["4c"].ours.append(size / seconds / 1e6)
        if rss is not None and ranged_rss is not None:
            rows["4b"].ours.append(max(rss, ranged_rss))
            rows["4b"].theirs.append(RSS_LIMIT_MB)
        bench.drop_caches()
        rows["4a"].theirs.append(size / timed(lambda: bench.curl(url)) / 1e6)
        bench.drop_caches()
        bench.drop_caches()
        rows["4d"].theirs.append(size / timed(lambda: bench.curl_md5(url)) / 1e6)
        rows["4d"].ours.append(size / seconds / 1e6)
        copy = bench.work / "curl-copy.bin"
        rows["4c"].theirs.append(size / timed(lambda copy=copy: bench.curl(url, output=str(copy))) / 1e6)
        rows["4e"].theirs.append(rows["4c"].theirs[-1])
        copy.unlink()
        for config in bench.rclone_configs:
            bench.as_peer(rows, {"4a", "4e"}, lambda: peer_big_file(bench, rows, config))


def cold_big_read(bench: Bench) -> tuple[float, int, float | None]:
    """One cold read of the 1 GiB file through a fresh mount: seconds, bytes, daemon peak RSS."""
    with bench.fresh_mount("big-file") as mount:
        seconds, size = timed_big_read(mount.path)
        return seconds, size, mount.peak_rss_mb()


def timed_big_read(root: Path) -> tuple[float, int]:
    """Seconds and bytes of one read of the 1 GiB file under ``root`` (a mount of either kind)."""
    path = root / PROJECT / HIRES_SUBJECT / HIRES_SESSION / "RESOURCES" / BIG_RESOURCE / BIG_FILE
    seconds, read = timed_read(lambda: [path])
    return seconds, check_bytes(read, [path])


def peer_big_file(bench: Bench, rows: dict[str, Row], config: str) -> None:
    with bench.fresh_rclone(config, "big-file") as peer:
        seconds, size = timed_big_read(peer.path)
    # rclone's static server honours Range: the same run stands beside both rows.
    rows["4a"].peer.setdefault(config, []).append(size / seconds / 1e6)
    rows["4e"].peer.setdefault(config, []).append(size / seconds / 1e6)


# ---- 5: listing a 500-subject project ------------------------------------------


def walk_listing(root: Path) -> None:
    run_quietly(["find", str(root)])
    run_quietly(["ls", "-lR", str(root)])


def replicate_tree(source: Path, target: Path, real: Callable[[Path], bool] = lambda relative: False) -> int:
    """The same folders and files on local disk; returns the entry count.

    Files are sparse with the same sizes, except in the folders ``real``
    picks (by their path below ``source``), whose bytes are copied.
    """
    count = 0
    for directory, _subdirs, files in os.walk(source):
        relative = Path(os.path.relpath(directory, source))
        (target / relative).mkdir(parents=True, exist_ok=True)
        copy_bytes = real(relative)
        for name in files:
            if copy_bytes:
                shutil.copyfile(os.path.join(directory, name), target / relative / name)
                continue
            with open(target / relative / name, "wb") as handle:
                handle.truncate(os.stat(os.path.join(directory, name)).st_size)
        count += 1 + len(files)
    return count


def replay_in_parallel(bench: Bench, targets: list[str], workers: int) -> None:
    """Fetch the listings the mount needed straight from the server, ``workers`` at a time.

    Project-wide listings go first and the per-session ones after, as a
    script must: it learns the sessions from the project listing.
    """
    local = threading.local()

    def fetch(target: str) -> None:
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = requests.Session()
            http.auth = bench.auth()
        answer = http.get(f"{bench.url}{target}", timeout=60)
        answer.raise_for_status()

    first = [t for t in targets if not t.startswith("/data/experiments/")]
    then = [t for t in targets if t.startswith("/data/experiments/")]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in (first, then):
            list(pool.map(fetch, batch))


def request_kind(method: str, target: str) -> str:
    """A request with its identifiers blanked out, e.g. ``GET /data/experiments/*?format=json``."""
    path, _, query = target.partition("?")
    parts = path.split("/")
    for index in range(1, len(parts)):
        if parts[index - 1] in ("projects", "subjects", "experiments", "scans", "resources"):
            parts[index] = "*"
        elif parts[index - 1] == "files":
            parts[index:] = ["*"]
            break
    return f"{method} {'/'.join(parts)}" + (f"?{query}" if query else "")


def bench_listing(bench: Bench, rows: dict[str, Row]) -> None:
    sessions = len(server_json(bench, f"/data/projects/{PROJECT}/experiments")["ResultSet"]["Result"])
    limit = sessions + 20
    local_tree = bench.work / "local-tree"
    for run in range(1, bench.runs + 1):
        logger.info("listing %s (%d sessions), run %d/%d", PROJECT, sessions, run, bench.runs)
        with bench.fresh_mount("listing") as mount:
            root = mount.path / PROJECT
            bench.server.reset_counts()
            cold = timed(lambda root=root: walk_listing(root))
            log = bench.server.requests()
            warm = timed(lambda root=root: run_quietly(["find", str(root)]))
            warm_walks = timed_warm_walks(root)
            if not local_tree.exists():
                entries = replicate_tree(root, local_tree / PROJECT)
                logger.info("local copy of the tree: %d entries", entries)
        targets = sorted({target for method, target, status in log if method == "GET" and status == 200})
        bench.listing_requests = Counter(request_kind(method, target) for method, target, _status in log)
        rows["5a"].ours.append(len(log))
        rows["5a"].theirs.append(limit)
        rows["5b"].ours.append(cold)
        rows["5b"].theirs.append(timed(lambda targets=targets: replay_in_parallel(bench, targets, PARALLEL_LISTINGS)))
        rows["5c"].ours.append(warm)
        run_quietly(["find", str(local_tree / PROJECT)])
        rows["5c"].theirs.append(timed(lambda: run_quietly(["find", str(local_tree / PROJECT)])))
        for key, seconds in zip(WARM_WALK_ROWS, warm_walks):
            rows[key].ours.append(seconds)
        for key, seconds in zip(WARM_WALK_ROWS, timed_warm_walks(local_tree / PROJECT)):
            rows[key].theirs.append(seconds)
    if bench.rclone_configs:
        bench.as_peer(rows, {"5c", *WARM_WALK_ROWS}, lambda: peer_warm_walks(bench, rows))


# Rows of timed_warm_walks, in its order.
WARM_WALK_ROWS = ("5f", "5g", "5h")


def timed_warm_walks(root: Path) -> list[float]:
    """A warm ``ls -lR`` of the project, then ``find`` and ``ls -lR`` of its first subjects (rows 5f-5h)."""
    small = [str(root / subject) for subject in SMALL_TREE_SUBJECTS]
    return [
        timed(lambda: run_quietly(["ls", "-lR", str(root)])),
        timed(lambda: run_quietly(["find", *small])),
        timed(lambda: run_quietly(["ls", "-lR", *small])),
    ]


def peer_warm_walks(bench: Bench, rows: dict[str, Row]) -> None:
    """Rows 5c and 5f-5h through rclone: its caches filled once by a walk without the added latency
    (it takes minutes), then the timed warm walks of each run."""
    config = (
        RCLONE_WARM_WALK_PREFERRED if RCLONE_WARM_WALK_PREFERRED in bench.rclone_configs else bench.rclone_configs[0]
    )
    with bench.fresh_rclone(config, "listing") as peer:
        root = peer.path / PROJECT
        with bench.static.no_latency():
            walk_listing(root)
        for _run in range(bench.runs):
            rows["5c"].peer.setdefault(config, []).append(timed(lambda: run_quietly(["find", str(root)])))
            for key, seconds in zip(WARM_WALK_ROWS, timed_warm_walks(root)):
                rows[key].peer.setdefault(config, []).append(seconds)


def session_file_listings(log: list[tuple[str, str, int]]) -> list[str]:
    """The per-session file listings among the requests in ``log``."""
    return [
        target
        for method, target, _status in log
        if method == "GET" and target.startswith("/data/experiments/") and target.split("?")[0].endswith("/files")
    ]


def bench_walk(bench: Bench, rows: dict[str, Row]) -> None:
    """A cold ``find`` of some subjects: what it costs, and what the mount loads ahead of it."""
    sessions = sum(
        len(server_json(bench, f"/data/projects/{PROJECT}/subjects/{subject}/experiments")["ResultSet"]["Result"])
        for subject in WALKED_SUBJECTS
    )
    for run in range(1, bench.runs + 1):
        logger.info(
            "cold find of %d subjects (%d sessions), run %d/%d", len(WALKED_SUBJECTS), sessions, run, bench.runs
        )
        with bench.fresh_mount("walk") as mount:
            bench.server.reset_counts()
            seconds = timed(lambda: run_quietly(["find", *(str(mount.path / PROJECT / s) for s in WALKED_SUBJECTS)]))
        # Taken after the unmount: everything the mount loaded ahead while it was up counts.
        log = bench.server.requests()
        targets = sorted({target for method, target, status in log if method == "GET" and status == 200})
        bench.walk_requests = Counter(request_kind(method, target) for method, target, _status in log)
        rows["5d"].ours.append(len(session_file_listings(log)))
        rows["5d"].theirs.append(sessions + WALK_AHEAD_LIMIT)
        rows["5e"].ours.append(seconds)
        rows["5e"].theirs.append(timed(lambda: replay_in_parallel(bench, targets, PARALLEL_LISTINGS)))
        for config in bench.rclone_configs:
            bench.as_peer(rows, {"5e"}, lambda: peer_walk(bench, rows, config))


def peer_walk(bench: Bench, rows: dict[str, Row], config: str) -> None:
    with bench.fresh_rclone(config, "walk") as peer:
        subjects = [str(peer.path / PROJECT / subject) for subject in WALKED_SUBJECTS]
        rows["5e"].peer.setdefault(config, []).append(timed(lambda: run_quietly(["find", *subjects])))


# ---- 6: uploading a folder -------------------------------------------------------


def make_upload_folder(folder: Path, megabytes: int) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for index in range(megabytes // UPLOAD_FILE_MB):
        path = folder / f"derived_{index:04d}.bin"
        path.write_bytes(os.urandom(UPLOAD_FILE_MB << 20))
        files.append(path)
    return files


def server_files(bench: Bench, resource_uri: str) -> dict[str, int]:
    with requests.Session() as http:
        answer = http.get(f"{bench.url}{resource_uri}/files", params={"format": "json"}, auth=bench.auth(), timeout=60)
        if answer.status_code == 404:
            return {}
        answer.raise_for_status()
        rows = answer.json()["ResultSet"]["Result"]
        # Name is only the last part; the path inside the resource follows /files/ in the URI.
        return {row["URI"].split("/files/", 1)[1]: int(row["Size"]) for row in rows}


def delete_resource(bench: Bench, resource_uri: str) -> None:
    with requests.Session() as http:
        http.delete(f"{bench.url}{resource_uri}", params={"removeFiles": "true"}, auth=bench.auth(), timeout=120)


def curl_put_all(bench: Bench, resource_uri: str, folder: Path, files: list[Path]) -> None:
    """One curl process, one PUT per file over a kept-alive connection."""
    command = ["curl", "-sS", "--fail", "--netrc-file", str(bench.netrc), "-o", "/dev/null"]
    for path in files:
        command += ["-T", str(path), f"{bench.url}{resource_uri}/files/{folder.name}/{path.name}?inbody=true"]
    subprocess.run(command, check=True, timeout=900)


def bench_upload(bench: Bench, rows: dict[str, Row]) -> None:
    row, untar = rows["6"], rows["6c"]
    folder = bench.work / "upload" / "derived"
    files = make_upload_folder(folder, bench.upload_mb)
    expected = {f"{folder.name}/{path.name}": path.stat().st_size for path in files}
    archive = bench.work / "upload" / "derived.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(folder.parent), folder.name], check=True, timeout=300)
    session_id = experiment_id(bench, UPLOAD_SUBJECT, UPLOAD_SESSION)
    for run in range(1, bench.runs + 1):
        logger.info("upload of %d MB, run %d/%d", bench.upload_mb, run, bench.runs)
        ours_uri = f"/data/experiments/{session_id}/resources/BENCH_UP_M{run}"
        theirs_uri = f"/data/experiments/{session_id}/resources/BENCH_UP_C{run}"
        untar_uri = f"/data/experiments/{session_id}/resources/BENCH_UP_T{run}"
        try:
            with bench.fresh_mount("upload") as mount:
                resources = mount.path / PROJECT / UPLOAD_SUBJECT / UPLOAD_SESSION / "RESOURCES"
                target = resources / f"BENCH_UP_M{run}"

                def copy(target: Path = target) -> None:
                    os.mkdir(target)
                    done = subprocess.run(
                        ["cp", "-r", str(folder), str(target)], capture_output=True, text=True, timeout=900
                    )
                    if done.returncode:
                        raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "cp failed")

                # Both sides read the source folder from the page cache (the fresh mount dropped it).
                read_files(files)
                try:
                    seconds = timed(copy)
                except OSError as exc:
                    row.not_measured = f"the mount cannot write yet ({exc.strerror or exc})"
                    logger.warning("upload through the mount failed: %s", row.not_measured)
                    return

                def extract(target: Path = resources / f"BENCH_UP_T{run}") -> None:
                    os.mkdir(target)
                    subprocess.run(["tar", "xf", str(archive), "-C", str(target)], check=True, timeout=900)

                untar_seconds = timed(extract)
            if server_files(bench, untar_uri) == expected:
                untar.ours.append(untar_seconds)
                untar.theirs.append(seconds)
            else:
                untar.not_measured = "after tar returned, the server did not hold every file"
            landed = server_files(bench, ours_uri)
            if landed != expected:
                row.not_measured = (
                    f"after cp returned, the server had {len(landed)} of {len(expected)} files with the right sizes"
                )
                return
            row.ours.append(seconds)
            row.theirs.append(timed(lambda theirs_uri=theirs_uri: curl_put_all(bench, theirs_uri, folder, files)))
            if server_files(bench, theirs_uri) != expected:
                raise RuntimeError("curl's upload did not land completely")
        finally:
            with bench.server.no_latency():
                delete_resource(bench, ours_uri)
                delete_resource(bench, theirs_uri)
                delete_resource(bench, untar_uri)


def bench_many_files(bench: Bench, rows: dict[str, Row]) -> None:
    """Small files written one after the other into one folder, as a copy of a DICOM folder
    does: whether a file costs more once thousands are there before it."""
    row = rows["6b"]
    session_id = experiment_id(bench, UPLOAD_SUBJECT, UPLOAD_SESSION)
    for run in range(1, bench.runs + 1):
        logger.info("copy of %d small files, run %d/%d", MANY_FILES, run, bench.runs)
        resource = f"BENCH_MANY_{run}"
        resource_uri = f"/data/experiments/{session_id}/resources/{resource}"
        try:
            with bench.fresh_mount("many-files") as mount:
                folder = mount.path / PROJECT / UPLOAD_SUBJECT / UPLOAD_SESSION / "RESOURCES" / resource / "copy"
                folder.mkdir(parents=True)
                seconds = []
                for number in range(MANY_FILES):
                    seconds.append(timed(lambda path=folder / f"f{number:05d}.dcm": path.write_bytes(b"x" * 1000)))
            landed = server_files(bench, resource_uri)
            if len(landed) != MANY_FILES:
                raise RuntimeError(f"after the copy, the server had {len(landed)} of {MANY_FILES} files")
            row.ours.append(statistics.median(seconds[-MANY_TENTH:]) * 1000)
            row.theirs.append(statistics.median(seconds[:MANY_TENTH]) * 1000)
        finally:
            with bench.server.no_latency():
                delete_resource(bench, resource_uri)


# ---- 8–10: cost as the work grows ---------------------------------------------------


def scale_subjects(sessions: int) -> list[str]:
    """The first subjects of SCALE holding ``sessions`` sessions (two each)."""
    return [f"S{number:05d}" for number in range(1, sessions // SCALE_SESSIONS_PER_SUBJECT + 1)]


def bench_scale_walks(bench: Bench, rows: dict[str, Row]) -> None:
    """A cold ``find`` of the subjects holding N sessions: requests, time, and the same listings fetched directly."""
    for sessions, (time_key, requests_key) in SCALE_WALKS.items():
        subjects = scale_subjects(sessions)
        runs = SCALE_LARGEST_RUNS if sessions == max(SCALE_WALKS) else bench.runs
        for run in range(1, runs + 1):
            logger.info("cold find of %d SCALE sessions, run %d/%d", sessions, run, runs)
            with bench.fresh_mount(f"scale-walk-{sessions}") as mount:
                bench.server.reset_counts()
                seconds = timed(lambda: run_quietly(["find", *(str(mount.path / SCALE_PROJECT / s) for s in subjects)]))
            log = bench.server.requests()  # after the unmount: what was loaded ahead counts
            targets = sorted({target for method, target, status in log if method == "GET" and status == 200})
            bench.scale_requests[sessions] = Counter(request_kind(method, target) for method, target, _status in log)
            rows[requests_key].ours.append(len(session_file_listings(log)))
            rows[requests_key].theirs.append(sessions + WALK_AHEAD_LIMIT)
            rows[time_key].ours.append(seconds)
            rows[time_key].theirs.append(timed(lambda: replay_in_parallel(bench, targets, PARALLEL_LISTINGS)))
    if bench.rclone_configs:
        bench.as_peer(rows, {SCALE_WALKS[SCALE_PEER_SESSIONS][0]}, lambda: peer_scale_walk(bench, rows))


def peer_scale_walk(bench: Bench, rows: dict[str, Row]) -> None:
    """The smallest walk through rclone, in one configuration (each folder costs rclone a request of its own)."""
    config = (
        RCLONE_WARM_WALK_PREFERRED if RCLONE_WARM_WALK_PREFERRED in bench.rclone_configs else bench.rclone_configs[0]
    )
    subjects = scale_subjects(SCALE_PEER_SESSIONS)
    served = bench.work / "static" / SCALE_PROJECT
    if not served.exists():
        with bench.server.no_latency(), bench.fresh_mount("static-copy-scale") as mount:
            for subject in subjects:
                replicate_tree(mount.path / SCALE_PROJECT / subject, served / subject)
    key = SCALE_WALKS[SCALE_PEER_SESSIONS][0]
    for _run in range(bench.runs):
        with bench.fresh_rclone(config, "scale-walk") as peer:
            paths = [str(peer.path / SCALE_PROJECT / subject) for subject in subjects]
            rows[key].peer.setdefault(config, []).append(timed(lambda paths=paths: run_quietly(["find", *paths])))


def scale_series_folder(mount_path: Path, subject: str, session: str) -> Path:
    scans = mount_path / SCALE_PROJECT / subject / session / "SCANS"
    names = os.listdir(scans)
    if len(names) != 1:
        raise RuntimeError(f"expected one scan in {scans}: {names}")
    return scans / names[0] / "DICOM"


def zip_url(bench: Bench, session_id: str, scan: str) -> str:
    return f"{bench.url}/data/experiments/{session_id}/scans/{scan}/resources/DICOM/files?format=zip"


def curl_and_unzip(bench: Bench, url: str, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    bench.curl(url, output=str(target / "series.zip"))
    run_quietly(["unzip", "-q", str(target / "series.zip"), "-d", str(target)])


def bench_big_series(bench: Bench, rows: dict[str, Row]) -> None:
    """The 4 800-file DTI series: cold read through the mount against curl + unzip, the daemon's
    memory, and dcm2niix on it."""
    session_id = experiment_id(bench, DTI_SUBJECT, DTI_SESSION, SCALE_PROJECT)
    url = zip_url(bench, session_id, DTI_SCAN)
    unzipped = bench.work / "dti-unzipped"
    niix = bench.work / "niix-dti"
    for run in range(1, bench.runs + 1):
        logger.info("4 800-file series, run %d/%d", run, bench.runs)
        with bench.fresh_mount("dti-series") as mount:
            seconds, read = timed_read(
                lambda mount=mount: series_files(scale_series_folder(mount.path, DTI_SUBJECT, DTI_SESSION))
            )
            files = series_files(scale_series_folder(mount.path, DTI_SUBJECT, DTI_SESSION))
            size = check_bytes(read, files)
            rss = mount.peak_rss_mb()
        bench.dti_series = (len(files), size)
        rows["9a"].ours.append(seconds)
        rows["9b"].ours.append(seconds)
        if rss is not None:
            rows["9c"].ours.append(rss)
            rows["9c"].theirs.append(RSS_LIMIT_MB)
        bench.drop_caches()
        rows["9a"].theirs.append(timed(lambda: curl_and_unzip(bench, url, unzipped)))
        bench.drop_caches()
        rows["9b"].theirs.append(timed(lambda: bench.curl(url)))
        if run > DTI_DCM2NIIX_RUNS:
            continue
        with bench.fresh_mount("dti-dcm2niix-cold") as mount:
            folder = scale_series_folder(mount.path, DTI_SUBJECT, DTI_SESSION)
            rows["9d"].ours.append(timed(lambda folder=folder: dcm2niix(folder, niix / "mount-cold")))
        local = next(path.parent for path in unzipped.rglob("*.dcm"))
        bench.drop_caches()
        rows["9d"].theirs.append(timed(lambda local=local: dcm2niix(local, niix / "local-cold")))


def bench_parallel_readers(bench: Bench, rows: dict[str, Row]) -> None:
    """8 readers of 8 different series at once, cold, against 8 curls of their zips at once; and one of each."""
    sessions = [f"{PARALLEL_SUBJECT}_MR{index}" for index in range(1, PARALLEL_READERS + 1)]
    urls = [zip_url(bench, experiment_id(bench, PARALLEL_SUBJECT, s, SCALE_PROJECT), PARALLEL_SCAN) for s in sessions]
    for run in range(1, bench.runs + 1):
        logger.info("parallel readers, run %d/%d", run, bench.runs)
        for key, count in (("10a", PARALLEL_READERS), ("10b", 1)):
            with bench.fresh_mount(f"parallel-{count}") as mount:
                totals: list[int] = []

                def read_one(session: str, mount: Mount = mount) -> int:
                    paths = series_files(scale_series_folder(mount.path, PARALLEL_SUBJECT, session))
                    return check_bytes(read_files(paths), paths)

                def read_all(count: int = count) -> None:
                    with ThreadPoolExecutor(max_workers=count) as pool:
                        totals.extend(pool.map(read_one, sessions[:count]))

                rows[key].ours.append(timed(read_all))
                rss = mount.peak_rss_mb()
            if key == "10a" and rss is not None:
                rows["10c"].ours.append(rss)
                rows["10c"].theirs.append(RSS_LIMIT_MB)
            bench.parallel_bytes[key] = sum(totals)
            bench.drop_caches()

            def curl_all(count: int = count) -> None:
                with ThreadPoolExecutor(max_workers=count) as pool:
                    list(pool.map(bench.curl, urls[:count]))

            rows[key].theirs.append(timed(curl_all))


def growth_lines(rows: dict[str, Row], bench: Bench) -> list[str]:
    """How the cost per session, per file and per reader changes as the work grows, from the medians."""
    lines = []
    for sessions, (time_key, requests_key) in SCALE_WALKS.items():
        if time_key not in rows or not rows[time_key].ours or not rows[requests_key].ours:
            continue
        walk, direct, asked = rows[time_key], rows[time_key].theirs, rows[requests_key].ours
        lines.append(
            f"- {time_key}/{requests_key}, {sessions} sessions: "
            f"{statistics.median(walk.ours) / sessions * 1000:.1f} ms and "
            f"{statistics.median(asked) / sessions:.3f} file listings per session through the mount, "
            f"{statistics.median(direct) / sessions * 1000:.1f} ms per session by {PARALLEL_LISTINGS} parallel GETs"
        )
    if "9a" in rows and rows["9a"].ours and bench.dti_series:
        count, size = bench.dti_series
        seconds = statistics.median(rows["9a"].ours)
        lines.append(
            f"- 9a, {count} files ({size / 1e6:.0f} MB): {seconds / count * 1000:.2f} ms per file, "
            f"{size / seconds / 1e6:.1f} MB/s through the mount; curl + unzip "
            f"{statistics.median(rows['9a'].theirs) / count * 1000:.2f} ms per file"
        )
    one, eight = rows.get("10b"), rows.get("10a")
    if one and eight and one.ours and eight.ours:
        for label, row, key in (("one reader", one, "10b"), (f"{PARALLEL_READERS} readers", eight, "10a")):
            megabytes = bench.parallel_bytes.get(key, 0) / 1e6
            lines.append(
                f"- {key}, {label}: {megabytes / statistics.median(row.ours):.1f} MB/s through the mount, "
                f"{megabytes / statistics.median(row.theirs):.1f} MB/s by curl"
            )
        ours = statistics.median(eight.ours) / statistics.median(one.ours)
        theirs = statistics.median(eight.theirs) / statistics.median(one.theirs)
        lines.append(
            f"- {PARALLEL_READERS} readers take {ours:.2f}× the time of one through the mount, {theirs:.2f}× by curl"
        )
    return lines


# ---- machine, settings, report ---------------------------------------------------


def disk_write_speed(folder: Path, megabytes: int = 1024) -> float:
    """MB/s of writing a file and fsyncing it, where the mount keeps its cache: the cold read's floor."""
    path = folder / "disk-speed.bin"
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        for _ in range(megabytes):
            handle.write(block)
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return megabytes * CHUNK / seconds / 1e6


def machine(work: Path) -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
            memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "RAM": memory,
        "load average at the start (1, 5, 15 min)": load,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "disk": f"{disk_write_speed(work):.0f} MB/s writing 1 GiB with fsync in the work folder",
        "dcm2niix": _first_line(["dcm2niix", "-v"]),
        "curl": " ".join(_first_line(["curl", "--version"]).split()[:2]),
    }


def code_revision() -> str:
    """The commit measured, marked when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
        )
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if changed.stdout.strip() else "")


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "not installed"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[-1].strip() if command[0] == "dcm2niix" and lines else (lines[0].strip() if lines else "")


def make_rows(upload_mb: int) -> dict[str, Row]:
    at_most, at_least = (lambda v: Goal("at_most", v)), (lambda v: Goal("at_least", v))
    rows = [
        Row("1a", "cold read of a 208-file series (27 MB)", "mount", "curl zip", "s", at_most(1.3)),
        Row("1b", "cold read of the series", "mount", "requests, file by file", "s"),
        Row("1c", "cold read of the series, its folder listed before", "mount", "curl zip", "s"),
        Row("1d", "cold read of the series (as 1a)", "mount", "curl zip + unzip -q", "s", at_most(1.0)),
        Row("2a", "dcm2niix of the series, cold", "mount", "local copy", "s"),
        Row("2b", "dcm2niix of the series, warm", "mount", "local copy", "s", at_most(1.2)),
        Row("2c", "dcm2niix of the series, warm, read-only mount (-o ro)", "mount", "local copy", "s"),
        Row("3", "warm re-read of the series", "mount", "local copy", "s", at_most(1.5)),
        Row("4a", "cold sequential read of a 1 GiB file", "mount", "curl", "MB/s", at_least(0.8)),
        Row(
            "4b",
            "daemon peak RSS (VmHWM) after 4a or 4e",
            "mount",
            "limit",
            "MB",
            Goal("at_most", 1.0, f"< {RSS_LIMIT_MB:g} MB"),
        ),
        Row("4c", "cold read of the 1 GiB file, both writing to disk", "mount", "curl -o FILE", "MB/s"),
        Row("4d", "cold read of the 1 GiB file, both checking its MD5", "mount", "curl piped into md5sum", "MB/s"),
        Row(
            "4e",
            "cold sequential read of the 1 GiB file, server honouring Range",
            "mount",
            "curl -o FILE",
            "MB/s",
            at_least(0.5),
        ),
        Row(
            "5a",
            f"requests for cold find + ls -lR of {PROJECT}",
            "mount",
            "limit: sessions + 20",
            "requests",
            Goal("at_most", 1.0, "≤ sessions + 20"),
        ),
        Row("5b", f"cold find + ls -lR of {PROJECT}", "mount", f"{PARALLEL_LISTINGS} parallel GETs", "s", at_most(1.5)),
        Row("5c", f"warm find of {PROJECT}", "mount", "same tree on local disk", "s", at_most(3.0)),
        Row("5f", f"warm ls -lR of {PROJECT}", "mount", "same tree on local disk", "s"),
        Row("5g", f"warm find of {len(SMALL_TREE_SUBJECTS)} subjects", "mount", "same tree on local disk", "s"),
        Row("5h", f"warm ls -lR of {len(SMALL_TREE_SUBJECTS)} subjects", "mount", "same tree on local disk", "s"),
        Row(
            "5d",
            f"session file listings for a cold find of {len(WALKED_SUBJECTS)} subjects",
            "mount",
            f"limit: their sessions + {WALK_AHEAD_LIMIT}",
            "requests",
            Goal("at_most", 1.0, f"≤ sessions + {WALK_AHEAD_LIMIT}"),
        ),
        Row("5e", f"cold find of {len(WALKED_SUBJECTS)} subjects", "mount", f"{PARALLEL_LISTINGS} parallel GETs", "s"),
        Row(
            "6",
            f"cp -r of {upload_mb} MB ({upload_mb // UPLOAD_FILE_MB} files) into a resource",
            "mount",
            "curl PUTs",
            "s",
            at_most(1.3),
        ),
        Row(
            "6c",
            f"tar x of the same {upload_mb} MB into a resource (tar writes 10 KiB at a time)",
            "mount",
            "cp -r of the same files (6)",
            "s",
        ),
        Row(
            "6b",
            f"copy of {MANY_FILES} files of 1 kB into one folder: ms a file for the last {MANY_TENTH}",
            "mount",
            f"for the first {MANY_TENTH}",
            "ms",
            at_most(1.2),
        ),
        Row(
            "7a",
            f"cold listing + read of one session's BIDS files ({BIDS_SESSION})",
            "mount",
            "curl session zip, unzip, dcm2niix, arrange",
            "s",
            at_most(1.2),
        ),
        Row("7b", "warm re-read of the session's BIDS files", "mount", "local copy", "s"),
        Row("7c", f"BIDSLayout indexing of {BIDS_PROJECT}'s BIDS view", "mount", "same dataset on local disk", "s"),
    ]
    for sessions, (time_key, requests_key) in SCALE_WALKS.items():
        walked = f"{sessions} sessions ({sessions // SCALE_SESSIONS_PER_SUBJECT} subjects of {SCALE_PROJECT})"
        runs = f", {SCALE_LARGEST_RUNS} run" if sessions == max(SCALE_WALKS) else ""
        rows.append(
            Row(
                time_key,
                f"cold find of {walked}, down to their files{runs}",
                "mount",
                f"{PARALLEL_LISTINGS} parallel GETs",
                "s",
            )
        )
        rows.append(
            Row(
                requests_key,
                f"session file listings for the cold find of {sessions} sessions{runs}",
                "mount",
                f"limit: sessions + {WALK_AHEAD_LIMIT}",
                "requests",
                Goal("at_most", 1.0, f"≤ sessions + {WALK_AHEAD_LIMIT}"),
            )
        )
    rows += [
        Row("9a", "cold read of a 4 800-file DTI series (96×96, 96 MB)", "mount", "curl zip + unzip", "s", at_most(1)),
        Row("9b", "cold read of the 4 800-file series", "mount", "curl zip", "s", at_most(1.3)),
        Row(
            "9c",
            "daemon peak RSS (VmHWM) after 9a",
            "mount",
            "limit",
            "MB",
            Goal("at_most", 1.0, f"< {RSS_LIMIT_MB:g} MB"),
        ),
        Row(
            "9d",
            f"dcm2niix of the 4 800-file series, cold, {DTI_DCM2NIIX_RUNS} run",
            "mount",
            "unzipped copy, page cache dropped",
            "s",
        ),
        Row(
            "10a",
            f"{PARALLEL_READERS} readers of {PARALLEL_READERS} different 208-file series at once, cold",
            "mount",
            f"{PARALLEL_READERS} curls of their zips at once",
            "s",
            at_most(1.3),
        ),
        Row("10b", "one reader of one of those series, cold", "mount", "curl of its zip", "s", at_most(1.3)),
        Row(
            "10c",
            "daemon peak RSS (VmHWM) after 10a",
            "mount",
            "limit",
            "MB",
            Goal("at_most", 1.0, f"< {RSS_LIMIT_MB:g} MB"),
        ),
    ]
    return {row.key: row for row in rows}


ROW_GROUP = {
    "1a": 1,
    "1b": 1,
    "1c": 1,
    "1d": 1,
    "2a": 2,
    "2b": 2,
    "2c": 2,
    "3": 3,
    "4a": 4,
    "4b": 4,
    "4c": 4,
    "4d": 4,
    "4e": 4,
    "5a": 5,
    "5b": 5,
    "5c": 5,
    "5d": 5,
    "5e": 5,
    "5f": 5,
    "5g": 5,
    "5h": 5,
    "6": 6,
    "6c": 6,
    "6b": 6,
    "7a": 7,
    "7b": 7,
    "7c": 7,
    "8a": 8,
    "8b": 8,
    "8c": 8,
    "8d": 8,
    "8e": 8,
    "8f": 8,
    "9a": 9,
    "9b": 9,
    "9c": 9,
    "9d": 9,
    "10a": 10,
    "10b": 10,
    "10c": 10,
}
GROUPS = sorted(set(ROW_GROUP.values()))
# Rows rclone also runs; 5b is left out (see RCLONE_SKIPPED).
PEER_ROWS = {"1a", "2a", "2b", "3", "4a", "4e", "5c", "5e", "5f", "5g", "5h", "8a"}
RCLONE_SKIPPED = {
    "5b": "rclone lists each folder with a request of its own as the walk reaches it, one after the other: "
    "about 16 000 folders × 20 ms, over 5 minutes a run and configuration; row 5e compares a cold "
    "walk of some subjects instead",
    "8b": "rclone lists each folder with a request of its own, one after the other: about 5 folders a "
    "session × 20 ms, over a minute and a half a run for 1 000 sessions; row 8a measures it on 100",
    "8c": "as 8b: about a quarter of an hour for 10 000 sessions",
    "9a": "rclone fetches each file with a request of its own, one after the other (row 1a: about 25 ms a "
    "file): about two minutes a run for 4 800 files",
    "10a": "as 9a: each reader fetches its 208 files one request after the other (row 1a)",
}

# Rows 5c and 5f-5h: warm walks, at 16 000 folders and at 20 subjects.
WARM_WALK_NOTE = (
    "Warm, the kernel keeps entries and attributes (TTL 600 s) but not directory listings: "
    "pyfuse3 3.5 gives opendir no way to set FOPEN_CACHE_DIR, so each folder costs an opendir, two "
    "or more readdirs (a readdirplus answer holds about 25 entries) and a releasedir round trip to "
    "the daemon, where the local walk reads cached directories in the kernel and rclone's Go daemon "
    "answers the same requests. `ls -lR` costs no more requests than `find`: the mount answers "
    "ENOTSUP for SELinux labels and ACLs, and ls stops asking (docs/LAYOUT.md). The mount's own "
    "Python work is small now: about 7 µs for opendir + releasedir of a warm folder (its entries "
    "are kept until a listing changes or expires, docs/RELIABILITY.md 37) and under 1 µs an entry; "
    "`scripts/profile_ops.py --profile` shows the rest of each request in pyfuse3's loop and trio "
    "(a lock, an epoll wait and two scheduler passes per request, about 25 µs). What would close "
    "it: a pyfuse3 that exposes libfuse's cache_readdir and passes the inode to readdir, so the "
    "kernel serves warm listings itself, or a leaner request loop than pyfuse3 3.5's."
)

# Why a goal is missed and what would close it; shown only for missed rows. Written from
# the numbers of full runs on the machine described in docs/BENCHMARKS.md, and from
# separate probes of the same mount noted in each text.
MISSED_NOTES: dict[str, str] = {
    "1a": "curl is handed the zip's address; the mount must first find it. Cold, that is the projects, the "
    "subject's row and its own sessions (a path named outside a walk lists nothing project-wide), then "
    "the session's item JSON: three dependent round trips of 20 ms plus "
    "the server's work before the zip can be asked for, against a zip that takes about 0.2 s in all, so "
    "1.3× curl of the zip alone is out of reach while the address takes three round trips. What the "
    "mount does with them: the session's file list loads beside its item JSON instead of holding up "
    "SCANS/, and the zip is asked for as soon as the scan's resource folder is looked up by name (not "
    "reached by listing its scan folder, as a walk does), so its round trip overlaps the file list's "
    "(a probe's log: the zip's first bytes 20 ms after the item JSON, before the file list was in). "
    "The zip is parsed as it streams without moving the bytes not yet parsed (27 MB in 25–40 ms "
    "instead of 90–100 ms), each member is checked (size, MD5) once and served to its reader from "
    "memory. The cache's disk writes no longer slow the read: under one GIL, four threads writing "
    "the files while the zip streamed in held back both the download and the readers served from "
    "memory, and a file's MD5 waited behind other files' writes. Now two threads check the files "
    "(MD5) and hand them to their readers, and one thread writes them into the cache after the "
    "zip's end (or from half of the 64 MiB in-flight bound on); calls back to the event loop share "
    "one wake-up. By hand (median of 5–7 cold reads, 20 ms latency): 340 ms before, 250–265 ms "
    "after, the daemon's CPU during the read 0.34 s before, 0.20 s after. A timeline of each file "
    "then showed the zip checked to its last file at 112 ms while the reader had 70 files left, "
    "read at 0.8 ms each against 0.25 ms before the writes began: the writes now also wait until "
    "no file of the series was opened for 0.1 s (at most 5 s after the zip's end), and the median "
    "of 9 cold reads, alternating with the code before, went from 284 to 264 ms. What remains beside the "
    "three round trips is that CPU, under one GIL and on the same two cores as the fake server "
    "building the zip: the zip's download and parsing (about 0.05 s), the MD5s (about 0.06 s, in "
    "parallel), and about 630 FUSE requests for the 208 files (open, flush, release; about "
    "0.06 s on the event loop, most of it pyfuse3's and trio's own work per request). The reads "
    "make none: each file the zip brings while the series is being read goes into the kernel's "
    "page cache (notify_store), and the median of 10 cold reads, alternating with the code before, "
    "went from 306 to 293 ms. "
    "Against curl + unzip (row 1d), which writes the same files to disk, the mount is ahead. "
    "Measured before/after in one window (main's code, then this code, twice, 3 runs each, load "
    "average 6–8): 1a 3.59× and 3.98× before, 2.27× and 2.96× after; 1d 1.45× and 1.26× before, "
    "0.71× and 1.01× after. Finding the subject from its own answers instead of the project's listings "
    "(1 001 sessions, 0.26 MB), measured the same way (two windows, 3 runs each): the cold read took "
    "0.59 s and 0.42 s before, 0.51 s and 0.37 s after (1a 2.33× and 1.46× before, 1.61× and 2.07× "
    "after: curl's own time moved more than the mount's).",
    "1c": "The folder's listing by its path starts the series' zip (see 1a), so by the time the files are "
    "read the zip has brought them into the content cache (the page cache dropped); this row now "
    "measures a read served from the cache folder: 1.08–1.45× curl of the zip, 1.95–2.20× before.",
    "1d": "See 1a: the same cold read against curl of the zip into a file then `unzip -q`; level with it "
    "within the noise of a loaded machine (0.88× and 0.91× before the subject was found from its own "
    "answers, 1.10× and 0.79× after).",
    "2b": "Warm, the bytes come from the kernel's page cache, but every open, flush and release still "
    "goes to the Python daemon (25–70 µs of pyfuse3, trio and kernel per request before any of "
    "our code runs, by machine; `scripts/profile_ops.py` measured 13 000 open+flush+release a second "
    "on one, 4 700 on another, 7 700 there with the daemon and the caller on one CPU), "
    "and dcm2niix opens each of the 208 files four times (strace: 841 opens, 2 100 stats; of the "
    "4 800-file DTI series, 19 224 opens and 48 028 stats, 5.7 s warm against 1.25 s locally). "
    "The mount's own work for the three is about 9 µs (a cached file is lent from memory without a "
    "worker thread; a flush and release of a file read pay no request bound). pyfuse3 3.5 cannot mark a file "
    "FOPEN_NOFLUSH, nor let the kernel skip open and release (FUSE's no-open mode needs the inode "
    "in read and readdir, which pyfuse3 does not pass on); either would remove most of the rest. "
    "A read-only mount has nothing to send at a close: its first flush answers ENOSYS, after which "
    "the kernel sends none, so each close waits for no round trip (row 2c; by hand, 7 runs each, "
    "alternating: dcm2niix 0.35–0.36 s against 0.43–0.44 s, `cat` of the series 70–77 ms against 86–88 ms).",
    "2c": "As 2b, on a mount made with `-o ro`: its first close answers the flush with ENOSYS and the "
    "kernel sends no more, so an open and close of a file costs the daemon an open and a release "
    "(which nobody waits for) instead of an open, a flush and a release. A mount that may write "
    "needs every flush: it uploads a file written at its close and reports the outcome there.",
    "3": "The same cause as 2b in its purest form: reading 27 MB from the page cache takes about 10 ms "
    "locally, and through the mount each of the 208 files also costs an open, flush and release "
    "round trip to the daemon (about 75 µs a file). Reads themselves are served by the kernel "
    "(keep_cache). A ratio near 1.5× is only reachable for large files; for a series of small files "
    "it needs the FUSE features named in 2b. This row runs right after the cold read of 1a, before "
    "the series' files are written into the cache (which waits for its readers to pause, see 1a): "
    "its files are served from memory then, and the writes no longer compete with it (60–75 ms "
    "by hand while they did, 0.04–0.05 s in this row now).",
    "4a": "The mount hands out no byte it has not checked: the last bytes of a file wait until its MD5 "
    "matches the listing. Where the daemon's CPU goes in this read (perf, about 3 s per GiB): 40 % "
    "MD5 (1.4 s, one core's worth, sequential by nature), 50 % the kernel copying bytes (socket to "
    "buffer, buffer to cache file, cache file to the FUSE read, the answer into /dev/fuse), 9 % "
    "Python; py-spy showed the MD5 thread waiting for the GIL in 30 % of its samples and the download "
    "thread in 35 %, and every reader waiting for bytes woken at each megabyte written (3 400 "
    "wake-ups per GiB where 800 were needed). Now the MD5 thread maps the written bytes (16 MiB at "
    "a time, no copy, one GIL round trip per 16 MiB) instead of reading them back a megabyte at a "
    "time: 0.3 s less daemon CPU per GiB (lower in 10 of 11 runs side by side, peak RSS +15 MB for "
    "the mapping); a waiting reader is woken only once its bytes are written; the GIL switch interval "
    "is 0.5 ms. Row 4a itself did not move beyond the noise (main 228–328 MB/s, this 273–312, "
    "0.74–0.82× rclone either way, in four runs of both back to back): the single stream is "
    "bound by the download thread and the hash thread sharing 2 cores with the server, the reader "
    "and other work (load 4–8 while measured). Tried and dropped: hashing the bytes that come in "
    "order from the download buffer in the download thread (no read-back at all, but 4a fell from "
    "about 410 to 300 MB/s on a quiet machine: the stream the reader waits on then also does the "
    "MD5, which the hash thread runs on the other core); 4 MiB or 256 KiB socket reads; the fake "
    "server already sends with sendfile (0.2 s CPU per GiB). curl to /dev/null checks nothing; row "
    "4d compares with curl piped into md5sum, row 4c with curl writing the file to disk, as the "
    "cache must. Closing the gap to plain curl would mean serving files unchecked, which the mount "
    "will not do. rclone's http and webdav backends know no hash of these files, so rclone checks "
    "nothing and writes nothing. Row 4e is the same read from a server honouring Range, as "
    "rclone's static server does: the fair comparison with rclone. The MD5 itself costs 1.8 s of CPU "
    "per GiB whichever way its thread gets the bytes from the page cache (mapped: 588 MB/s; mapped and "
    "populated at once: 592 MB/s; read into a buffer: 571 MB/s), so hashing every byte handed out "
    "takes one of the 2 cores, and the download, the FUSE reads, the server and the reader share the "
    "other: the daemon used 4.2 s of CPU for a GiB read cold in 4.0 s.",
    "4e": "The same read as 4a, from the fake server honouring Range (as rclone's static server does): "
    "16 parts of 64 MiB, 4 ranged streams at a time in file order, each written at its offset, "
    "the MD5 following the bytes written without a gap. The streams have the whole file in 1.0–1.5 s, "
    "but only 5–25 % of it was hashed by then: the MD5 then runs alone for 1.3–1.6 s, so it is the "
    "whole critical path. With the MD5 thread mapping the bytes instead of copying them, "
    "measured back to back with the previous code, twice: 318 and 388 MB/s (1.15× and 0.98× "
    "rclone, 0.50× and 0.48× curl -o FILE) against 206 and 270 MB/s (0.60× and 0.80× rclone, "
    "0.44× and 0.40× curl); in single reads of the file, 437–533 MB/s against 345–474. On a loaded "
    "machine the goal is met or missed by the noise of the moment. Tried and dropped: holding "
    "each stream within 32 MiB of the MD5, so that it gets the CPU (4e fell to about 300 MB/s and "
    "the daemon's CPU rose by 0.8 s from the wake-ups); 2 streams instead of 4, 16 MiB parts instead "
    "of 64, the streams' threads at nice 10: no change beyond the noise. Not done: pushing the "
    "bytes into the kernel's page cache with notify_store (as a series' files are, see 1a, while "
    "nobody has them open), which would spare the FUSE read and its copy: the kernel locks the "
    "pages of a read in flight, and a download thread pushing bytes "
    "while a read of later bytes waits for that same thread would deadlock; it needs the pushed "
    "range kept clear of reads in flight. Where the server is far away (a real XNAT), the streams "
    "hide its latency and bandwidth per connection, which is what they are for.",
    "5b": "The reference only fetches the listings, 16 at a time. The mount's cold `find` fetches the "
    "same listings (one file list per session once the walk is noticed, three project-wide "
    "searches for everything else), but `find` and `ls -lR` also make about 130 000 FUSE requests: "
    "an opendir, two or more readdirs and a releasedir for each of the 16 000 folders, twice. "
    "(`ls -l` also asks each entry for its SELinux label and ACL; the mount answers ENOTSUP, after "
    "which ls asks no more, docs/LAYOUT.md.) At about 25 µs a request in pyfuse3 and trio before "
    "any of our code runs, that is where the time goes beside the listings. What would close it: a "
    "pyfuse3 that lets the kernel cache directory listings (FOPEN_CACHE_DIR, and no-opendir mode, "
    "which needs the inode passed to readdir).",
    "5c": WARM_WALK_NOTE,
    "5f": WARM_WALK_NOTE,
    "5g": WARM_WALK_NOTE,
    "5h": WARM_WALK_NOTE,
    "9a": "Per file, each of the 4 800 files costs an open, a flush and a release through FUSE (its "
    "reads are served by the kernel's page cache, where the zip put it: 4 800 read requests became "
    "1, and the median of 5 cold reads, alternating with the code before, went from 3.28 to 2.90 s), "
    "and a file created in the cache, where unzip creates a file on local disk. The cache's writes now "
    "run in one thread per zip (two threads contending for the same directories and the GIL made the "
    "read 3.8 s instead of 3.1 s by hand) and its 256 folders are made when it is opened. perf shows "
    "each file creation on this machine's disk costing 0.3–0.4 ms in the kernel (find_inode_bit, "
    "recently_deleted: the previous run's deleted files are stepped over), about 1.7 s of the writer's "
    "time for the series; unzip, writing into a folder deleted just before, pays the same. Once the "
    "64 MiB the daemon holds in memory were full, the download had to wait for those creations, and "
    "the reader for the download: now, while the series is being read, the files beyond that bound are "
    "parked on the cache's disk (appended to one nameless file, one write each) and made into cache "
    "files after the reader pauses. Two runs of rows 9 and 10 (5 runs each), alternating with the code "
    "before: 2.42 and 2.58 s against 2.55 and 2.84 s. Two problems that made it "
    "grow faster than the series are fixed (docs/RELIABILITY.md): "
    "files kept open were capped at 512, so a zip running ahead of its reader let files go before they "
    "were read (13 s before, about 8 s after, on this machine), and parallel zips each had their own "
    "memory bound (10c). What would close the rest: the FUSE features named in 2b (no open and release "
    "round trips for a file the kernel has cached).",
    "9b": "See 9a: curl of the zip alone writes nothing and opens nothing; the mount hands out 4 800 files.",
    "10a": "The daemon's own processor time sets it. A cold 208-file series costs the daemon about 0.2 s "
    "of CPU with one reader (read from /proc: the zip's parsing, MD5 and cache writes in worker threads, "
    "and about 630 FUSE requests through pyfuse3's loop), all under one GIL; 8 series at once cost "
    "2.1–3.0 s of daemon CPU in 1.9–2.6 s (by hand), more than 8 × 0.2 s, the threads of 8 zips "
    "contending for the GIL. Their checking and writing threads now take tasks from a plain queue: "
    "ThreadPoolExecutor's submissions all take one lock shared by every executor, and 8 zips queued "
    "for it at each file (2.7–2.9 s before, 2.4–2.6 s after, four runs each back to back). So 8 "
    "readers take about 8× the time of one where 8 curls take 4×. Memory is bounded (10c). With 8 zips "
    "the 64 MiB held in memory fill at once, and the downloads then waited for the cache's file "
    "creations (0.3–0.6 ms each on this disk, in the kernel: 2.1–2.7 s of the daemon's system time in "
    "the read, 1.0–1.5 s with the cache on tmpfs); files of a series being read now wait on disk "
    "instead (see 9a): 1.84 and 1.49 s against 1.87 and 2.18 s, two runs of rows 9 and 10 (5 runs each) "
    "alternating with the code before; by hand, 4 pairs, median 2.1 s against 2.9 s.",
    "10b": "Opening one series of SCALE no longer lists the project's subjects and sessions (0.8 MB and "
    "2.6 MB for its 10 009 sessions, about half a second of the server's time here): outside a walk the "
    "subject is found from its row and its own sessions listing, a few hundred bytes each (a walk still "
    "lists the project: one request instead of one per subject). Measured back to back with the "
    "previous code (two windows, 3 runs each): 1.62 s and 0.96 s before, 0.44 s and 0.63 s after "
    "(7.07× and 4.49× before, 2.62× and 2.59× after). What is left is what 1a pays: three dependent "
    "round trips (the projects, the subject, the session's item JSON) before the zip can be asked for, "
    "and the cache's writes of 208 files, against curl handed the zip's address.",
    "5d": "The walk's read-ahead loads the subjects after the opened one up to 8 of their sessions "
    "(`AHEAD_SESSIONS` in xnatfs/fs/walks.py); more than 10 listings past the walk means that "
    "window grew or moved ahead of the walk.",
    "7a": "The first listing of one of a session's datatype folders starts fetching and converting all "
    "of the session's series the plan names (that folder's first, then eight series at a time; dcm2niix "
    "two at a time), so a walk finds the next folders converted or under way instead of listing anat/, "
    "dwi/, fmap/ and func/ one after the other, each waiting for its zips and conversions. Run back to "
    "back on 2026-12-06 (rounds of 3 runs each, main's code then this code), at load 2 on 2 cores the "
    "code before gave 1.55×, 1.64×, 1.52× and 1.59×, this code 1.00×, 1.13×, 1.37× and 1.21× (mount "
    "0.32–0.43 s against 0.46–0.52 s); at load 4–8 the code before gave 1.08× to 1.68×, this code 0.89× "
    "to 1.50× (four series at a time then), the median of five rounds 1.52× against 1.14×. What is left is the "
    "daemon's own CPU, about 0.2 s besides dcm2niix's 0.1 s (py-spy: writing each of the session's 240 "
    "DICOM files into the content cache about 40 %, parsing the 8 zips a quarter, the scratch folder "
    "and outputs around each dcm2niix run a quarter), where curl and unzip cost little. What would "
    "close it: one zip of the session's planned series instead of one per series, and dcm2niix reading "
    "checked bytes laid out once rather than each DICOM file kept in the cache first.",
    "6": "Files now report a block size of 1 MiB (st_blksize), so cp writes each 1 MB file with one "
    "FUSE write instead of eight of 128 KiB (and the kernel asks for security.capability once instead "
    "of eight times). Each file is written into the upload spool, then uploaded with one PUT when cp "
    "closes it; curl only sends. strace of cp against the fake server with no added latency shows "
    "what is left per file: the create about 1.6 ms (a lookup and a create round trip, the spool entry "
    "made in a worker thread), the write about 1.4 ms (the megabyte copied from cp into the kernel, "
    "to the daemon and into the spool), and a close of about 5 ms where the PUT itself takes about "
    "4 ms; at 20 ms a request that is a close of about 27 ms against curl's PUT of about 24 ms. The "
    "spool is what keeps a file written through the mount safe from a failed upload, a crash or a "
    "kill (docs/RELIABILITY.md), so the bytes are written there before they are sent, and the "
    "upload can start only once cp's close says the file is whole: per file, a create and a write "
    "round trip and the spool's bookkeeping come on top of the PUT that curl makes alone. Timed in the "
    "daemon at 20 ms a request (100 files of 1 MB: cp 3.29 s, curl 2.49 s), the flush at cp's close "
    "took 27.1–27.4 ms: the PUT 25.6–25.8 ms, the removal of the sent entry from the spool 0.5 ms, "
    "its commit 0.3 ms and its claim 0.1–0.3 ms.",
}


# How the costs of 8–10 grow, read from full runs (the numbers above it are computed per run).
SCALE_NOTE = (
    "Walks (8a–8f; walked = `find` given the folders of the first N/2 subjects of SCALE, which lists "
    "every folder below them down to the files: subject, its sessions, RESOURCES, SCANS, the scan and "
    "its DICOM folder of 9 files). Requests grow linearly: one file listing per session, the read-ahead "
    "window past the last one, and a fixed handful of project-wide listings and searches (listed below). "
    "Time grows linearly too: per session it falls from 100 to 1 000 sessions (fixed costs spread "
    "thinner: the project's listings, the first subjects walked before the walk is noticed) and stays "
    "flat from 1 000 to 10 000; the 16 parallel GETs fall the same way, so the mount stays a steady few "
    "times slower: it keeps at most 8 sessions' listings in flight ahead of `find`, the reference 16. "
    "The project-wide listings grow with the project, not the walk: SCALE's 10 009 sessions make a 2.6 MB "
    "session listing, BENCH's 1 001 a 0.26 MB one, and the fake server answers both in time proportional "
    "to their rows (about 0.5 s and 0.1 s). A 4 800-file series (9a–9d) costs the mount about as much per "
    "file as the 208-file series of 1a; read in slices of 600 files, the time per file stays flat. Daemon "
    "memory stops growing with the series: parsed files waiting for the cache writers are bounded (64 MiB "
    "for all zips under way together), the listings of 4 800 files are a few MB. 8 readers of 8 series "
    "(10a) take about 8× the time of one (10b) for 8× the bytes, 8 curls about 4×: the daemon's processor "
    "time per series (about 0.2 s with one reader, more with eight, under one GIL) is the bound, not the "
    "server or the mount's workers (10a)."
)


def write_report(
    path: Path,
    rows: list[Row],
    info: dict[str, str],
    settings: dict[str, str],
    bench: Bench,
    started: dt.datetime,
    seconds: float,
) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`scripts/bench.py`); every number below comes from one run of it",
        f"on {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} minutes in all. Each row times the same task",
        "through the mount and by the usual alternative side by side, several times; values are medians",
        "with the min–max spread in brackets, and the ratio is mount ÷ alternative per run (for 4a,",
        "throughputs, so higher is better; for 4b, 5a, 5d, 8d–8f, 9c and 10c, the value ÷ its limit).",
        "Where it applies, the same task also runs through rclone mount of the same files (see Settings);",
        "the best of its configurations is shown with the ratio mount ÷ rclone per run, and a row where the mount is",
        "slower than rclone is MISSED whatever its goal.",
        "",
        "Run it again with `make bench`; `scripts/bench.py --quick` is a one-run smoke test,",
        "`--only 1,4` picks benchmarks, `--runs N` sets the repetitions, `--rclone webdav-off` the rclone",
        "configurations (`none`: no rclone), `--out FILE` the report.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", "## Settings", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    lines += ["", "## Results", ""]
    lines += table_lines(rows, markdown=True)
    if bench.peak_rss:
        lines += [
            "",
            "Peak resident memory of the mount daemon (VmHWM at unmount), by task: "
            + "; ".join(f"{purpose} {max(values):.0f} MB" for purpose, values in sorted(bench.peak_rss.items()))
            + ".",
        ]
    if bench.listing_requests:
        lines += ["", "Requests the mount made for the cold listing (5a), last run:", ""]
        lines += [f"- {count} × `{kind}`" for kind, count in bench.listing_requests.most_common()]
    if bench.walk_requests:
        lines += [
            "",
            "Requests the mount made for the cold find of some subjects (5d, 5e), last run, "
            "counted after the unmount (what it loaded ahead included):",
            "",
        ]
        lines += [f"- {count} × `{kind}`" for kind, count in bench.walk_requests.most_common()]
    growth = growth_lines({row.key: row for row in rows}, bench) if any(ROW_GROUP[row.key] >= 8 for row in rows) else []
    if growth:
        lines += ["", "Cost as the work grows (8–10), from the medians above:", ""] + growth + ["", SCALE_NOTE]
    for sessions, counts in sorted(bench.scale_requests.items()):
        lines += ["", f"Requests the mount made for the cold find of {sessions} sessions, last run:", ""]
        lines += [f"- {count} × `{kind}`" for kind, count in counts.most_common()]
    peers = [row for row in rows if row.peer]
    if peers:
        lines += ["", "rclone, every configuration measured (median of the runs):", ""]
        for row in peers:
            configs = "; ".join(f"{config} {spread(values, row.unit)}" for config, values in sorted(row.peer.items()))
            lines.append(f"- {row.key}: {configs}")
    not_peered = [row for row in rows if row.peer_not_measured]
    if not_peered:
        lines += ["", "rclone not measured:", ""]
        lines += [f"- {row.key}: {row.peer_not_measured}." for row in not_peered]
    missed = [row for row in rows if row.verdict() == "MISSED"]
    unmeasured = [row for row in rows if row.not_measured]
    if missed or unmeasured:
        lines += ["", "## Goals missed, and what would close them", ""]
        for row in missed:
            note = MISSED_NOTES.get(row.key, "No analysis written for this row yet.")
            against = [f"{ratio_text(row.ratios)}, goal {row.goal.text()}" if row.goal else ""]
            if row.behind_peer():
                against.append(f"{ratio_text(row.peer_ratios)} of rclone ({row.best_peer()[0]})")
            lines += [f"**{row.key} — {row.what}** ({'; '.join(part for part in against if part)}). {note}", ""]
        for row in unmeasured:
            lines += [f"**{row.key} — {row.what}**: not measured: {row.not_measured}.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


# ---- main ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_RUNS} run per row, {QUICK_UPLOAD_MB} MB upload"
    )
    parser.add_argument("--only", help=f"comma-separated benchmark numbers ({GROUPS[0]}-{GROUPS[-1]}) to run")
    parser.add_argument("--runs", type=int, help=f"repetitions per row (default {FULL_RUNS}, quick {QUICK_RUNS})")
    parser.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"), help="report to write")
    parser.add_argument("--work-dir", help="scratch folder (default: a new temporary folder, removed after)")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=LATENCY_MS,
        help="delay the fake XNAT (and the static server for rclone) adds per request",
    )
    parser.add_argument(
        "--rclone",
        default=",".join(RCLONE_CONFIGS),
        help=f"rclone mount configurations to compare with, comma-separated from "
        f"{', '.join(RCLONE_CONFIGS)}; 'none' for no rclone",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        args.only = {int(part) for part in args.only.split(",")} if args.only else set(GROUPS)
    except ValueError:
        parser.error("--only takes numbers such as 1,4")
    if not args.only <= set(GROUPS):
        parser.error(f"--only takes numbers from {GROUPS[0]} to {GROUPS[-1]}")
    args.rclone = [] if args.rclone == "none" else [part for part in args.rclone.split(",") if part]
    if not set(args.rclone) <= set(RCLONE_CONFIGS):
        parser.error(f"--rclone takes configurations from {', '.join(RCLONE_CONFIGS)}, or none")
    args.runs = args.runs or (QUICK_RUNS if args.quick else FULL_RUNS)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def skip_peer(rows: dict[str, Row], reason: str) -> None:
    for key in PEER_ROWS:
        rows[key].peer_not_measured = reason


def isolate_environment(work: Path) -> None:
    """Mount records, config and logs of the benchmark's daemons stay in the work folder."""
    for variable, folder in (("XDG_STATE_HOME", "state"), ("XDG_CONFIG_HOME", "config")):
        (work / folder).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(work / folder)
    os.environ["XNAT_USER"] = USER
    os.environ["XNAT_PASS"] = PASSWORD


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    for tool in ("curl", "unzip", "dcm2niix", "fusermount3", "find"):
        if shutil.which(tool) is None:
            logger.error("%s is not installed (make system-deps)", tool)
            return 2
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="xnatfs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    isolate_environment(work)
    info = machine(work)
    upload_mb = QUICK_UPLOAD_MB if args.quick else FULL_UPLOAD_MB
    rows = make_rows(upload_mb)
    logger.info("starting the fake XNAT with the large sample in %s", work / "server")
    server = ServerHost(work / "server", args.latency_ms)
    rclone_configs = list(args.rclone)
    for row in rows.values():
        row.peer_not_measured = RCLONE_SKIPPED.get(row.key, "")
    if rclone_configs and shutil.which("rclone") is None:
        logger.warning("rclone is not installed (make bench installs it): no rclone column")
        skip_peer(rows, "rclone is not installed")
        rclone_configs = []
    elif not rclone_configs:
        skip_peer(rows, "left out with --rclone none")
    bench = Bench(work, server, args.runs, upload_mb, rclone_configs)
    try:
        server.start()
        logger.info("fake XNAT at %s (%g ms per request)", server.url, args.latency_ms)
        if rclone_configs and args.only & {ROW_GROUP[key] for key in PEER_ROWS}:
            try:
                bench.start_peer()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                logger.exception("the static server for rclone did not start")
                skip_peer(rows, f"its static server did not start: {exc}")
                bench.rclone_configs = []
        groups: list[tuple[set[int], Callable[[], None]]] = [
            ({1, 2, 3}, lambda: bench_series(bench, rows, args.only)),
            ({4}, lambda: bench_big_file(bench, rows)),
            ({5}, lambda: bench_listing(bench, rows)),
            ({5}, lambda: bench_walk(bench, rows)),
            ({6}, lambda: bench_upload(bench, rows)),
            ({6}, lambda: bench_many_files(bench, rows)),
            ({7}, lambda: bench_bids(bench, rows)),
            ({8}, lambda: bench_scale_walks(bench, rows)),
            ({9}, lambda: bench_big_series(bench, rows)),
            ({10}, lambda: bench_parallel_readers(bench, rows)),
        ]
        failed: dict[str, str] = {}
        for numbers, run_group in groups:
            if not numbers & args.only:
                continue
            untouched = {key for key, row in rows.items() if ROW_GROUP[key] in numbers and not row.measured}
            try:
                run_group()
            except (OSError, RuntimeError, subprocess.SubprocessError, requests.RequestException) as exc:
                logger.exception("benchmark %s failed", ",".join(map(str, sorted(numbers & args.only))))
                failed.update((key, f"the benchmark failed: {exc}") for key in untouched)
        for key, reason in failed.items():
            if not rows[key].measured:  # a later group of the same number may have measured it
                rows[key].not_measured = reason
    finally:
        if bench.static is not None:
            bench.static.stop()
        server.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    chosen = [row for row in rows.values() if ROW_GROUP[row.key] in args.only]
    for row in chosen:
        if not row.measured and not row.not_measured:
            row.not_measured = "no run completed"
    print("\n".join(table_lines(chosen, markdown=False)))
    settings = {
        "server": f"fake XNAT (xnatfs.fake), sample size large, {args.latency_ms:g} ms added to every request, "
        "127.0.0.1, Range not honoured (but in row 4e)",
        "mount": f"`xnatfs mount` daemon, --ttl {TTL:g}, default cache size, a fresh cache folder per cold run",
        "cold runs": "fresh mount and empty cache"
        + (
            ", page cache dropped (echo 3 > /proc/sys/vm/drop_caches)"
            if bench.can_drop_caches
            else "; page cache NOT dropped"
        ),
        "code": f"xnatfs at {code_revision()}",
        "runs per row": str(args.runs) + (" (--quick)" if args.quick else ""),
        "reading": "files read in name order with 1 MiB reads, as a tool reading a series does",
        "dcm2niix": "`dcm2niix -z n -o OUT -f %s_%d DIR`",
        "rclone": (
            f"{_first_line(['rclone', 'version'])}, `rclone mount` of `scripts/static_files.py` (a static "
            f"HTTP/WebDAV server of a copy of {PROJECT}'s tree on local disk, the same {args.latency_ms:g} "
            "ms added to every request, Range honoured), --dir-cache-time and --attr-timeout "
            f"{TTL:g}s, --read-only; configurations {', '.join(bench.rclone_configs)}; a fresh mount and "
            "cache folder per cold run"
            if bench.rclone_configs
            else "not run"
        ),
    }
    info["load average at the end (1, 5, 15 min)"] = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    write_report(Path(args.out), chosen, info, settings, bench, started_at, seconds)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
