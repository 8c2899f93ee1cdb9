"""A differential test: random sequences of file operations on the mount and on a model.

Hypothesis drives mkdir / write / partial rewrite / rename / rm / rmdir / read /
listdir / remount on one resource of a real mount, and also changes the
server behind the mount's back (files added, replaced, also by another
version of the same size, and deleted through the fake server's store).
After every step the mount, the server and the model must agree; after a
change behind the mount's back, once the TTL has passed.
The resource is a session's, or a scan's: a scan resource is read as a
series, through its zip, the daemon's memory and the kernel's page cache.

The model of one resource folder:

- ``files``: path inside the resource → bytes; what the server must hold too;
- ``folders``: sub-folders made with mkdir in this mount session. A folder
  also exists while a file is in it; an empty one made with mkdir lives only
  in the mount, so it is gone after a remount;
- ``fading``: folders the server listed that just lost their last file
  through the mount; they may stay shown, empty, until the listing's TTL runs out;
- ``handles``: descriptors held open across steps, each on a :class:`Body`.
  A descriptor refers to the file, not to its name: a rename takes its body
  along, and a file renamed over or removed while open keeps its bytes for
  its descriptors only (never sent). The server is compared for every name
  no descriptor holds; a held name's bytes reach the server at its close.
  A held file renamed with writes not sent leaves its last closed version
  under the old name until that close (docs/SEMANTICS.md, open files);
- ``times``: each file's modification time when last checked. It changes
  only when the file is written, then never backwards; a rename keeps it.
  XNAT keeps no file times, so a change on the server may show another; a
  remount keeps the times of files whose bytes were last written through the
  mount (``ours``), and may show another for the rest (docs/LAYOUT.md).

A step may also meet a server that refuses every change (503 to PUT and
DELETE, which the mounts here do not retry): the write's close, the rename
and the rm then fail with EIO, and the model says what must be left once the
server takes changes again and ``xnatfs uploads retry`` has sent what waited
in the spool (the mount hears of it at once). Or a server that carries out
every change but answers too late, after the mount gave up (``TIMEOUT``): the
change fails with EIO or succeeds, and once answers come again the server
holds every byte written, and the mount shows what the server holds.

The daemon may also be killed (SIGKILL) with descriptors held open, and mounted
again: what was closed is on the server; what a held file had written since its
last close waits in the spool as ``unclosed``, with exactly those bytes, while
the server keeps that file's last closed version, also under the names it was
renamed away from meanwhile; ``xnatfs uploads retry --include-unclosed`` then
sends them, or ``xnatfs uploads discard`` drops them.

Failing sequences found so far are kept below as explicit regression tests.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import signal
import time
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mountutil import mounted, uploads
from test_reliability_common import write_config
from xnatfs.cache.spool import UploadSpool

pytestmark = [pytest.mark.mount, pytest.mark.slow]

TTL = 1.0
SETTLE = TTL + 0.4
# A change refused by the server, as its requests answer (see apply_refused_change).
REFUSED = r"HTTP 503|Service Unavailable|503"
# A change the server carries out but answers too late (see apply_stalled_change): the
# mount's requests give up after TIMEOUT seconds without an answer; the stall is longer.
TIMEOUT = 2.0
STALL = TIMEOUT + 1.0
STALLED = r"timed out|no answer|stalled"
EXPERIMENT = "XNAT_E00001"
SESSION = ("STUDY01", "SUB001", "SUB001_MR1")
SESSION_RESOURCES = (*SESSION, "RESOURCES")
NAMES = ("a.txt", "b.dcm", "c.nii.gz", "sub/d.txt", "sub/e.bin", "other/f.csv")
FOLDERS = ("sub", "other", "empty")
CONTENT = st.binary(min_size=1, max_size=3000)

_labels = itertools.count(1)


class Body:
    """What open descriptors refer to: a named file of the model, or the bytes
    of one that lost its name while they were open.

    ``sent``: what the server holds under its name (None: nothing); ``dirty``: written
    through a descriptor since its last close; ``left``: names it was renamed away from
    while dirty, each with what the server keeps there until its next close."""

    def __init__(self, name: str, sent: bytes | None):
        self.name: str | None = name
        self.orphan = b""
        self.sent = sent
        self.opened_with = sent  # what the mount may have copied for writing
        self.dirty = False
        self.left: dict[str, bytes | None] = {}

    def unlink(self, data: bytes) -> None:
        self.name, self.orphan = None, data
        self.left = {}

    def committed(self, data: bytes) -> None:
        self.sent, self.dirty, self.left = data, False, {}


class Handle:
    def __init__(self, fd: int, body: Body):
        self.fd = fd
        self.body = body


class MountMachine(RuleBasedStateMachine):
    """One example: a fresh resource on the shared fake server, its own mount."""

    scan: str | None = None  # the scan the resource belongs to; None: the session

    server = None  # set by the test: the FakeXnat
    base = None  # set by the test: a folder for mounts and the shared cache

    def __init__(self):
        super().__init__()
        self.label = f"SM{next(_labels)}"
        self.files: dict[str, bytes] = {}
        self.folders: set[str] = set()
        self.fading: dict[str, float] = {}
        self.mount = None
        self.mounts = 0
        self.steps_since_remount = 0
        self.handles: list[Handle] = []
        self.times: dict[str, int] = {}
        self.written: set[str] = set()  # since the last check
        self.ours: set[str] = set()  # files whose bytes were last written through the mount

    # ---- set-up and tear-down ---------------------------------------------

    def _mount(self) -> None:
        self.mounts += 1
        self._context = mounted(
            self.server.url,
            self.base,
            ttl=TTL,
            cache_dir=self.base / "cache",
            name=f"{self.label}-{self.mounts}",
            # A refused change fails at once, rather than after the retries' backoff.
            args=write_config(self.base / "config.toml", retries=0, timeout=TIMEOUT),
            expected_errors=(REFUSED, STALLED),
        )
        self.mount = self._context.__enter__()

    def _unmount(self) -> None:
        while self.handles:
            self.apply_close(0)
        self._leave_mount()

    def _leave_mount(self) -> None:
        """Unmount (a killed daemon's mount too) and check its log."""
        context, self._context, self.mount = self._context, None, None
        context.__exit__(None, None, None)

    @initialize()
    def start(self):
        self._mount()
        os.mkdir(self.resource_dir)

    def teardown(self):
        if getattr(self, "_context", None) is not None:
            self._unmount()
        pending = list((self.base / "cache" / "spool" / "records").glob("*.json"))
        assert pending == [], "uploads left in the spool"

    @property
    def resource_dir(self):
        if self.scan is None:
            return self.mount.path.joinpath(*SESSION_RESOURCES, self.label)
        scans = self.mount.path.joinpath(*SESSION, "SCANS")
        return next(p for p in scans.iterdir() if p.name.split("-", 1)[0] == self.scan) / self.label

    def server_state(self) -> dict[str, bytes]:
        store = self.server.store
        if self.scan is None:
            row = store.find_resource("experiment", EXPERIMENT, self.label)
        else:
            row = store.find_resource("scan", str(store.scan(EXPERIMENT, self.scan)["pk"]), self.label)
        if row is None:
            return {}
        return {f["path"]: store.file_path(row["id"], f["path"]).read_bytes() for f in store.files(row["id"])}

    def visible_folders(self) -> set[str]:
        return self.folders | {name.split("/", 1)[0] for name in self.files if "/" in name}

    def step(self) -> None:
        self.steps_since_remount += 1

    def forget_file(self, name: str) -> None:
        self.orphan_bodies(name)
        del self.files[name]
        self.times.pop(name, None)
        self.ours.discard(name)
        folder = self.folder_of(name)
        if folder is not None and folder not in self.visible_folders():
            self.fading[folder] = time.monotonic() + TTL + 0.5

    def bodies(self) -> list[Body]:
        return list({id(handle.body): handle.body for handle in self.handles}.values())

    def held_names(self) -> set[str]:
        return {body.name for body in self.bodies() if body.name is not None}

    def orphan_bodies(self, name: str) -> None:
        for body in self.bodies():
            if body.name == name:
                body.unlink(self.files[name])

    def body_data(self, body: Body) -> bytes:
        return self.files[body.name] if body.name is not None else body.orphan

    def body_for(self, name: str) -> Body:
        for body in self.bodies():
            if body.name == name:
                return body
        return Body(name, self.files[name])

    def held_body(self, name: str) -> Body | None:
        return next((body for body in self.bodies() if body.name == name), None)

    def left_names(self) -> dict[str, bytes | None]:
        """Old names of held files renamed while dirty → what the server keeps there."""
        return {old: kept for body in self.bodies() for old, kept in body.left.items()}

    def on_server(self, name: str) -> bytes | None:
        """What the server holds under ``name`` now, by the model."""
        body = self.held_body(name)
        if body is not None:
            return body.sent if body.dirty else self.files[name]
        if name in self.files:
            return self.files[name]
        return self.left_names().get(name)

    def folder_of(self, name: str) -> str | None:
        return name.split("/", 1)[0] if "/" in name else None

    def is_fading(self, folder: str | None) -> bool:
        return folder is not None and self.fading.get(folder, 0) > time.monotonic()

    # ---- operations (called by the rules and by the regression tests) ------

    def apply_write(self, name: str, data: bytes) -> None:
        folder = self.folder_of(name)
        path = self.resource_dir / name
        if folder is not None and folder not in self.visible_folders():
            try:
                path.write_bytes(data)
            except FileNotFoundError:
                return
            # Only a folder still shown from the last listing may take the file.
            assert self.is_fading(folder), f"wrote into {folder!r}, which should not exist"
        else:
            path.write_bytes(data)
        self.files[name] = data
        self.written.add(name)
        self.ours.add(name)
        self.commit(name)

    def commit(self, name: str) -> None:
        """A descriptor on ``name`` was closed: a file held open is sent as it is now."""
        body = self.held_body(name)
        if body is not None:
            body.committed(self.files[name])

    def apply_rewrite(self, name: str, offset: int, data: bytes) -> None:
        old = self.files[name]
        offset = min(offset, len(old))
        with open(self.resource_dir / name, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)
        self.files[name] = old[:offset] + data + old[offset + len(data) :]
        self.written.add(name)
        self.ours.add(name)
        self.commit(name)

    def apply_rename(self, old: str, new: str) -> None:
        folder = self.folder_of(new)
        source, target = self.resource_dir / old, self.resource_dir / new
        if folder is not None and folder not in self.visible_folders() and folder != self.folder_of(old):
            try:
                os.rename(source, target)
            except FileNotFoundError:
                return
            assert self.is_fading(folder), f"moved into {folder!r}, which should not exist"
        else:
            os.rename(source, target)
        if old != new:
            data = self.files[old]
            moving = [body for body in self.bodies() if body.name == old]
            # Whole, it is sent under the new name at once; with writes not sent, the server
            # keeps its last closed version under the old name until its close.
            for body in moving:
                if body.dirty:
                    body.left[old] = body.sent
                    body.sent = self.on_server(new)
                else:
                    body.sent = data
            if new in self.files:
                self.orphan_bodies(new)
            for body in moving:
                body.name = new
            time_before = self.times.get(old)
            was_written, was_ours = old in self.written, old in self.ours
            self.forget_file(old)
            self.files[new] = data
            self.times.pop(new, None)
            self.written.discard(new)
            self.ours.discard(new)
            if time_before is not None:
                self.times[new] = time_before
            if was_written:
                self.written.add(new)
            if was_ours:
                self.ours.add(new)

    def apply_remove(self, name: str) -> None:
        os.unlink(self.resource_dir / name)
        self.forget_file(name)

    def apply_mkdir(self, folder: str) -> None:
        if folder in self.visible_folders():
            with pytest.raises(FileExistsError):
                os.mkdir(self.resource_dir / folder)
            return
        try:
            os.mkdir(self.resource_dir / folder)
        except FileExistsError:
            # Still shown from the last listing: it goes away with the TTL.
            assert self.is_fading(folder), f"{folder!r} exists but should not"
            return
        self.folders.add(folder)

    def apply_rmdir(self, folder: str) -> None:
        path = self.resource_dir / folder
        if any(name.startswith(folder + "/") for name in self.files):
            with pytest.raises(OSError) as refused:
                os.rmdir(path)
            assert refused.value.errno == errno.ENOTEMPTY
            return
        if folder not in self.visible_folders():
            try:
                os.rmdir(path)
            except FileNotFoundError:
                return
            # A folder still shown from the last listing: rmdir may succeed, and it
            # stays shown until the TTL (see the regression test below).
            assert self.is_fading(folder), f"removed {folder!r}, which should not exist"
            return
        os.rmdir(path)
        self.folders.discard(folder)
        # If the server listed files in it lately, it may stay shown until the TTL.
        self.fading[folder] = time.monotonic() + TTL + 0.5

    def apply_remount(self) -> None:
        self._unmount()
        # An empty folder made with mkdir is only the mount's: it does not outlive it.
        self.folders = set()
        self.fading = {}
        self.times = {name: mtime for name, mtime in self.times.items() if name in self.ours}
        self._mount()
        self.steps_since_remount = 0

    def apply_kill(self, send_unclosed: bool) -> None:
        """SIGKILL of the daemon, descriptors held open, then a mount again. What was closed is
        on the server. A held file written since its last close waits in the spool, set aside
        as ``unclosed`` under its name with exactly the bytes written, while the server keeps
        what it held: the last closed version, also under the names the file was renamed away
        from meanwhile. ``send_unclosed``: those are then sent with ``xnatfs uploads retry
        --include-unclosed``; else dropped with ``xnatfs uploads discard``."""
        self.mount.process.send_signal(signal.SIGKILL)
        self.mount.process.wait(timeout=20)
        waiting = {
            body.name: self.files[body.name]
            for body in self.bodies()
            if body.name is not None and body.dirty and self.files[body.name] != body.opened_with
        }
        # A file opened for writing and not written since its last close may wait there too, as
        # it is; one written back to the bytes it was opened with need not (nothing is new).
        held = {name: self.files[name] for name in self.held_names()}
        kept = {}
        for body in self.bodies():
            if body.name is not None and body.dirty:
                kept.update({old: data for old, data in body.left.items() if old not in self.files})
                kept[body.name] = body.sent
        for handle in self.handles:
            try:
                os.close(handle.fd)
            except OSError as exc:
                assert exc.errno == errno.ENOTCONN, exc
        self.handles = []
        self._leave_mount()
        for name, data in kept.items():
            if data is not None:
                self.files[name] = data
            elif name in self.files:
                self.forget_file(name)
        self.folders, self.fading = set(), {}
        # Times reach the disk 5 s after a change: a kill may lose the last ones.
        self.times, self.ours = {}, set()
        # Looked at before the next mount does: whoever looks first sets the entries aside.
        unclosed = [
            entry
            for entry in UploadSpool(self.base / "cache" / "spool").unclosed()
            if entry.target.resource_uri.endswith(f"/resources/{self.label}")
        ]
        self._mount()
        self.steps_since_remount = 0
        found = {entry.target.relpath: entry.data_path.read_bytes() for entry in unclosed}
        assert len(found) == len(unclosed), "two unclosed uploads of one file"
        assert set(waiting) <= set(found), "what was written since the last close is not in the spool"
        for name, data in found.items():
            assert held.get(name) == data, f"{name}: the spool holds other bytes than were written"
        if send_unclosed:
            retried = uploads(
                self.mount,
                "retry",
                "--include-unclosed",
                XNAT_USER=self.server.username,
                XNAT_PASS=self.server.password,
            )
            assert retried.returncode == 0, retried.stderr
            for name, data in found.items():
                self.files[name] = data
                self.ours.add(name)
        else:
            for entry in unclosed:
                dropped = uploads(self.mount, "discard", entry.id, "--yes")
                assert dropped.returncode == 0, dropped.stderr
        time.sleep(SETTLE)

    def apply_open(self, name: str) -> None:
        fd = os.open(self.resource_dir / name, os.O_RDWR)
        self.handles.append(Handle(fd, self.body_for(name)))

    def apply_create(self, name: str, data: bytes) -> None:
        """A new file opened and written through a descriptor that stays open."""
        folder = self.folder_of(name)
        if name in self.files or (folder is not None and folder not in self.visible_folders()):
            return
        fd = os.open(self.resource_dir / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        body = Body(name, self.on_server(name))
        body.dirty, body.opened_with = True, None
        self.files[name] = data
        self.written.add(name)
        self.ours.add(name)
        self.handles.append(Handle(fd, body))

    def apply_fd_write(self, index: int, offset: int, data: bytes) -> None:
        handle = self.handles[index]
        old = self.body_data(handle.body)
        offset = min(offset, len(old))
        assert os.pwrite(handle.fd, data, offset) == len(data)
        new = old[:offset] + data + old[offset + len(data) :]
        if handle.body.name is not None:
            self.files[handle.body.name] = new
            self.written.add(handle.body.name)
            self.ours.add(handle.body.name)
            handle.body.dirty = True
        else:
            handle.body.orphan = new

    def apply_close(self, index: int) -> None:
        handle = self.handles.pop(index)
        os.close(handle.fd)
        if handle.body.name is not None:
            handle.body.committed(self.files[handle.body.name])

    def apply_server_put(self, name: str, data: bytes) -> None:
        self.server.store.put_file(EXPERIMENT, self.label, name, data, scan_id=self.scan)
        if name not in self.files and self.left_names().get(name) == data:
            # The very copy a held file left there: nothing tells it from what was there.
            time.sleep(SETTLE)
            return
        self.files[name] = data
        self.times.pop(name, None)
        self.ours.discard(name)
        time.sleep(SETTLE)

    def apply_server_delete(self, name: str) -> None:
        assert self.server.store.delete_file(EXPERIMENT, self.label, name, scan_id=self.scan)
        self.forget_file(name)
        time.sleep(SETTLE)

    def apply_refused_change(self, what: str, name: str, data: bytes, new: str, by_mount: bool = False) -> None:
        """``what`` (write, rewrite, rename to ``new``, remove) while the server refuses
        every change: it fails with EIO. What it wrote stays in the spool, and is sent
        once the server takes changes again (``by_mount``: by the mount's own retries,
        2-3 s later; else at once by ``xnatfs uploads retry``); a rename leaves both names
        (the old one could not be deleted); a removal removes nothing."""
        self.server.set_faults(error_rate=1.0, error_statuses=(503,), methods=("PUT", "DELETE"))
        try:
            with pytest.raises(OSError) as failed:
                self.change_through_the_mount(what, name, data, new)
        finally:
            self.server.set_faults()
        assert failed.value.errno == errno.EIO, failed.value
        self.model_change(what, name, data, new)
        self.send_what_waits(by_mount)

    def apply_stalled_change(self, what: str, name: str, data: bytes, new: str) -> None:
        """``what`` (as in :meth:`apply_refused_change`) while the server carries out every
        change but answers it only after the mount gave up: it fails with EIO or succeeds.
        The mount cannot know what the server did; once answers come again and the spool has
        sent what waited, the server holds every byte written and the new name of a rename;
        the old name, and a removed file, are there or not as the server says, and the mount
        shows the same within a TTL."""
        self.server.set_faults(stall_rate=1.0, stall_ms=STALL * 1000, methods=("PUT", "DELETE"))
        try:
            self.change_through_the_mount(what, name, data, new)
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
        finally:
            self.server.set_faults()
        time.sleep(STALL - TIMEOUT)  # the last stalled answer is out
        self.send_what_waits(by_mount=False)
        self.model_change(what, name, data, new)
        if what in ("rename", "remove") and name not in self.server_state():
            self.forget_file(name)
        time.sleep(SETTLE)

    def change_through_the_mount(self, what: str, name: str, data: bytes, new: str) -> None:
        path = self.resource_dir / name
        if what == "write":
            path.write_bytes(data)
        elif what == "rewrite":
            with open(path, "r+b") as handle:
                handle.write(data)
        elif what == "rename":
            os.rename(path, self.resource_dir / new)
        else:
            os.unlink(path)

    def model_change(self, what: str, name: str, data: bytes, new: str) -> None:
        """The model once a failed ``what`` was sent from the spool after all: the bytes
        written are the file's, a rename's new name holds the file (the old one stays)."""
        if what == "write":
            self.files[name] = data
            self.ours.add(name)
        elif what == "rewrite":
            self.files[name] = data + self.files[name][len(data) :]
            self.ours.add(name)
        elif what == "rename":
            self.files[new] = self.files[name]
            if name in self.ours:
                self.ours.add(new)
            else:
                self.ours.discard(new)
        for changed in (name, new):
            self.times.pop(changed, None)

    def send_what_waits(self, by_mount: bool) -> None:
        """Wait until the spool's uploads are sent: by the mount's next retry round, or now by
        ``xnatfs uploads retry`` (the mount may be sending some of them too)."""
        if not by_mount:
            retried = uploads(self.mount, "retry", XNAT_USER=self.server.username, XNAT_PASS=self.server.password)
            assert retried.returncode == 0, retried.stderr
        records = self.base / "cache" / "spool" / "records"
        deadline = time.monotonic() + 30
        while list(records.glob("*.json")):
            assert time.monotonic() < deadline, "the spool still holds uploads"
            time.sleep(0.1)

    # ---- rules ------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), data=CONTENT)
    def write(self, name, data):
        self.apply_write(name, data)
        self.step()

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), offset=st.integers(0, 4000), data=st.binary(min_size=1, max_size=500))
    def rewrite_part(self, choice, offset, data):
        self.apply_rewrite(choice.draw(st.sampled_from(sorted(self.files))), offset, data)
        self.step()

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), new=st.sampled_from(NAMES))
    def rename(self, choice, new):
        self.apply_rename(choice.draw(st.sampled_from(sorted(self.files))), new)
        self.step()

    @precondition(lambda self: self.files)
    @rule(choice=st.data())
    def remove(self, choice):
        self.apply_remove(choice.draw(st.sampled_from(sorted(self.files))))
        self.step()

    @rule(folder=st.sampled_from(FOLDERS))
    def mkdir(self, folder):
        self.apply_mkdir(folder)
        self.step()

    @rule(folder=st.sampled_from(FOLDERS))
    def rmdir(self, folder):
        self.apply_rmdir(folder)
        self.step()

    @precondition(lambda self: self.steps_since_remount >= 4)
    @rule()
    def remount(self):
        self.apply_remount()

    @precondition(lambda self: self.steps_since_remount >= 4)
    @rule(send_unclosed=st.booleans())
    def kill_and_mount_again(self, send_unclosed):
        self.apply_kill(send_unclosed)

    @rule(choice=st.data(), data=CONTENT, same_size=st.booleans())
    def server_puts(self, choice, data, same_size):
        # Not under an open descriptor: its close would overwrite the change, as intended.
        names = [name for name in NAMES if name not in self.held_names()]
        name = choice.draw(st.sampled_from(names))
        if same_size and name in self.files:
            # Another version of the same size (a header fixed in place): only its MD5 differs.
            data = bytes(byte ^ 0xFF for byte in self.files[name])
        self.apply_server_put(name, data)
        self.step()

    @precondition(lambda self: set(self.files) - self.held_names())
    @rule(choice=st.data())
    def server_deletes(self, choice):
        self.apply_server_delete(choice.draw(st.sampled_from(sorted(set(self.files) - self.held_names()))))
        self.step()

    @precondition(lambda self: self.files and len(self.handles) < 3)
    @rule(choice=st.data())
    def open_descriptor(self, choice):
        self.apply_open(choice.draw(st.sampled_from(sorted(self.files))))
        self.step()

    @precondition(lambda self: len(self.handles) < 3)
    @rule(name=st.sampled_from(NAMES), data=CONTENT)
    def create_through_descriptor(self, name, data):
        self.apply_create(name, data)
        self.step()

    @precondition(lambda self: self.handles)
    @rule(choice=st.data(), offset=st.integers(0, 4000), data=st.binary(min_size=1, max_size=500))
    def write_through_descriptor(self, choice, offset, data):
        self.apply_fd_write(choice.draw(st.integers(0, len(self.handles) - 1)), offset, data)
        self.step()

    @precondition(lambda self: self.handles)
    @rule(choice=st.data())
    def close_descriptor(self, choice):
        self.apply_close(choice.draw(st.integers(0, len(self.handles) - 1)))
        self.step()

    @precondition(lambda self: self.files and not self.handles)
    @rule(
        choice=st.data(),
        what=st.sampled_from(("write", "rewrite", "rename", "remove")),
        data=CONTENT,
        # Mostly refused and sent at once by the command: waiting for the mount's own retry
        # costs 2-3 s, a stall 4-5 s.
        how=st.sampled_from(("refused", "refused", "refused", "refused, sent by the mount", "stalled")),
    )
    def change_the_server_refuses_or_answers_late(self, choice, what, data, how):
        name = choice.draw(st.sampled_from(sorted(self.files)))
        # Into a folder that is there for sure: one just emptied may be shown or not.
        new = choice.draw(
            st.sampled_from([n for n in NAMES if n != name and self.folder_of(n) in self.visible_folders() | {None}])
        )
        if how == "stalled":
            self.apply_stalled_change(what, name, data, new)
        else:
            self.apply_refused_change(what, name, data, new, by_mount=how != "refused")
        self.step()

    # ---- what must always hold ------------------------------------------

    @invariant()
    def mount_server_and_model_agree(self):
        if self.mount is None:
            return
        held = self.held_names()
        left = {name: kept for name, kept in self.left_names().items() if name not in held and name not in self.files}
        server = self.server_state()
        on_server = {name: data for name, data in server.items() if name not in held and name not in left}
        assert on_server == {name: data for name, data in self.files.items() if name not in held}, (
            "the server does not hold what was written"
        )
        for name, kept in left.items():
            assert server.get(name) == kept, f"{name}: not what the server keeps until the renamed file's close"
        for handle in self.handles:
            expected = self.body_data(handle.body)
            assert os.pread(handle.fd, len(expected) + 10, 0) == expected, "a descriptor reads other bytes"
        top = set(os.listdir(self.resource_dir))
        expected_top = {name.split("/", 1)[0] for name in self.files} | self.folders
        now = time.monotonic()
        for extra in top - expected_top:
            assert self.fading.get(extra, 0) > now, f"{extra!r} is shown but should not be"
            assert os.listdir(self.resource_dir / extra) == [], f"{extra!r} should be empty"
        assert expected_top <= top, f"missing: {expected_top - top}"
        for folder in self.visible_folders():
            inside = sorted(os.listdir(self.resource_dir / folder))
            assert inside == sorted(n.split("/", 1)[1] for n in self.files if n.startswith(folder + "/"))
        for name, data in self.files.items():
            path = self.resource_dir / name
            status = path.stat()
            assert status.st_size == len(data), name
            before = self.times.get(name)
            if before is not None:
                if name in self.written:
                    assert status.st_mtime_ns >= before, f"{name}: written, and its time went back"
                else:
                    assert status.st_mtime_ns == before, f"{name}: its time changed, but nothing wrote it"
            self.times[name] = status.st_mtime_ns
            assert path.read_bytes() == data, name
            try:
                digest = os.getxattr(path, "user.xnat.digest").decode()
            except OSError as exc:  # a file of ours not listed by the server yet
                assert exc.errno == errno.ENODATA
            else:
                assert digest == hashlib.md5(data).hexdigest(), name
        self.written.clear()


