"""A second Asterisk from our root, with its own config, dirs and ports: a far end.

    far = FarEnd("carrier", REPO / "tests/e2e/carrier", ami_port=5041, ami_user="carrier")
    far.start()            # config copied to /etc/asterisk-carrier in the root, booted, AMI tap logged in
    far.tap.wait_for({"Event": "Flash"}, 10)
    far.cli("core show channels")
    far.stop()

The config dir holds the far end's own asterisk.conf (every directory /…/asterisk-<name>, no
`(!)` after [directories]), modules.conf, manager.conf (user ami_user, secret @SECRET@) and the
rest; the core files it shares with ours come from dialplan/. @SECRET@ (a new AMI secret each
start) and any `subs` are filled in. Started as docker/stack.sh starts ours (in the root, as the
asterisk user, the loopback shim preloaded), plus -C for its asterisk.conf. Used by the capacity
and three-way benches (bench/capacity/) and the carrier e2e tests (tests/e2e/test_carrier.py).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from tests.support import REPO, stack_dir
from tests.support.ami_tap import AmiTap

SHIM = "/usr/local/lib/ics-bind-loopback.so"  # docker/stack.sh provision_shim
CORE_CONFS = ("acl", "ccss", "cel", "features", "indications", "pjproject", "stasis", "udptl")


class FarEnd:
    def __init__(self, name: str, conf_dir: Path, ami_port: int, ami_user: str,
                 subs: dict[str, str] | None = None, nice: int = 0):
        self.name, self.conf_dir = name, Path(conf_dir)
        self.nice = nice  # its threads' niceness (all inherit the process's)
        self.ami_port, self.ami_user = ami_port, ami_user
        self.subs = dict(subs or {})
        self.stack = stack_dir()
        self.root = self.stack / "asterisk"
        self.etc = f"/etc/asterisk-{name}"  # inside the root
        self.dirs = tuple(f"{d}-{name}" for d in ("/etc/asterisk", "/run/asterisk", "/var/log/asterisk",
                                                   "/var/spool/asterisk", "/var/lib/asterisk", "/var/cache/asterisk"))
        self.ctl = self.root / f"run/asterisk-{name}/asterisk.ctl"
        self.pidfile = self.stack / "run" / f"{name}.pid"
        self.log = self.root / f"var/log/asterisk-{name}/messages.log"
        self.secret = ""  # the AMI user's, new at each start
        self.proc: subprocess.Popen | None = None
        self.tap: AmiTap | None = None

    def path(self, inside: str) -> Path:
        """A path inside the root, on the host."""
        return self.root / inside.lstrip("/")

    def in_root(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        out = subprocess.run(["chroot", str(self.root), *cmd], capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def cli(self, cmd: str) -> str:
        if not self.ctl.exists():  # never let a -rx fall through to our Asterisk's socket
            raise RuntimeError(f"the far end {self.name} is not running")
        return self.in_root("asterisk", "-C", f"{self.etc}/asterisk.conf", "-rx", cmd)

    def write_config(self) -> None:
        """The config dir into the root, @SECRET@ and subs filled in (again after a change of
        subs: then reload what changed, e.g. far.cli("module reload res_pjsip.so"))."""
        etc = self.path(self.etc)
        core = [REPO / "dialplan" / f"{c}.conf" for c in CORE_CONFS]
        for f in [*core, *self.conf_dir.glob("*.conf")]:
            text = f.read_text().replace("@SECRET@", self.secret)
            for key, value in self.subs.items():
                text = text.replace(f"@{key}@", value)
            (etc / f.name).write_text(text)

    def start(self) -> None:
        self.stop()  # one left over from an interrupted run
        for d in self.dirs:
            self.path(d).mkdir(parents=True, exist_ok=True)
        self.secret = secrets.token_hex(16)
        self.write_config()
        self.path(f"/var/lib/asterisk-{self.name}/astdb.sqlite3").unlink(missing_ok=True)
        self.in_root("chown", "-R", "asterisk:asterisk", *self.dirs)
        preload = SHIM if self.path(SHIM).exists() else ""
        (self.stack / "log").mkdir(parents=True, exist_ok=True)
        with open(self.stack / "log" / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["chroot", "--userspec=asterisk:asterisk", str(self.root), "env", "-i",
                 f"HOME=/var/lib/asterisk-{self.name}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                 f"LD_PRELOAD={preload}", "asterisk", "-f", "-n", "-C", f"{self.etc}/asterisk.conf"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        self.pidfile.write_text(str(self.proc.pid))
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the far end exited at start (log: {self.stack / 'log' / f'{self.name}.log'})")
            try:
                self.cli("core waitfullybooted")
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the far end {self.name} did not boot in 15 s") from None
                time.sleep(0.25)
        self.tap = AmiTap(port=self.ami_port, user=self.ami_user, secret=self.secret)

    def stop(self) -> None:
        if self.tap:
            self.tap.close()
            self.tap = None
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        try:
            self.cli("core stop now")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists() or (self.proc and self.proc.poll() is not None):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
        self.pidfile.unlink(missing_ok=True)
