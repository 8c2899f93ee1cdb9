"""Durable staging of writes until XNAT has them.

Everything a user writes under the mount lands in the spool first; only
after the server confirmed an upload is it removed. Layout (0700, files 0600)::

    data/<id>          the bytes, written by the file system
    records/<id>.json  what to do with them, and how far it got

An entry's life: ``open`` (being written) → ``pending`` (closed, waiting to
be sent) → removed once sent, or ``failed`` (the server was unreachable or
failed; retried later), or ``refused`` (the server said the request itself
is wrong, a client error that sending it again cannot change: kept, with the
server's reason, and never sent again until a user releases it with
``xnatfs uploads retry ID`` or drops it). Records are replaced atomically,
so after a crash each one is either the old or the new version.

Closing a file waits for its upload, so until the server has the bytes
nobody has been told they are safe, and a process killed meanwhile loses
nothing: the kernel keeps what it wrote. Entries on their way are therefore
written without any fsync. Only when an upload fails, and the bytes are left
to wait here, is the entry *sealed*: data, record and folders are fsynced,
and the record notes the size and MD5 of the data. A power loss can still
bring back a record whose bytes were never made durable, or lose bytes a
sealed record describes; neither is ever sent on its own:

- a sealed entry is sent only while its bytes have the recorded size and
  MD5; otherwise it stays ``failed``, with the reason;
- an unsealed record carries the boot ID of the machine that wrote it.
  Found after that machine restarted, its bytes cannot be trusted and it is
  set aside as ``unclosed`` (below). After a mere process crash the boot ID
  is the same and the bytes, from the kernel, are complete.

Who may touch an entry is settled with an exclusive ``flock`` on its data
file: the writer holds it while the entry is open, an uploader while sending.
An ``open`` record whose data file nobody holds belonged to a process that
died while the file was open. What it holds may be only the start of the
file, so sending it could replace a complete copy on the server with a
partial one: it becomes ``unclosed``, kept (nothing written is lost) but
never sent on its own. One with nothing written is dropped: empty, or still
the copy of the server's file it was filled with (``copy_of``).

Records hold no credentials: the server is kept as a URL without any
``user:password@`` part.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from xnatfs.cache.files import fsync_dir, make_private_dir, try_lock_exclusive, write_atomic
from xnatfs.errors import redact_url

logger = logging.getLogger(__name__)

UPLOAD_KINDS = ("file", "dicom-import")
STATES = ("open", "pending", "failed", "unclosed", "refused")
WAITING_STATES = ("pending", "failed")
_ID_PATTERN = re.compile(r"^[0-9]{20}-[0-9a-f]{8}$")
_LAST_ERROR_LIMIT = 2000
_STALE_TEMP_SECONDS = 3600
_DIGEST_CHUNK = 1 << 20
_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def current_boot_id() -> str:
    """Names this run of the machine; empty where the kernel does not say."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


def data_digest(path: Path) -> tuple[int, str]:
    """Size and MD5 (hex) of a staging file's bytes."""
    with open(path, "rb", buffering=0) as source:
        return descriptor_digest(source.fileno())