# CI replays the same sequences every run, so a run's verdict is the code's;
# elsewhere every run explores new ones.
IN_CI = bool(os.environ.get("CI"))


class ScanMountMachine(MountMachine):
    """The same on a scan's resource: read as a series.

    Every example starts with files the server holds and the cache does not,
    so its first check reads them through the series zip, whatever steps follow."""

    scan = "2"
    started: ClassVar[list[str]] = []  # the resource of every example run

    @initialize(first=CONTENT, second=CONTENT)
    def start(self, first, second):
        self.started.append(self.label)
        for name, data in (("a.txt", first), ("sub/d.txt", second)):
            self.server.store.put_file(EXPERIMENT, self.label, name, data, scan_id=self.scan)
            self.files[name] = data
        self._mount()


def run_machine(server, base, *, examples: int, steps: int, machine: type[MountMachine] = MountMachine) -> None:
    machine.server = server
    machine.base = base
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=IN_CI,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        ),
    )


def test_random_operations_agree_with_the_model(fake_xnat, tmp_path):
    run_machine(fake_xnat, tmp_path, examples=8, steps=20)


def test_random_operations_on_a_scan_resource_agree_with_the_model(fake_xnat, tmp_path):
    fake_xnat.reset_counts()
    ScanMountMachine.started = []
    run_machine(fake_xnat, tmp_path, examples=6, steps=20, machine=ScanMountMachine)
    zipped = {
        label
        for label in ScanMountMachine.started
        for _m, target, _s in fake_xnat.requests
        if f"/resources/{label}/files" in target and "format=zip" in target
    }
    assert ScanMountMachine.started, "no example ran"
    assert zipped == set(ScanMountMachine.started), "a scan resource's files were never read as a series"


