"""The cluster for the end-to-end tests and the farm bench: Kamailio in front of call nodes
(docker/stack.sh up-cluster), beside the single box in the same namespace (Redis shared).

    cluster.up()                        # docker/stack.sh up-cluster (starts what is not running)
    taps = cluster.Taps.open()          # an AMI tap on every node, read as one
    mark = taps.mark(); ...; taps.wait_for({...}, 10, since=mark)   # as AmiTap, over all nodes
    cluster.kill_node("a")              # SIGKILL its Asterisk, FastAGI and listener: a box dying
    cluster.down()

Events from Taps carry "_node" (the node whose AMI sent them), so the call-flow helpers
written for the single box's tap (tests.support.callflow) work unchanged on the cluster.
"""

from __future__ import annotations

import subprocess
import time

from tests.support import REPO, read_stack_env, services, stack_dir
from tests.support.ami_tap import AmiTap, Event, Matcher, matcher

KAMAILIO = "127.0.0.4:5060"   # docker/stack.sh KAMAILIO_ADDR
NODES = ("a", "b")            # docker/stack.sh CLUSTER_NODES
STACK_SH = REPO / "docker" / "stack.sh"


def up(timeout: float = 120) -> None:
    subprocess.run(["bash", str(STACK_SH), "up-cluster"], check=True, timeout=timeout, capture_output=True)


def down(timeout: float = 120) -> None:
    subprocess.run(["bash", str(STACK_SH), "down-cluster"], timeout=timeout, capture_output=True)


def node_env(node: str) -> dict[str, str]:
    return read_stack_env(stack_dir() / f"node-{node}.env")


def asterisk_log(node: str):
    return stack_dir() / "log" / f"asterisk-{node}.log"


def kill_node(node: str) -> None:
    """The whole node dies at once (power, kernel panic): SIGKILL, nothing cleans up."""
    for name in (f"asterisk-{node}", f"ami-{node}", f"fastagi-{node}"):
        services.kill(name)


class Taps:
    """AMI taps on every node, with AmiTap's mark / events / wait_for over all of them."""

    def __init__(self, taps: dict[str, AmiTap]):
        self.taps = taps

    @classmethod
    def open(cls, nodes=NODES) -> "Taps":
        taps = {}
        for node in nodes:
            env = node_env(node)
            # the lab's AMI user (every event), not icsctl's least-privilege ics (docker/stack.sh)
            taps[node] = AmiTap(host=env["ICS_AMI_HOST"], port=int(env.get("ICS_AMI_PORT", "5038")),
                                user=env.get("ICS_STACK_AMI_LAB_USER") or env.get("ICS_AMI_USER", "ics"),
                                secret=env.get("ICS_STACK_AMI_LAB_SECRET") or env["ICS_AMI_SECRET"])
        return cls(taps)

    def mark(self) -> dict[str, int]:
        return {node: tap.mark() for node, tap in self.taps.items()}

    def events(self, match: Matcher | None = None, since: dict[str, int] | None = None) -> list[Event]:
        pred = matcher(match) if match is not None else (lambda e: True)
        out = []
        for node, tap in self.taps.items():  # a killed node's tap keeps the events it got
            out += [e for e in (dict(e, _node=node) for e in tap.events(None, (since or {}).get(node))) if pred(e)]
        return out

    def wait_for(self, match: Matcher, timeout: float = 10.0, since: dict[str, int] | None = None) -> Event:
        pred = matcher(match)
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(pred, since)
            if found:
                return min(found, key=lambda e: float(e.get("_t", 0)))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no AMI event matching on any node in {timeout}s")
            time.sleep(0.05)

    def ensure_connected(self) -> None:
        """A node killed and started again: its tap logs in again (events kept so far stay)."""
        for tap in self.taps.values():
            tap.ensure_connected()

    def close(self) -> None:
        for tap in self.taps.values():
            tap.close()
