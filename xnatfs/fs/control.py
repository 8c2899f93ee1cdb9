"""The mount's control channel: ``xnatfs status`` and ``xnatfs refresh`` talk to the daemon here.

A Unix socket per mountpoint, in a folder only the mounting user can enter
(``$XDG_RUNTIME_DIR/xnatfs``, else ``/tmp/xnatfs-<uid>``, mode 0700) and
itself mode 0600; a peer of another user is turned away (root excepted).
Never reachable over the network.

The protocol is one JSON object per line each way, one request per
connection:

* ``{"request": "status"}`` → what the mount is doing (see :func:`status`);
* ``{"request": "refresh", "path": "P/S", "recursive": false}`` → the cached
  listings of that folder (relative to the mountpoint) are dropped, and so
  are the kernel's entries for it, so the next ``ls`` asks the server;
* ``{"request": "bids-check", "path": "P/BIDS"}`` → every scan of the
  project's BIDS view left out, with its reason, and the conversions that
  failed (see :func:`bids_check`).
* ``{"request": "uploads-changed", "sent": {ID: MD5}, "discarded": [IDs]}`` →
  the mount looks at its spool again: ``xnatfs uploads retry`` sent entries
  of its files (with the MD5 of what the server got), which it then shows as
  sent, or ``discard`` dropped them, which it then no longer shows (answered
  once it has done so).

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
The daemon never touches its own mountpoint: paths are resolved through
its own tree.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trio

from xnatfs.errors import XnatError, redact_url
from xnatfs.fs.nodes import DirNode, Listing, Node

if TYPE_CHECKING:
    from xnatfs.client.connection import XnatConnection
    from xnatfs.fs.kernel import Kernel
    from xnatfs.fs.operations import XnatOperations

logger = logging.getLogger(__name__)

REFRESH_NAME = ".xnatfs-refresh"
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_SECONDS = 60.0


# ---- where the socket lives -----------------------------------------------


def control_folder() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "xnatfs"
    return Path(f"/tmp/xnatfs-{os.getuid()}")


def control_socket_path(mountpoint: Path | str) -> Path:
    # Only the parent is resolved: a stat of the mountpoint itself would go to
    # the mount, and in the daemon that means waiting on itself.
    parent, name = os.path.split(os.path.abspath(os.fspath(mountpoint)))
    real = os.path.join(os.path.realpath(parent), name)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return control_folder() / f"{digest}.sock"


def _private_folder(folder: Path) -> None:
    """Make ``folder`` (0700, ours); refuse one that someone else owns or can enter."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(folder):
        raise PermissionError(f"{folder} is not a private folder of this user")


# ---- the daemon side --------------------------------------------------------


