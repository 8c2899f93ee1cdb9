"""Which process a request came from, and whether it has been killed since.

Once the daemon has read a request, the kernel makes its caller wait for
the answer even after SIGKILL: the process stays in the kernel, unkillable,
until the daemon answers. FUSE tells the daemon of a signal with an
interrupt request, but pyfuse3 does not pass those on, so the mount looks
at the caller in /proc instead, while the request waits on the server.

A caller counts as killed when SIGKILL is pending for it (``kill -9``, and
any signal the process does not catch, such as Ctrl-C of ``cat``: the
kernel turns those into SIGKILL for every thread), or when it is exiting
because of a signal (the close of its files at exit comes after SIGKILL
was taken). A process that exits normally is not: its last closes still
wait for their uploads, as they would without a signal.

The caller is a thread ID, as FUSE gives it. Read, write and close come
without one; they are charged to the thread that opened the file.
"""

from __future__ import annotations

import signal
from contextvars import ContextVar, Token

_SIGKILL_PENDING = 1 << (signal.SIGKILL - 1)
_PF_EXITING = 0x4  # the task's flags in /proc: in do_exit
# Fields of /proc/<tid>/stat after the command name: flags, pending signals, exit code (proc(5)).
_FLAGS, _PENDING, _EXIT_CODE = 9 - 3, 31 - 3, 52 - 3

_caller: ContextVar[int | None] = ContextVar("xnatfs_caller", default=None)


def current_caller() -> int | None:
    """The thread the request being answered came from, if known."""
    return _caller.get()


def enter_caller(tid: int | None) -> Token[int | None]:
    """The request being answered from here on came from ``tid``; undo with :func:`leave_caller`."""
    return _caller.set(tid)


def leave_caller(token: Token[int | None]) -> None:
    _caller.reset(token)


def is_killed(tid: int) -> bool:
    """Whether thread ``tid`` has been killed and waits only to die (False if unknown)."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as stat:
            text = stat.read()
        fields = text[text.rindex(b")") + 2 :].split()
        flags, pending = int(fields[_FLAGS]), int(fields[_PENDING])
        # Shown only to a daemon allowed to trace the caller (root, or its own user): else 0.
        exit_code = int(fields[_EXIT_CODE]) if len(fields) > _EXIT_CODE else 0
    except (OSError, ValueError, IndexError):
        return False
    return bool(pending & _SIGKILL_PENDING) or bool(flags & _PF_EXITING and exit_code & 0x7F)