# ---- failing sequences found by the machine, kept as regression tests ----------


def replay(server, base, steps, *, machine_type: type[MountMachine] = MountMachine, start=()) -> None:
    """Run ``steps`` ((method name, args...) tuples) on a fresh machine, checking after each;
    ``start``: what its ``start`` takes (a scan's resource: the two files the server holds)."""
    machine_type.server = server
    machine_type.base = base
    machine = machine_type()
    try:
        machine.start(*start)
        machine.mount_server_and_model_agree()
        for name, *args in steps:
            getattr(machine, "apply_" + name)(*args)
            machine.mount_server_and_model_agree()
    finally:
        machine.teardown()


def replay_on_a_scan_resource(server, base, steps) -> None:
    """``replay`` on a scan's resource, whose server holds ``a.txt`` and ``sub/d.txt`` at the start."""
    replay(server, base, steps, machine_type=ScanMountMachine, start=(b"first", b"second"))


def test_regression_rmdir_after_moving_the_last_file_out(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [("mkdir", "sub"), ("write", "sub/e.bin", b"x"), ("rename", "sub/e.bin", "a.txt"), ("rmdir", "sub")],
    )


def test_regression_mkdir_where_a_server_folder_just_lost_its_last_file(fake_xnat, tmp_path):
    replay(fake_xnat, tmp_path, [("server_put", "sub/d.txt", b"\x00"), ("remove", "sub/d.txt"), ("mkdir", "sub")])