class ControlServer:
    """Answers the requests above for one mount (``ops``: its XnatOperations)."""

    def __init__(self, ops: XnatOperations, started_at: float) -> None:
        self.ops = ops
        self.started_at = started_at
        self.path = control_socket_path(ops.settings.mountpoint)

    async def serve(self) -> None:
        """Listen until cancelled; the socket file is removed on the way out."""
        try:
            listener = await trio.to_thread.run_sync(self._listen)
        except OSError as exc:
            logger.warning("no control channel (status, refresh) for this mount: %s", exc)
            return
        try:
            await trio.serve_listeners(self._answer, [trio.SocketListener(listener)])
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _listen(self) -> trio.socket.SocketType:
        _private_folder(self.path.parent)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(os.fspath(self.path))
        os.chmod(self.path, 0o600)
        raw.listen(16)
        return trio.socket.from_stdlib_socket(raw)

    async def _answer(self, stream: trio.SocketStream) -> None:
        # Whatever happens to one request must not end serve_listeners, and with it the mount.
        try:
            async with stream:
                with trio.move_on_after(REQUEST_SECONDS):
                    if _same_user(stream.socket):
                        await stream.send_all(json.dumps(await self._reply(stream)).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("control connection dropped: %s", exc)
        except Exception:
            logger.exception("control connection failed")

    async def _reply(self, stream: trio.SocketStream) -> dict[str, Any]:
        try:
            request = json.loads(await _read_line(stream))
            return {"ok": True, **await self.handle(request)}
        except (ValueError, LookupError, OSError, XnatError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            logger.exception("control request failed")
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("request") if isinstance(request, dict) else None
        if kind == "status":
            return await self.status()
        if kind == "refresh":
            return await refresh(self.ops, str(request.get("path", "")), bool(request.get("recursive")))
        if kind == "bids-check":
            return await bids_check(self.ops, str(request.get("path", "")))
        if kind == "uploads-changed":
            sent, discarded = request.get("sent") or {}, request.get("discarded") or []
            if not isinstance(sent, dict) or not isinstance(discarded, list):
                raise ValueError("sent: upload ID → MD5; discarded: a list of upload IDs")
            self.ops.uploader.note_sent({str(entry_id): str(digest) for entry_id, digest in sent.items()})
            await self.ops.changes.uploads_changed({str(entry_id) for entry_id in discarded})
            return {}
        raise ValueError(f"unknown request {kind!r}")

    async def status(self) -> dict[str, Any]:
        # Worker threads of their own, not the file system's limiter: a stalled
        # server may hold every one of those, and that is when status is asked for.
        ops = self.ops
        # A mount's client is an XnatConnection; the ArchiveClient protocol leaves its HTTP session out.
        session = cast("XnatConnection", ops.connection).session
        cache_info = await trio.to_thread.run_sync(ops.cache.info)
        uploads = await trio.to_thread.run_sync(self._uploads)
        lookups = ops.cache_hits + ops.cache_misses
        return {
            "mountpoint": os.fspath(ops.settings.mountpoint),
            "server": redact_url(ops.server),
            "user": session.username,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "read_only": ops.settings.read_only,
            "cache": {
                "directory": os.fspath(cache_info.directory),
                "bytes_used": cache_info.bytes_used,
                "max_bytes": cache_info.max_bytes,
                "disk_free": cache_info.disk_free,
                "files": cache_info.entries,
                "hits": ops.cache_hits,
                "misses": ops.cache_misses,
                "hit_rate": round(ops.cache_hits / lookups, 3) if lookups else None,
            },
            "downloads": [
                {"uri": uri, "bytes_done": done, "bytes_total": total} for uri, done, total in ops.cache.downloads()
            ],
            "uploads": uploads,
            "metadata": self._metadata(),
            "requests": session.recent_activity(),
        }

    def _metadata(self) -> dict[str, int]:
        """What the daemon holds of the server's listings in memory, against its bounds."""
        tree = self.ops.tree
        memo_rows, memo_max = tree.memo_rows
        return {
            "listing_rows": tree.listings.rows_held,
            "listing_rows_max": tree.listings.max_rows,
            "derived_rows": memo_rows,
            "derived_rows_max": memo_max,
            "inodes": len(self.ops.inodes),
        }

    def _uploads(self) -> list[dict[str, Any]]:
        """The spool's entries for this server, those being sent with their progress (blocking)."""
        ops = self.ops
        sending = ops.uploader.sending()
        return [
            {
                "id": entry.id,
                "state": "sending" if entry.id in sending else entry.state,
                "size": entry.size,
                "bytes_sent": sending.get(entry.id),
                "attempts": entry.attempts,
                "target": entry.target.describe(),
                "last_error": entry.last_error.splitlines()[0] if entry.last_error else None,
            }
            for entry in ops.spool.pending(ops.server) + ops.spool.unclosed(ops.server)
        ]


def _same_user(sock: trio.socket.SocketType) -> bool:
    """The peer runs as this user (or as root): the folder's mode says so too; this makes sure."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid in (os.getuid(), 0)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]


# ---- bids-check -----------------------------------------------------------------


async def bids_check(ops: XnatOperations, relative: str) -> dict[str, Any]:
    """The scans of a project's BIDS view left out (and why) and the conversions that failed.

    ``relative`` is the ``P/BIDS`` folder (or any folder in it)."""
    from xnatfs.fs.bidsview import BidsRootDir

    parts = _path_parts(relative)
    if ops.bids is None:
        raise ValueError("this mount shows no BIDS view (mounted with --no-bids, or no converter)")
    if len(parts) < 2 or parts[1] != "BIDS":
        raise ValueError(f"not in a BIDS view: {relative or '/'} (give MOUNT/<project>/BIDS)")
    root = await _find(ops, parts[:2])
    if not isinstance(root, BidsRootDir):
        raise ValueError(f"not a BIDS view: {'/'.join(parts[:2])}")
    return {"path": "/".join(parts[:2]), **await ops.bids.check(ops.tree, root)}


# ---- refreshing ---------------------------------------------------------------


def _path_parts(relative: str) -> tuple[str, ...]:
    parts = tuple(part for part in relative.split("/") if part and part != ".")
    if ".." in parts:
        raise ValueError(f"not a path inside the mount: {relative}")
    return parts


async def _find(ops: XnatOperations, parts: tuple[str, ...]) -> DirNode:
    """The folder at ``parts``; a name the cached listing lacks is looked for in a fresh one."""
    node: Node = ops.tree.root
    for depth, name in enumerate(parts):
        if not node.is_dir:
            raise NotADirectoryError(f"{'/'.join(parts[:depth])} is not a folder")
        assert isinstance(node, DirNode)  # every folder is a DirNode
        child = (await ops.tree.children(node)).get(name)
        if child is None:
            _forget(ops, node)
            child = (await ops.tree.children(node)).get(name)
        if child is None:
            raise FileNotFoundError(f"no {'/'.join(parts[: depth + 1])} on the server")
        node = child
    if not isinstance(node, DirNode):
        raise NotADirectoryError(f"{'/'.join(parts)} is not a folder")
    return node


def _forget(ops: XnatOperations, node: DirNode) -> None:
    for key in node.refreshed_keys():
        ops.tree.forget_listing(key)
    ops.tree.forget_answers_below(node)


def _changed_names(old: Listing, new: Listing) -> list[str]:
    return [name for name in old.entries.keys() | new.entries.keys() if not _same(old.get(name), new.get(name))]


def _same(old: object, new: object) -> bool:
    """Whether two snapshots of an entry say the same; nodes compare by identity, and a
    listing fetched again holds new ones even where nothing changed."""
    if not isinstance(old, Node) or not isinstance(new, Node):
        return old == new
    if type(old) is not type(new):
        return False
    # Fields set after construction (``init=False``) are caches, not what the entry says.
    return all(_same(getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(old) if f.init)


async def refresh(ops: XnatOperations, relative: str, recursive: bool, *, in_request: bool = False) -> dict[str, Any]:
    """Drop the listings of the folder at ``relative`` (and, if ``recursive``, of the folders
    below that the kernel knows), and the kernel's entries that changed; the folder is listed
    again at once. ``in_request``: called while answering the kernel about that folder."""
    parts = _path_parts(relative)
    node = await _find(ops, parts)
    old = await ops.tree.children(node)
    _forget(ops, node)
    below = []
    if recursive:
        depth = len(parts)
        below = [
            entry for _number, entry in ops.inodes.items() if len(entry.path) > depth and entry.path[:depth] == parts
        ]
        for entry in below:
            if entry.node.is_dir:
                assert isinstance(entry.node, DirNode)  # every folder is a DirNode
                _forget(ops, entry.node)
    new = await ops.tree.children(node)
    inode = ops.inodes.number_of(parts)
    stale = [(inode, name) for name in _changed_names(old, new)] if inode is not None else []
    for entry in below:
        parent = ops.inodes.number_of(entry.path[:-1])
        if parent is not None:
            stale.append((parent, entry.path[-1]))
    if in_request:
        # The kernel holds the folder's lock until this request is answered; a direct
        # invalidation would wait for it, so these are queued, and done just after.
        for parent, name in stale:
            ops.kernel.invalidate_entry_async(parent, _raw(name))
    else:
        # Done before answering, so the caller's next look is the server's; in a worker
        # thread, since the kernel may wait on requests this loop has to answer first.
        await trio.to_thread.run_sync(_invalidate_now, ops.kernel, stale, inode)
    logger.info(
        "refreshed %s%s: %d entries", "/".join(parts) or "/", " and below" if recursive else "", len(new.entries)
    )
    return {"path": "/".join(parts), "entries": len(new.entries), "recursive": recursive}


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _invalidate_now(kernel: Kernel, stale: list[tuple[int, str]], folder_inode: int | None) -> None:
    for parent, name in stale:
        try:
            kernel.invalidate_entry(parent, _raw(name))
        except OSError as exc:
            # ENOENT: the kernel did not hold that name; nothing to drop.
            if exc.errno != errno.ENOENT:
                logger.debug("invalidating %s in inode %d: %s", name, parent, exc)
    if folder_inode is not None:
        try:
            kernel.invalidate_inode(folder_inode)
        except OSError as exc:
            logger.debug("invalidating inode %d: %s", folder_inode, exc)


# ---- the command's side -------------------------------------------------------


class ControlError(Exception):
    """The mount's control channel could not be reached or refused the request."""


def ask(mountpoint: Path | str, request: dict[str, Any], timeout: float = REQUEST_SECONDS) -> dict[str, Any]:
    """Send ``request`` to the daemon serving ``mountpoint``; its answer (blocking)."""
    path = control_socket_path(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except FileNotFoundError:
            raise ControlError(f"no xnatfs mount answers for {mountpoint}") from None
        except OSError as exc:
            raise ControlError(f"the mount at {mountpoint} did not answer: {exc.strerror or exc}") from None
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ControlError(f"the mount at {mountpoint} gave no answer") from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "refused")
    return answer
