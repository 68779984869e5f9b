"""Kill and restart one part of the lab stack from a test: the Python services
(fastagi, ami), redis-server (redis; on the Redis Cluster lab, all six nodes) and Asterisk (asterisk).

    pid = services.kill("fastagi")     # SIGKILL the pid in .stack/run/fastagi.pid, wait until gone
    services.restart("fastagi")        # docker/stack.sh up: starts only what is not running

`restart` goes through docker/stack.sh (the one place that knows how a service
is started) and waits until the service is ready: the FastAGI port listening
(stack.sh does that), Redis answering PING and Asterisk fully booted (stack.sh),
the listener logged in to AMI (a new ami.connected line; also after an Asterisk
restart, since the listener reconnects). An Asterisk started by stack.sh has an
empty registrar: phones must register again. `asterisk_cli("core restart now")`
restarts it in place instead (same process, registrations kept in astdb).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.support import REPO, stack_dir, stack_setting

NAMES = {"fastagi", "ami", "recorder", "redis", "asterisk"}
last_up_at = 0.0  # epoch s when the last restart's docker/stack.sh up returned (the part is ready)


def redis_cluster() -> list[int] | None:
    """On the Redis Cluster lab (ICS_REDIS_CLUSTER), the pids of its six nodes: "redis" is all
    of them there (Redis down = the whole cluster down); None on a single Redis."""
    if (stack_setting("ICS_REDIS_CLUSTER") or "").lower() not in ("1", "true", "yes", "on"):
        return None
    pids = []
    for f in sorted((stack_dir() / "redis-cluster").glob("*/redis.pid")):
        try:
            pids.append(int(f.read_text().strip()))
        except (FileNotFoundError, ValueError):
            continue
    return pids


def pid(name: str) -> int | None:
    if name == "redis" and redis_cluster() is not None:
        return next(iter(redis_cluster()), None)
    try:
        return int((stack_dir() / "run" / f"{name}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(p: int | None) -> bool:
    if not p:
        return False
    try:
        os.kill(p, 0)
    except ProcessLookupError:
        return False
    # a killed child of ours stays a zombie until reaped; it is gone for our purposes
    try:
        with open(f"/proc/{p}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill(name: str, timeout: float = 5) -> int:
    """SIGKILL the service (no clean shutdown: what a crash or OOM kill does)."""
    if name not in NAMES and name.rpartition("-")[0] not in NAMES:  # a cluster node's: asterisk-a
        raise ValueError(f"not a restartable service: {name!r}")
    p = pid(name)
    if not alive(p):
        raise RuntimeError(f"{name} is not running (pidfile {stack_dir() / 'run' / f'{name}.pid'})")
    every = (redis_cluster() if name == "redis" else None) or [p]
    for q in every:
        os.kill(q, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not all(gone(q) for q in every):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} (pid {p}) still alive {timeout}s after SIGKILL")
        time.sleep(0.05)
    return p


def gone(p: int) -> bool:
    """Dead with every thread: a killed process's leader turns zombie while its other threads
    still exit holding its sockets (a FastAGI's listening one took connections then)."""
    try:
        tasks = os.listdir(f"/proc/{p}/task")
    except FileNotFoundError:
        return True
    return not alive(p) and len(tasks) <= 1


def _events(name: str, event: str) -> int:
    path = stack_dir() / "log" / f"{name}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if f'"event": "{event}"' in line)


def log_events(name: str, event: str, call_id: str) -> list[dict]:
    """The JSON log lines of one service naming event and call_id."""
    out = []
    path = stack_dir() / "log" / f"{name}.log"
    for line in path.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line and call_id in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def restart(name: str, timeout: float = 30, env: dict[str, str] | None = None) -> int:
    """Start the service again with docker/stack.sh up; returns its new pid once it is ready.
    env: settings for what starts (ICS_*, over the defaults; stack.env still wins)."""
    if name not in NAMES:
        raise ValueError(f"not a restartable service: {name!r}")
    logins = _events("ami", "ami.connected")
    subprocess.run(["bash", str(REPO / "docker" / "stack.sh"), "up"], check=True, timeout=timeout,
                   capture_output=True, env={**os.environ, **(env or {})})
    global last_up_at
    last_up_at = time.time()
    p = pid(name)
    if not alive(p):
        raise RuntimeError(f"{name} did not start (log: {stack_dir() / 'log' / f'{name}.log'})")
    if name in ("ami", "asterisk"):  # the listener reconnects to a restarted Asterisk by itself
        deadline = time.monotonic() + timeout
        while _events("ami", "ami.connected") <= logins:
            if time.monotonic() > deadline:
                raise RuntimeError("ics-ami started but did not log in to AMI")
            time.sleep(0.1)
    return p


def asterisk_cli(command: str, timeout: float = 10) -> str:
    """One Asterisk CLI command through the chroot's control socket."""
    root = stack_dir() / "asterisk"
    r = subprocess.run(["chroot", str(root), "asterisk", "-rx", command], capture_output=True, text=True,
                       timeout=timeout)
    return r.stdout


def wait_asterisk_booted(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "fully booted" in asterisk_cli("core waitfullybooted", timeout=5).lower():
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"Asterisk not fully booted within {timeout}s")