def test_regression_rmdir_of_a_folder_emptied_through_the_mount(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [
            ("server_put", "sub/e.bin", b"Rd\xc6t"),
            ("rewrite", "sub/e.bin", 268, b"\x00\x9e"),
            ("rewrite", "sub/e.bin", 282, b"\xd7\x17\x98"),
            ("remove", "sub/e.bin"),
            ("mkdir", "other"),
            ("rmdir", "sub"),
        ],
    )


def test_regression_rmdir_of_a_made_folder_the_server_listed_too(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [
            ("mkdir", "sub"),
            ("server_put", "sub/d.txt", b"\xea\x8d"),
            ("server_put", "sub/d.txt", b"8\x16"),
            ("rename", "sub/d.txt", "a.txt"),
            ("rmdir", "sub"),
        ],
    )


def test_regression_folder_emptied_through_the_mount_goes_at_rmdir(fake_xnat, tmp_path):
    # The emptied folder stays until rmdir, as on any disk, so `rm -r` (unlink the files,
    # then rmdir the folder) works; rmdir makes it go at once, not after the TTL.
    fake_xnat.store.put_file(EXPERIMENT, "SMX", "sub/e.bin", b"only file")
    with mounted(fake_xnat.url, tmp_path, ttl=30) as mount:
        resource = mount.path.joinpath(*SESSION_RESOURCES, "SMX")
        assert os.listdir(resource) == ["sub"]
        os.unlink(resource / "sub" / "e.bin")
        assert os.listdir(resource / "sub") == []
        os.rmdir(resource / "sub")
        assert os.listdir(resource) == [], "a removed folder is still shown"


