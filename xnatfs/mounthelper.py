"""``mount.fuse.xnatfs``: what mount(8) runs for ``mount -t fuse.xnatfs`` and /etc/fstab lines.

mount(8) calls ``/sbin/mount.fuse.xnatfs URL MOUNTPOINT [-n] [-s] [-f] [-v]
[-t fuse.xnatfs] -o OPTIONS`` (install the link with ``make install-mount-helper``). The
options are spelled as in fstab and become ``xnatfs mount`` arguments:

* ours: ``user=NAME``, ``password_file=PATH``, ``netrc=PATH``,
  ``cache_dir=``, ``cache_size=``, ``ttl=``, ``series_zip_size=``,
  ``config=``, ``log_file=``, ``log_level=``, ``experiment_type=``,
  ``allow_delete``, ``insecure``, ``ro``;
* FUSE and mount flags passed on: ``allow_other``, ``allow_root``,
  ``default_permissions``, ``dev``/``nodev``, ``suid``/``nosuid``,
  ``exec``/``noexec``, ``atime``/``noatime``, ``sync``/``async``;
* fstab's own, ignored here: ``_netdev``, ``auto``/``noauto``, ``nofail``,
  ``defaults``, ``rw``, bare ``user``/``users``/``nouser``, ``x-*``,
  ``comment=*``.

A password is never an option (fstab is readable by everyone): it comes
from ``password_file=`` or a netrc file.
"""

from __future__ import annotations

import os
import sys

from xnatfs.cli import main as xnatfs_main

VALUED = {
    "user": "--user",
    "password_file": "--password-file",
    "cache_dir": "--cache-dir",
    "cache_size": "--cache-size",
    "ttl": "--ttl",
    "series_zip_size": "--series-zip-size",
    "config": "--config",
    "log_file": "--log-file",
    "log_level": "--log-level",
    "experiment_type": "--experiment-type",
}
FLAGS = {"ro": "--read-only", "allow_delete": "--allow-delete", "insecure": "--insecure"}
PASSED_ON = {
    "allow_other",
    "allow_root",
    "default_permissions",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "sync",
    "async",
}
IGNORED = {
    "_netdev",
    "auto",
    "noauto",
    "nofail",
    "defaults",
    "rw",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "relatime",
    "norelatime",
    "strictatime",
}
HELPER_FLAGS = {"-n", "-s", "-v"}  # no mtab, sloppy, verbose: nothing to do for us


class OptionProblem(Exception):
    """An fstab option xnatfs cannot use; the message is shown as is."""


def mount_arguments(options: list[str]) -> tuple[list[str], dict[str, str]]:
    """``xnatfs mount`` arguments for fstab ``options``, and environment additions."""
    arguments: list[str] = []
    environment: dict[str, str] = {}
    for option in options:
        name, has_value, value = option.partition("=")
        if name in ("password", "pass"):
            raise OptionProblem(
                "a password does not go in the mount options; use password_file=PATH or a netrc file (netrc=PATH)"
            )
        if name in VALUED and has_value:
            arguments += [VALUED[name], value]
        elif name == "netrc" and has_value:
            environment["NETRC"] = value
        elif name in FLAGS and not has_value:
            arguments.append(FLAGS[name])
        elif (name in PASSED_ON and not has_value) or (name in ("max_read", "blksize") and has_value):
            arguments += ["-o", option]
        elif (name in IGNORED and not has_value) or name.startswith("x-") or name == "comment":
            continue
        else:
            raise OptionProblem(f"unknown mount option {option!r} (see `man mount.fuse3` and the xnatfs README)")
    return arguments, environment


def parse(argv: list[str]) -> tuple[str, str, list[str], bool]:
    """URL, mountpoint, the options, and whether mount(8) asked for a fake (-f) mount."""
    positional: list[str] = []
    options: list[str] = []
    fake = False
    words = iter(argv)
    for word in words:
        if word == "-o":
            options += [o for o in next(words, "").split(",") if o]
        elif word.startswith("-o"):
            options += [o for o in word[2:].split(",") if o]
        elif word == "-f":
            fake = True
        elif word == "-t":
            next(words, None)  # the type, fuse.xnatfs: how we were called
        elif word in HELPER_FLAGS:
            continue
        elif word.startswith("-"):
            raise OptionProblem(f"unknown argument {word}")
        else:
            positional.append(word)
    if len(positional) != 2:
        raise OptionProblem("usage: mount.fuse.xnatfs URL MOUNTPOINT [-o OPTIONS]")
    return positional[0], positional[1], options, fake


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        url, mountpoint, options, fake = parse(argv)
        arguments, environment = mount_arguments(options)
    except OptionProblem as problem:
        print(f"mount.fuse.xnatfs: {problem}", file=sys.stderr)
        return 1
    if fake:
        return 0
    os.environ.update(environment)
    return xnatfs_main(["mount", url, mountpoint, *arguments])


if __name__ == "__main__":
    sys.exit(main())
