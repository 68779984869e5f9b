"""One network namespace per pytest-xdist worker, so each worker runs a whole stack.

Why: the lab stack binds fixed loopback ports (SIP 5060, AMI 5038, FastAGI
4573, Redis 6380). Rather than renumber everything, each xdist worker (root)
creates a fresh namespace with only `lo` up and moves itself into it with
setns(2) before any socket, thread or subprocess exists; the pjsua2 phones,
the AMI tap and every process docker/stack.sh starts inherit it. Each worker
also gets its own state directory (ICS_STACK_DIR=<repo>/.stack/gwN).

The name carries the worktree and the worker's pid, so concurrent runs (other
worktrees, other engineers in their own namespaces) never collide. Python 3.11
has no os.setns, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

from tests.support import REPO

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def name_for(worker: str) -> str:
    return f"ics-{REPO.name}-{os.getpid()}-{worker}"


def enter(worker: str) -> str:
    """Create namespace ics-<worktree>-<pid>-<worker>, bring lo up, move this thread into it."""
    name = name_for(worker)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
    return name


def delete(name: str) -> None:
    """Drop the name; the namespace itself goes when its last process exits."""
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