def test_regression_writes_through_a_descriptor_after_a_rename(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [("create", "a.txt", b"first"), ("rename", "a.txt", "b.dcm"), ("fd_write", 0, 5, b"+more"), ("close", 0)],
    )


def test_regression_a_file_renamed_over_while_open(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [
            ("write", "a.txt", b"from a"),
            ("create", "b.dcm", b"from b"),
            ("rename", "a.txt", "b.dcm"),
            ("fd_write", 0, 6, b" and on"),
            ("close", 0),
        ],
    )


def test_regression_descriptors_across_renames_and_a_remount(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [
            ("create", "a.txt", b"one"),
            ("open", "a.txt"),
            ("rename", "a.txt", "c.nii.gz"),
            ("fd_write", 1, 3, b"two"),
            ("remove", "c.nii.gz"),
            ("fd_write", 0, 0, b"x"),
            ("write", "a.txt", b"new"),
            ("open", "a.txt"),
            ("fd_write", 2, 1, b"Y"),
            ("remount",),
        ],
    )


def test_regression_a_name_reused_while_the_removed_file_is_open(fake_xnat, tmp_path):
    # The new file got the removed one's inode number: the kernel then sized
    # the old descriptor's reads by the new file.
    replay(
        fake_xnat,
        tmp_path,
        [("create", "b.dcm", b"the removed file's bytes"), ("remove", "b.dcm"), ("create", "b.dcm", b"\x00")],
    )


