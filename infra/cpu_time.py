"""Wall and CPU seconds of a command *and every process it starts*, daemons included.

    python3 infra/cpu_time.py -- make demo

``time`` misses the CPU of processes whose parent never waits for them (PySpark's driver JVM,
`feedrank serve`'s children, the Kafka broker): they are reparented and reaped elsewhere.
This wrapper makes itself their child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), reaps
every descendant until none is left, and reports ``RUSAGE_CHILDREN``: the CPU the whole
process tree used. It also prints the 1-minute load average before and after, since on a
shared machine the wall time says little without it. Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    """Run ``argv`` (after an optional ``--``), reap its whole tree, print the totals."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: cpu_time.py -- COMMAND [ARG...]\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write(f"cpu_time.py: prctl failed (errno {ctypes.get_errno()})\n")
        return 2
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    returncode = subprocess.call(argv)
    command_s = time.monotonic() - started
    while True:  # orphaned descendants are ours now: wait until the last one has exited
        try:
            os.wait()
        except ChildProcessError:
            break
    tree_s = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(
        f"cpu_time: {command_s:.1f} s wall ({tree_s:.1f} s until its last process ended), "
        f"{usage.ru_utime + usage.ru_stime:.1f} CPU-s "
        f"(user {usage.ru_utime:.1f}, sys {usage.ru_stime:.1f}), exit {returncode}, "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    )
    return returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