def descriptor_digest(fd: int) -> tuple[int, str]:
    """Size and MD5 (hex) of all the bytes ``fd`` reads, whatever its offset."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    while chunk := os.pread(fd, _DIGEST_CHUNK, size):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def normalize_server(url: str) -> str:
    """The form a server URL is stored and compared in: no credentials, no trailing slash."""
    return (redact_url(url) or "").rstrip("/")


@dataclass(frozen=True)
class UploadTarget:
    """Where staged bytes go on the server."""

    kind: str  # "file" (resource file upload) or "dicom-import" (zip to the import service)
    resource_uri: str = ""  # kind "file": e.g. /data/experiments/XNAT_E00001/resources/QC
    relpath: str = ""  # kind "file": path inside the resource
    project: str = ""  # kind "dicom-import"
    subject: str = ""
    experiment: str = ""
    server: str = ""  # base URL the upload belongs to

    def __post_init__(self) -> None:
        if self.kind not in UPLOAD_KINDS:
            raise ValueError(f"unknown upload kind {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "file":
            return f"{self.resource_uri}/files/{self.relpath}"
        return f"DICOM import into {self.project}/{self.subject}/{self.experiment}"


@dataclass
class SpoolEntry:
    """One staged upload. ``data_path`` is the file the writer fills."""

    id: str
    target: UploadTarget
    data_path: Path
    state: str = "open"
    attempts: int = 0
    last_error: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    boot_id: str = ""  # the machine run that last wrote the record without fsync
    data_size: int = 0  # once sealed (see the module notes): the bytes to send...
    data_md5: str = ""  # ...and their MD5; empty while not sealed
    copy_of: str = ""  # the MD5 of the server's file it was filled from, if it was

    @property
    def sealed(self) -> bool:
        return bool(self.data_md5)

    @property
    def size(self) -> int:
        try:
            return self.data_path.stat().st_size
        except FileNotFoundError:
            return 0


class UploadSpool:
    """The spool folder. Methods block; safe from several threads and processes."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory).expanduser().resolve()
        make_private_dir(self.directory)
        self._data_dir = make_private_dir(self.directory / "data")
        self._records_dir = make_private_dir(self.directory / "records")
        self._writers: dict[str, int] = {}  # open entries of this process → locked fd
        self._lock = threading.Lock()
        self._remove_orphans()

    def create(self, target: UploadTarget, *, copy_of: str = "") -> SpoolEntry:
        """A new, empty staging file and its record, in state ``open``; ``copy_of``: the MD5
        of the server's file the writer fills it with, before anything is written to it."""
        target = replace(target, server=normalize_server(target.server))
        entry_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        entry = SpoolEntry(entry_id, target, self._data_dir / entry_id, copy_of=copy_of.lower())
        # The data file exists before its record, so a crash in between leaves
        # an orphan file (removed on start), never a record without data.
        fd = os.open(entry.data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._save(entry, durable=False)
        except BaseException:
            os.close(fd)
            os.unlink(entry.data_path)
            raise
        with self._lock:
            self._writers[entry_id] = fd
        logger.debug("spool entry %s created for %s", entry_id, target.describe())
        return entry

    def commit(self, entry: SpoolEntry) -> None:
        """The writer is done: state ``pending``, ready to send.

        Not made durable (see the module notes): the caller sends it next,
        and if that fails the entry is sealed.
        """
        with self._lock:
            fd = self._writers.pop(entry.id, None)
        if fd is None:
            try:
                fd = os.open(entry.data_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if self.get(entry.id) is None:
                    return  # committed and sent already
                raise
        try:
            entry.state = "pending"
            entry.updated = time.time()
            self._save(entry, durable=False)
        finally:
            os.close(fd)

    def retarget(self, entry: SpoolEntry, target: UploadTarget) -> bool:
        """Send the entry's bytes under ``target`` instead (a rename of the file).

        The record is replaced atomically, so after a crash it names either
        the old or the new target, never both. A committed entry is claimed
        first, so an upload of it under way finishes before the change.
        False when the entry was sent (under its old target) meanwhile.
        """
        target = replace(target, server=normalize_server(target.server))
        with self._lock:
            writing = entry.id in self._writers
        if writing:
            self._save_target(entry, target)
            return True
        with self.claim(entry) as current:
            if current is None:
                return False
            self._save_target(current, target)
        entry.target = target
        return True

    def _save_target(self, entry: SpoolEntry, target: UploadTarget) -> None:
        entry.target = target
        entry.updated = time.time()
        # A sealed record stays durable; an unsealed one is vouched for by this boot.
        self._save(entry, durable=entry.sealed)

    def seal(self, entry: SpoolEntry) -> None:
        """Make a committed entry survive a power loss, if it is still here
        and not sealed yet: its bytes are going to wait in the spool."""
        with self.claim(entry) as current:
            # Bytes from before a restart are not vouched for (see check()).
            if current is not None and not current.sealed and not self._from_earlier_boot(current):
                self._seal(current)
                entry.data_size, entry.data_md5 = current.data_size, current.data_md5

    def check(self, entry: SpoolEntry) -> str:
        """Why the entry's bytes must not be sent, or "" when they may be.
        The caller holds the entry (:meth:`claim`)."""
        if entry.sealed:
            try:
                size, md5 = data_digest(entry.data_path)
            except FileNotFoundError:
                size, md5 = 0, "(no data file)"
            if (size, md5) != (entry.data_size, entry.data_md5):
                return (
                    f"the spooled bytes ({size} bytes, MD5 {md5}) are not the ones recorded "
                    f"({entry.data_size} bytes, MD5 {entry.data_md5}), probably after a power loss; "
                    "not sent"
                )
        elif self._from_earlier_boot(entry):
            return (
                "the spooled bytes were not made durable before the machine restarted and may be incomplete; not sent"
            )
        return ""

    def pending(self, server: str | None = None) -> list[SpoolEntry]:
        """Entries waiting to be sent (``pending`` or ``failed``), oldest first.

        ``open`` entries left by a process that died are set aside here
        (see the module notes).
        """
        return self._entries(server, WAITING_STATES)

    def unclosed(self, server: str | None = None) -> list[SpoolEntry]:
        """Entries whose writer stopped before closing them, oldest first: kept, never sent on their own."""
        return self._entries(server, ("unclosed",))

    def refused(self, server: str | None = None) -> list[SpoolEntry]:
        """Entries the server refused for good, oldest first: kept, never sent on their own."""
        return self._entries(server, ("refused",))

    def _entries(self, server: str | None, states: tuple[str, ...]) -> list[SpoolEntry]:
        wanted = normalize_server(server) if server is not None else None
        entries = []
        for record in sorted(self._records_dir.glob("*.json")):
            entry = self._load(record)
            if entry is None:
                continue
            if entry.state == "open" or (entry.state in WAITING_STATES and self._from_earlier_boot(entry)):
                self._set_aside(entry)
                entry = self._load(record)
                if entry is None:
                    continue
            if entry.state not in states:
                continue
            if wanted is not None and entry.target.server != wanted:
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (e.created, e.id))
        return entries

    def release(self, entry: SpoolEntry) -> bool:
        """Let an ``unclosed`` or ``refused`` entry be sent like any other (a
        user's decision: an unclosed entry's bytes may be only the start of
        the file; what the server refused may have been fixed there). False
        when it is in neither state any more, or busy."""
        fd = try_lock_exclusive(entry.data_path)
        if fd is None:
            return False
        try:
            current = self.get(entry.id)
            if current is None or current.state not in ("unclosed", "refused"):
                return False
            current.state = "pending"
            current.updated = time.time()
            self._save(current, durable=True)
        finally:
            os.close(fd)
        entry.state, entry.updated = current.state, current.updated
        logger.info("upload %s (%s) released for sending", entry.id, entry.target.describe())
        return True

    def discard(self, entry: SpoolEntry) -> bool:
        """Drop an entry and its bytes without sending them (a user's decision).
        False when it is being written or sent right now (or already gone)."""
        with self._lock:
            if entry.id in self._writers:
                return False
        fd = try_lock_exclusive(entry.data_path)
        if fd is None:
            if entry.data_path.exists() or self.get(entry.id) is None:
                return False
            self.remove(entry)  # a record whose bytes are gone already
            return True
        try:
            current = self.get(entry.id)
            if current is None:
                return False
            self.remove(current)
        finally:
            os.close(fd)
        logger.warning("upload %s (%s) discarded unsent", entry.id, entry.target.describe())
        return True

    def withdraw(self, entry: SpoolEntry) -> bool:
        """Drop an entry whose file was removed or replaced (through the mount) before it was sent.

        An upload of it under way, in this process or another (``xnatfs uploads
        retry``), ends first. False when it was sent already: the server holds it.
        """
        with self._lock:
            writing = entry.id in self._writers
        if writing:
            # Nobody sends an entry while it is being written.
            self.remove(entry)
            return True
        with self.claim(entry) as current:
            if current is None:
                return False
            self.remove(current)
        return True

    def get(self, entry_id: str) -> SpoolEntry | None:
        if not _ID_PATTERN.match(entry_id):
            return None
        return self._load(self._record_path(entry_id))

    def record_failure(self, entry: SpoolEntry, error: str, *, seal: bool = True, refused: bool = False) -> None:
        """A failed attempt, recorded durably: ``failed``, or ``refused`` when
        sending it again cannot help. With ``seal`` (the caller holds the
        entry and trusts its bytes) an unsealed entry is sealed too."""
        entry.attempts += 1
        entry.last_error = error[:_LAST_ERROR_LIMIT]
        entry.state = "refused" if refused else "failed"
        entry.updated = time.time()
        if not (seal and not entry.sealed):
            self._save(entry, durable=True)
            return
        try:
            self._seal(entry)
        except FileNotFoundError:
            # Discarded while it was being sent (rm of a file on its way): nothing left to keep.
            logger.info("upload %s (%s) was discarded while being sent", entry.id, entry.target.describe())

    def remove(self, entry: SpoolEntry) -> None:
        """Forget an entry the server has confirmed."""
        # The record goes first: a crash in between leaves an orphan data
        # file, which nobody would upload again. Only a sealed record could
        # come back after a power loss and be sent twice; an unsealed one
        # would come back from an earlier boot, which is never sent.
        current = entry if entry.sealed else self.get(entry.id)
        try:
            os.unlink(self._record_path(entry.id))
        except FileNotFoundError:
            pass
        if current is not None and current.sealed:
            fsync_dir(self._records_dir)
        try:
            os.unlink(entry.data_path)
        except FileNotFoundError:
            pass
        with self._lock:
            fd = self._writers.pop(entry.id, None)
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def claim(self, entry: SpoolEntry, *, wait: bool = True) -> Iterator[SpoolEntry | None]:
        """Hold the entry exclusively (against other threads and processes)
        for sending it. Yields the entry as its record now stands, or None
        when it is gone (someone else sent it) or, with ``wait=False``, busy."""
        with self._lock:
            if entry.id in self._writers:
                raise ValueError(f"spool entry {entry.id} is still being written")
        fd = self._lock_data(entry.data_path, wait)
        if fd is None:
            yield None
            return
        try:
            current = self.get(entry.id)
            if current is not None and current.state == "open":
                current.state = "pending"  # its writer died; we hold its lock now
            yield current
        finally:
            os.close(fd)

    # -- records ------------------------------------------------------------

    def _record_path(self, entry_id: str) -> Path:
        return self._records_dir / f"{entry_id}.json"

    def _save(self, entry: SpoolEntry, *, durable: bool) -> None:
        if entry.state not in STATES:
            raise ValueError(f"unknown spool state {entry.state!r}")
        if not durable:
            entry.boot_id = current_boot_id()
        record = {
            "id": entry.id,
            "state": entry.state,
            "attempts": entry.attempts,
            "last_error": entry.last_error,
            "created": entry.created,
            "updated": entry.updated,
            "boot_id": entry.boot_id,
            "data_size": entry.data_size,
            "data_md5": entry.data_md5,
            "copy_of": entry.copy_of,
            "target": asdict(entry.target),
        }
        write_atomic(self._record_path(entry.id), json.dumps(record, indent=1).encode(), durable=durable)

    def _seal(self, entry: SpoolEntry, digest: tuple[int, str] | None = None) -> None:
        """Data, its folder entry and the record with the data's size and
        MD5 (``digest``, when the caller worked it out already) made durable,
        in that order (the caller holds the entry)."""
        fd = os.open(entry.data_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self._data_dir)
        entry.data_size, entry.data_md5 = digest or data_digest(entry.data_path)
        self._save(entry, durable=True)

    @staticmethod
    def _from_earlier_boot(entry: SpoolEntry) -> bool:
        """An unsealed record written before the machine last started."""
        return not entry.sealed and bool(entry.boot_id) and entry.boot_id != current_boot_id()

    def _load(self, path: Path) -> SpoolEntry | None:
        try:
            record = json.loads(path.read_bytes())
            entry_id = record["id"]
            if not _ID_PATTERN.match(entry_id) or record["state"] not in STATES:
                raise ValueError("malformed record")
            return SpoolEntry(
                id=entry_id,
                target=UploadTarget(**record["target"]),
                data_path=self._data_dir / entry_id,
                state=record["state"],
                attempts=int(record["attempts"]),
                last_error=str(record["last_error"]),
                created=float(record["created"]),
                updated=float(record["updated"]),
                # Records without these come from versions that fsynced every record.
                boot_id=str(record.get("boot_id", "")),
                data_size=int(record.get("data_size", 0)),
                data_md5=str(record.get("data_md5", "")),
                copy_of=str(record.get("copy_of", "")),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable spool record %s: %s", path, exc)
            return None

    def _set_aside(self, entry: SpoolEntry) -> None:
        """Mark as ``unclosed`` (or drop when empty) an ``open`` entry whose
        writer has stopped, or a waiting one that was not sealed before the
        machine restarted. One whose writer or sender is alive is left alone."""
        with self._lock:
            if entry.id in self._writers:
                return
        if not entry.data_path.exists():
            logger.warning("spool entry %s lost its data file; dropping its record", entry.id)
            self.remove(entry)
            return
        fd = try_lock_exclusive(entry.data_path)
        if fd is None:
            return
        try:
            current = self._load(self._record_path(entry.id))
            if current is None:
                return
            if current.state == "open":
                why = "was still being written when its process stopped"
            elif current.state in WAITING_STATES and self._from_earlier_boot(current):
                why = "was not made durable before the machine restarted"
            else:
                return
            if os.fstat(fd).st_size == 0:
                logger.warning(
                    "dropping upload %s (%s): left empty by a stopped process", current.id, current.target.describe()
                )
                self.remove(current)
                return
            digest = data_digest(current.data_path) if current.state == "open" and current.copy_of else None
            if digest is not None and digest[1] == current.copy_of:
                logger.info(
                    "dropping upload %s (%s): opened for writing by a stopped process, nothing written",
                    current.id,
                    current.target.describe(),
                )
                self.remove(current)
                return
            current.state = "unclosed"
            current.updated = time.time()
            self._seal(current, digest)
        finally:
            os.close(fd)
        logger.warning(
            "upload %s (%s, %d bytes) %s; it may be incomplete, so it is kept in %s but not sent",
            current.id,
            current.target.describe(),
            current.size,
            why,
            current.data_path,
        )

    @staticmethod
    def _lock_data(path: Path, wait: bool) -> int | None:
        if not wait:
            return try_lock_exclusive(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _remove_orphans(self) -> None:
        """Data files without a record (a crash during create or remove) and
        record temp files of crashed writers."""
        records = {p.stem for p in self._records_dir.glob("*.json")}
        for path in self._data_dir.iterdir():
            if path.name in records:
                continue
            fd = try_lock_exclusive(path)
            if fd is None:
                continue
            try:
                if not self._record_path(path.name).exists():
                    os.unlink(path)
            finally:
                os.close(fd)
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for path in self._records_dir.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
