"""How far the kernel reads ahead in the files of a mount.

The kernel sends a FUSE read for every window of its read-ahead, 128 KiB by
default, and each costs a round trip through pyfuse3 and the event loop. A
FUSE daemon cannot ask for more at mount time (libfuse only lets it lower
the window in its answer to the kernel's INIT), but the mount's backing
device has the window as a setting under /sys, which root may raise once
the mount is in place. The kernel then asks for up to 1 MiB at once
(FUSE's largest read).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

logger = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
BDI_DIR = Path("/sys/class/bdi")
# How long to wait for the mount to show in mountinfo after INIT was answered, and how often to look.
MOUNT_WAIT = 10.0
MOUNT_POLL = 0.02


async def raise_read_ahead(mountpoint: str, nbytes: int, limiter: trio.CapacityLimiter) -> bool:
    """Make the kernel read ahead ``nbytes`` in files of the mount at ``mountpoint``.

    Called once the kernel's INIT is answered; the mount shows in mountinfo
    only after that. True when set; False (logged, the kernel's default
    stays) where that is not allowed (not root) or the mount never shows.
    """
    with trio.move_on_after(MOUNT_WAIT):
        while (device := await trio.to_thread.run_sync(mount_device, mountpoint, limiter=limiter)) is None:
            await trio.sleep(MOUNT_POLL)
        return await trio.to_thread.run_sync(set_read_ahead, device, nbytes, limiter=limiter)
    logger.debug("no mount at %s in %s; read-ahead left as it is", mountpoint, MOUNTINFO)
    return False


def set_read_ahead(device: str, nbytes: int, bdi_dir: Path = BDI_DIR) -> bool:
    """Set the read-ahead of the backing device ``device`` (``major:minor``) to ``nbytes``."""
    setting = bdi_dir / device / "read_ahead_kb"
    try:
        setting.write_text(str(max(1, nbytes // 1024)))
    except OSError as exc:
        logger.debug("cannot set the read-ahead in %s: %s", setting, exc)
        return False
    logger.debug("read-ahead of device %s set to %d KiB", device, nbytes // 1024)
    return True


def mount_device(mountpoint: str, mountinfo: Path = MOUNTINFO) -> str | None:
    """The ``major:minor`` of the newest mount at ``mountpoint``, from ``mountinfo``."""
    # mountinfo names the real path; only the parent is resolved, never the mountpoint itself.
    parent, name = os.path.split(mountpoint.rstrip("/"))
    wanted = _escaped(os.path.join(os.path.realpath(parent or "/"), name))
    device = None
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == wanted:
            device = fields[2]
    return device


def _escaped(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for char in "\\ \t\n":
        path = path.replace(char, f"\\{ord(char):03o}")
    return path