def test_regression_a_file_removed_while_open_under_a_name_just_deleted(fake_xnat, tmp_path):
    # After the remount the listing holds the server's a.txt; the new a.txt took
    # the deletion's place, and unlinking it while open brought the old file back.
    replay(
        fake_xnat,
        tmp_path,
        [("write", "a.txt", b"x"), ("remount",), ("remove", "a.txt"), ("create", "a.txt", b"y"), ("remove", "a.txt")],
    )


def test_regression_a_new_file_renamed_away_from_a_name_just_deleted(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [
            ("write", "a.txt", b"x"),
            ("remount",),
            ("remove", "a.txt"),
            ("create", "a.txt", b"y"),
            ("rename", "a.txt", "b.dcm"),
        ],
    )


def test_regression_a_file_renamed_over_while_open_keeps_its_inode_through_later_renames(fake_xnat, tmp_path):
    # A rename moved every entry kept under the old name, the one detached from it
    # earlier (renamed over while a descriptor held it) too, which then took the new
    # name's inode number: the descriptors of the file that moved there read the other
    # file's size.
    replay(
        fake_xnat,
        tmp_path,
        [
            ("server_put", "a.txt", b"\xb2tG\xb1\xd0A~"),
            ("open", "a.txt"),
            ("server_put", "c.nii.gz", b"\x83\xc0'\n\xc8uFa+$"),
            ("rename", "a.txt", "c.nii.gz"),
            ("create", "c.nii.gz", b"\xc9m\xc8\x87Z\x12\x8f\xfc\x9a\x1d\xd6,\x99\x8a\xda\xaa\xcf\xc6"),
            ("server_put", "sub/e.bin", b"\xac"),
            ("server_put", "sub/d.txt", b"\xed\xadz<Q\x1a\xe1\xed\xf9Q"),
            ("open", "sub/d.txt"),
            ("rewrite", "sub/d.txt", 454, b"F\xa2\x8c"),
            ("create", "a.txt", b"\x8f\x98\xae\xc0"),
            ("server_put", "sub/e.bin", b"\xdc\xedo\x18\x14"),
            ("rename", "sub/d.txt", "sub/d.txt"),
            ("rename", "c.nii.gz", "sub/d.txt"),
            ("rename", "sub/e.bin", "c.nii.gz"),
            ("rename", "sub/d.txt", "c.nii.gz"),
        ],
    )


