"""How far the kernel reads ahead in the files of a mount.

The kernel sends a FUSE read for every window of its read-ahead, 128 KiB by
default, and each costs a round trip through pyfuse3 and the event loop. A
FUSE daemon cannot ask for more at mount time (libfuse only lets it lower
the window), but the mount's backing device has the window as a setting
under /sys, which root may raise once the file system is mounted. The
kernel then asks for up to 1 MiB at once (FUSE's largest read).
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
BDI_DIR = Path("/sys/class/bdi")


def set_read_ahead(mountpoint: str, nbytes: int, *, mountinfo: Path = MOUNTINFO, bdi_dir: Path = BDI_DIR) -> bool:
    """Make the kernel read ahead ``nbytes`` in files of the mount at ``mountpoint``.

    True when set; False (logged, the kernel's default stays) where that is
    not allowed (not root) or the mount is not found.
    """
    device = mount_device(mountpoint, mountinfo)
    if device is None:
        logger.debug("no mount at %s in %s; read-ahead left as it is", mountpoint, mountinfo)
        return False
    setting = bdi_dir / device / "read_ahead_kb"
    try:
        setting.write_text(str(max(1, nbytes // 1024)))
    except OSError as exc:
        logger.debug("cannot set the read-ahead of %s (%s): %s", mountpoint, setting, exc)
        return False
    logger.debug("read-ahead of %s set to %d KiB", mountpoint, nbytes // 1024)
    return True


def mount_device(mountpoint: str, mountinfo: Path = MOUNTINFO) -> str | None:
    """The ``major:minor`` of the newest mount at ``mountpoint``, from ``mountinfo``."""
    wanted = _escaped(mountpoint.rstrip("/") or "/")
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
