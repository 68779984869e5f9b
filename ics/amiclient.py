"""A small blocking AMI client for icsctl: log in, send an action, read its answer.

The listener (ami/) keeps a long-lived asyncio connection for events; icsctl only
needs a few request/response actions (Originate, Hangup, Redirect,
CoreShowChannels), so it opens a short connection per command. Header values are
checked for CR/LF (no header injection); every read has a deadline.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from .config import Config


class AmiError(RuntimeError):
    """AMI refused an action or could not be reached: the message is for a human."""


class AmiClient:
    def __init__(self, host: str, port: int, user: str, secret: str, timeout_s: float = 5.0):
        self.timeout_s = timeout_s
        self._n = 0
        self._buf = b""
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise AmiError(f"cannot reach AMI at {host}:{port}: {exc}") from None
        self._readline()  # "Asterisk Call Manager/x.y.z"
        resp = self.action("Login", Username=user, Secret=secret, Events="off")
        if resp.get("Response") != "Success":
            self.close()
            raise AmiError(f"AMI login as {user!r} refused: {resp.get('Message', '')}")

    @classmethod
    def from_config(cls, cfg: Config) -> "AmiClient":
        a = cfg["ami"]
        if not a["secret"]:
            raise AmiError("ami.secret is empty (set ICS_AMI_SECRET)")
        return cls(a["host"], a["port"], a["user"], a["secret"])

    def _readline(self) -> str:
        deadline = time.monotonic() + self.timeout_s
        while b"\r\n" not in self._buf:
            if time.monotonic() > deadline:
                raise AmiError("AMI did not answer in time")
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise AmiError("AMI did not answer in time") from None
            if not chunk:
                raise AmiError("AMI closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line.decode(errors="replace")

    def _message(self) -> dict[str, str]:
        msg: dict[str, str] = {}
        while True:
            line = self._readline()
            if not line:
                if msg:
                    return msg
                continue
            key, _, value = line.partition(": ")
            msg[key] = value if key not in msg else msg[key] + "\n" + value

    def action(self, name: str, **headers: Any) -> dict[str, Any]:
        """Send one action; its response, with any event list in ['events']."""
        self._n += 1
        aid = f"icsctl-{self._n}"
        lines = [f"Action: {name}", f"ActionID: {aid}"]
        for key, value in headers.items():
            for v in value if isinstance(value, (list, tuple)) else [value]:
                text = str(v)
                if any(c in key + text for c in "\r\n\0"):
                    raise AmiError(f"AMI header {key} holds a line break")
                lines.append(f"{key}: {text}")
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while True:
            msg = self._message()
            if msg.get("ActionID") == aid and "Response" in msg:
                break
        events: list[dict[str, str]] = []
        if msg.get("EventList") == "start":
            while True:
                ev = self._message()
                if ev.get("ActionID") != aid:
                    continue
                if ev.get("EventList") == "Complete":
                    break
                events.append(ev)
        return {**msg, "events": events}

    def channels(self) -> list[dict[str, str]]:
        """Every live channel (CoreShowChannels): Channel, Uniqueid, Linkedid, Application, ..."""
        return self.action("CoreShowChannels")["events"]

    def close(self) -> None:
        try:
            self._sock.sendall(b"Action: Logoff\r\n\r\n")
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> "AmiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