def test_regression_a_written_file_keeps_its_time_once_the_server_lists_it(fake_xnat, tmp_path):
    # Listed by the server, it showed its session's time instead: back in time, and vim
    # warned "the file has been changed since reading it" at the next save.
    replay(
        fake_xnat, tmp_path, [("write", "a.txt", b"x"), ("server_put", "b.dcm", b"y"), ("rewrite", "a.txt", 0, b"z")]
    )


@pytest.mark.parametrize(
    ("what", "by_mount"),
    [("write", False), ("rewrite", False), ("rename", False), ("remove", False), ("write", True), ("rename", True)],
)
def test_regression_a_change_the_server_refuses_leaves_what_the_model_says(fake_xnat, tmp_path, what, by_mount):
    # Each kind in every run: the random runs meet them only now and then.
    replay(
        fake_xnat,
        tmp_path,
        [
            ("write", "a.txt", b"first"),
            ("write", "b.dcm", b"second"),
            ("refused_change", what, "a.txt", b"new", "b.dcm", by_mount),
            ("remove", "b.dcm"),
        ],
    )


@pytest.mark.parametrize(
    ("what", "first"),
    [("write", "write"), ("rewrite", "write"), ("rename", "write"), ("remove", "write")]
    + [("rename", "server_put"), ("remove", "server_put")],
)
def test_a_change_the_server_carries_out_but_answers_too_late(fake_xnat, tmp_path, what, first):
    # The server did the change; the mount gave up on its answer and cannot know. Each kind
    # in every run, on a file written through the mount or put on the server.
    replay(
        fake_xnat,
        tmp_path,
        [
            (first, "a.txt", b"first"),
            ("write", "b.dcm", b"second"),
            ("stalled_change", what, "a.txt", b"new", "b.dcm"),
            ("rewrite", "b.dcm", 0, b"third"),
        ],
    )


