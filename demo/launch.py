"""``python -m demo.launch PARENT_PID PROGRAM [ARG...]``: exec PROGRAM bound to the demo's life.

The demo starts each agent replica through this so that the replica gets SIGTERM (and hands
its lock over) if the demo itself dies without cleaning up, e.g. SIGKILLed: no replica
outlives the demo. ``PR_SET_PDEATHSIG`` survives ``execv``; Linux only, elsewhere the demo's
own cleanup is the only guard.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m demo.launch PARENT_PID PROGRAM [ARG...]", file=sys.stderr)
        return 2
    parent, program = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # the demo died before prctl: no signal would ever come
        return 1
    os.execv(program[0], program)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
