"""``xnatfs prefetch PATH...``: warm the cache for a subtree of a mount.

Meant for a compute node before a pipeline runs: every regular file under
the given paths is read once, through the mount, to the end. The mount keeps
what it downloads in its content cache, so the pipeline's later reads cost
no request. Sizes come from ``stat`` (answered from listings, nothing is
downloaded for them), which gives the progress bar its total.

Files are read in path order by a small thread pool: neighbours in a series
are requested close together, which suits a mount that fetches a whole
series at once, and several downloads overlap the network's latency.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
DEFAULT_JOBS = 8
ERRORS_SHOWN = 20


@dataclass(frozen=True)
class FileToRead:
    path: str
    size: int


@dataclass(frozen=True)
class PrefetchError:
    path: str
    message: str


@dataclass
class PrefetchReport:
    """What a prefetch did: files and bytes read, how long it took, what failed."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[PrefetchError] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.interrupted

    @property
    def rate(self) -> float:
        """Bytes per second over the whole run."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"prefetched {self.files} files, {human_bytes(self.bytes)} in {self.seconds:.1f} s "
            f"({human_bytes(self.rate)}/s), {len(self.errors)} error{'' if len(self.errors) == 1 else 's'}"
        )
        return text + (" (interrupted)" if self.interrupted else "")


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def xnatfs_mountpoints() -> list[str]:
    """Mount points of xnatfs file systems in this namespace (read from mountinfo)."""
    points = []
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                before, _, after = line.partition(" - ")
                fields = before.split()
                if len(fields) > 4 and after.split(" ", 1)[0] == "fuse.xnatfs":
                    points.append(fields[4].replace("\\040", " ").replace("\\134", "\\"))
    except OSError:
        pass
    return points


def inside_xnatfs(path: str, mountpoints: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == point or real.startswith(point.rstrip("/") + "/") for point in mountpoints)


def collect_files(paths: list[str], errors: list[PrefetchError]) -> list[FileToRead]:
    """Every regular file under ``paths`` with its size, sorted by path, each once.

    Symbolic links are not followed and special files are skipped: neither
    is something a mount keeps in its cache. Anything that cannot be listed
    or stat'ed is added to ``errors``.
    """
    found: dict[str, int] = {}

    def visit_directory(top: str) -> None:
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError as exc:
                            errors.append(PrefetchError(entry.path, _reason(exc)))
                            continue
                        if stat.S_ISDIR(info.st_mode):
                            pending.append(entry.path)
                        elif stat.S_ISREG(info.st_mode):
                            found[entry.path] = info.st_size
            except OSError as exc:
                errors.append(PrefetchError(directory, _reason(exc)))

    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            errors.append(PrefetchError(path, _reason(exc)))
            continue
        if stat.S_ISDIR(info.st_mode):
            visit_directory(os.path.normpath(path))
        elif stat.S_ISREG(info.st_mode):
            found[os.path.normpath(path)] = info.st_size
        else:
            errors.append(PrefetchError(path, "not a regular file or directory"))
    return [FileToRead(path, size) for path, size in sorted(found.items())]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Progress:
    """A byte-counting bar with the file count beside it; safe to update from many threads."""

    def __init__(self, total_bytes: int, total_files: int, enabled: bool):
        self._lock = threading.Lock()
        self._files_done = 0
        self._total_files = total_files
        self._bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="prefetch",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._bar.set_postfix_str(f"0/{total_files} files", refresh=False)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self._bar.update(count)

    def file_done(self) -> None:
        with self._lock:
            self._files_done += 1
            self._bar.set_postfix_str(f"{self._files_done}/{self._total_files} files", refresh=False)

    def close(self) -> None:
        with self._lock:
            self._bar.refresh()
            self._bar.close()


def read_whole_file(item: FileToRead, progress: _Progress, stop: threading.Event) -> int:
    """Read ``item`` to its end, discarding the bytes; returns how many were read.

    A file that yields fewer or more bytes than ``stat`` said raises OSError:
    the listing and the contents disagree, which a pipeline would trip over.
    """
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    with open(item.path, "rb", buffering=0) as handle:
        while not stop.is_set():
            count = handle.readinto(view)
            if not count:
                break
            total += count
            progress.add_bytes(count)
    if not stop.is_set() and total != item.size:
        raise OSError(f"read {total} bytes, but its size is {item.size}")
    return total


def run_prefetch(paths: list[str], *, jobs: int = DEFAULT_JOBS, progress: bool = True) -> PrefetchReport:
    """Read every file under ``paths`` once so that the mount caches it.

    Never raises for a file that cannot be read: each failure becomes an
    entry of the report's ``errors``. Ctrl-C stops the readers after their
    current chunk and returns a report marked ``interrupted``.
    """
    started = time.monotonic()
    report = PrefetchReport()
    mountpoints = xnatfs_mountpoints()
    for path in paths:
        if os.path.exists(path) and not inside_xnatfs(path, mountpoints):
            logger.warning("%s is not inside an xnatfs mount; reading it caches nothing", path)
    files = collect_files(paths, report.errors)
    total_bytes = sum(item.size for item in files)
    logger.info("prefetching %d files, %d bytes, with %d readers", len(files), total_bytes, jobs)

    bar = _Progress(total_bytes, len(files), progress)
    stop = threading.Event()
    lock = threading.Lock()

    def read_one(item: FileToRead) -> None:
        if stop.is_set():
            return
        try:
            count = read_whole_file(item, bar, stop)
        except OSError as exc:
            logger.debug("cannot read %s: %s", item.path, exc)
            with lock:
                report.errors.append(PrefetchError(item.path, _reason(exc)))
            return
        if stop.is_set():
            return
        bar.file_done()
        with lock:
            report.files += 1
            report.bytes += count

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="prefetch")
    try:
        for future in [pool.submit(read_one, item) for item in files]:
            future.result()
    except KeyboardInterrupt:
        stop.set()
        report.interrupted = True
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        pool.shutdown(wait=True)
        bar.close()
    report.seconds = time.monotonic() - started
    return report


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders inside an xnatfs mount")
    parser.add_argument(
        "-j", "--jobs", type=int, default=DEFAULT_JOBS, help=f"files read at the same time (default {DEFAULT_JOBS})"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    """Run ``xnatfs prefetch``; 0 when every file was read, 1 otherwise."""
    if args.jobs < 1:
        print("xnatfs: --jobs must be at least 1", file=sys.stderr)
        return 2
    report = run_prefetch(args.paths, jobs=args.jobs, progress=not args.quiet and sys.stderr.isatty())
    for error in report.errors[:ERRORS_SHOWN]:
        print(f"xnatfs: {error.path}: {error.message}", file=sys.stderr)
    if len(report.errors) > ERRORS_SHOWN:
        print(f"xnatfs: ... and {len(report.errors) - ERRORS_SHOWN} more errors", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1