def test_regression_a_rewrite_refused_by_the_server_stays_shown_past_the_first_uploads_ttl(fake_xnat, tmp_path):
    # Found by the machine: the first upload's TTL still ran for the rewrite, whose upload had
    # failed, and when it ran out the mount showed the server's listing instead of our copy.
    replay(
        fake_xnat,
        tmp_path,
        [
            ("write", "a.txt", b"\x00"),
            ("refused_change", "write", "a.txt", b"fourteen bytes", "b.dcm"),
            ("server_put", "b.dcm", b"\x00"),
        ],
    )


def test_regression_a_file_deleted_on_the_server_after_a_retry_sent_it_goes_within_the_ttl(fake_xnat, tmp_path):
    # `xnatfs uploads retry` sent the file; the mount learnt of it only at its own next
    # retry round, and showed its copy until then and a TTL more.
    replay_on_a_scan_resource(
        fake_xnat,
        tmp_path,
        [
            ("refused_change", "write", "a.txt", b"aa", "b.dcm"),
            ("refused_change", "write", "sub/d.txt", b"dd", "b.dcm"),
            ("server_put", "c.nii.gz", b"cc"),
            ("refused_change", "write", "sub/d.txt", b"ddd", "b.dcm"),
            ("server_delete", "sub/d.txt"),
        ],
    )


def test_regression_a_file_a_retry_sent_then_removed_through_the_mount_leaves_the_server(fake_xnat, tmp_path):
    # The mount did not know yet that `xnatfs uploads retry` had sent b.dcm: rm dropped it
    # from the spool as unsent, and the server kept it.
    replay_on_a_scan_resource(
        fake_xnat,
        tmp_path,
        [
            ("refused_change", "rename", "a.txt", b"", "sub/e.bin"),
            ("refused_change", "write", "a.txt", b"aa", "b.dcm"),
            ("remove", "sub/d.txt"),
            ("refused_change", "rename", "sub/e.bin", b"", "b.dcm"),
            ("refused_change", "remove", "a.txt", b"", "b.dcm"),
            ("remove", "b.dcm"),
        ],
    )


def test_regression_a_written_file_opened_for_writing_and_closed_unwritten_keeps_its_time(fake_xnat, tmp_path):
    # Opening it for writing forgot the time of our last write: closed unwritten, the
    # file showed its session's time again.
    replay(
        fake_xnat,
        tmp_path,
        [("write", "a.txt", b"x"), ("server_put", "b.dcm", b"y"), ("open", "a.txt"), ("close", 0)],
    )


def test_regression_a_file_replaced_on_the_server_by_one_of_the_same_size_after_our_upload(fake_xnat, tmp_path):
    replay(
        fake_xnat,
        tmp_path,
        [
            ("mkdir", "other"),
            ("write", "other/f.csv", b"\x05\xac\x015\xff"),
            ("server_put", "other/f.csv", b"U\x1c\xb9*\xf5"),
        ],
    )


def test_regression_a_file_renamed_while_written_through_two_descriptors(fake_xnat, tmp_path):
    replay_on_a_scan_resource(
        fake_xnat,
        tmp_path,
        [
            ("open", "a.txt"),
            ("fd_write", 0, 0, b"\x00"),
            ("open", "a.txt"),
            ("rename", "a.txt", "c.nii.gz"),
            ("close", 1),
            ("close", 0),
        ],
    )


@pytest.mark.parametrize("written", [False, True], ids=["whole", "written since"])
@pytest.mark.parametrize("send_unclosed", [False, True], ids=["dropped", "sent"])
def test_a_kill_after_a_file_held_open_was_renamed(fake_xnat, tmp_path, written, send_unclosed):
    """The mount killed while a renamed file is still open: whole, it is on the server under
    the new name; with writes since its last close, the server keeps that version under the
    old name, and the writes wait in the spool (problem 66)."""
    steps = [("write", "a.txt", b"as closed"), ("open", "a.txt")]
    if written:
        steps.append(("fd_write", 0, 3, b"CLOSED"))
    steps += [("rename", "a.txt", "b.dcm"), ("kill", send_unclosed)]
    replay(fake_xnat, tmp_path, steps)


def test_regression_a_file_renamed_by_a_retry_then_replaced_on_the_server_by_one_of_the_same_size(fake_xnat, tmp_path):
    """The renamed copy took the time of the file it came from, which the server's
    replacement showed too: same size, same time, so the kernel kept the pages of the copy."""
    replay(
        fake_xnat,
        tmp_path,
        [
            ("refused_change", "rename", "sub/d.txt", b"\x00", "b.dcm", False),
            ("server_put", "b.dcm", b"\xff"),
        ],
        machine_type=ScanMountMachine,
        start=(b"\x00", b"\x00"),
    )


def test_regression_a_rename_whose_deletion_was_refused_keeps_the_old_name_after_a_doubtful_upload(fake_xnat, tmp_path):
    """The old name held a version whose first upload had been left in doubt (a 503); the
    rename could not delete it, yet the looks after late uploads deleted it later, as if it
    were a late copy: a failed ``mv`` leaves both names."""
    replay(
        fake_xnat,
        tmp_path,
        [
            ("write", "a.txt", b"\xa3\xa6\x8c\t\x91\xf15\x1c\xfff\x9e\x02"),
            ("refused_change", "write", "a.txt", b"G\xd4\xa9", "b.dcm", False),
            ("write", "c.nii.gz", b"}\x1c\xf0#"),
            ("refused_change", "rename", "a.txt", b"\x12\x91F\xd4\x12", "c.nii.gz", True),
        ],
    )
