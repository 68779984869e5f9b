"""A small synchronous AMI client for tests: every event, kept in order, waitable.

    tap = AmiTap.from_env()           # ICS_AMI_* from the environment or .stack/stack.env
    mark = tap.mark()
    ... do something ...
    ev = tap.wait_for({"Event": "AGIExecStart",
                       "Command": lambda v: v.startswith("GET DATA")}, 10, since=mark)
    tap.events({"Event": "Hangup"}, since=mark)
    tap.action("Originate", Channel="PJSIP/3125550100", Application="Echo", Async="true")
    tap.close()

A reader thread parses every message; events go into one list under a
condition variable, responses are matched to actions by ActionID. Action
values with CR or LF are refused: they would inject headers.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any, Callable, Mapping

from tests.support import stack_setting

Event = dict[str, str]
Matcher = Callable[[Event], bool] | Mapping[str, Any]


class AmiError(RuntimeError):
    pass


def matcher(match: Matcher) -> Callable[[Event], bool]:
    """A predicate from a callable or a dict {header: value | predicate(value)}."""
    if callable(match):
        return match
    items = list(match.items())

    def pred(ev: Event) -> bool:
        for key, want in items:
            if key not in ev:
                return False
            got = ev[key]
            if callable(want):
                if not want(got):
                    return False
            elif got != str(want):
                return False
        return True
    return pred


def _describe(match: Matcher) -> str:
    if callable(match):
        return getattr(match, "__name__", repr(match))
    return ", ".join(f"{k}={'<predicate>' if callable(v) else v!r}" for k, v in match.items())


def _short(ev: Event) -> str:
    keys = ("Event", "Channel", "Command", "Digit", "Direction", "Cause", "Exten", "Context",
            "Application", "AppData", "Response", "Message")
    return " ".join(f"{k}={ev[k]}" for k in keys if k in ev)


class AmiTap:
    def __init__(self, host: str = "127.0.0.1", port: int = 5038, user: str = "ics",
                 secret: str = "", timeout: float = 10.0, max_events: int = 200_000):
        self.host, self.port, self.user = host, int(port), user
        self._secret, self._timeout = secret, timeout
        self._wlock = threading.Lock()
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._offset = 0          # events dropped from the front when the list is trimmed
        self._max = max_events
        self._responses: dict[str, Event] = {}
        self._lists: dict[str, list[Event]] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._ids = itertools.count(1)
        self._connect()

    def _connect(self) -> None:
        self._buf = b""
        self._sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        self._sock.settimeout(None)
        self.banner = self._read_line(self._timeout)
        if not self.banner.startswith("Asterisk Call Manager"):
            raise AmiError(f"not an AMI server at {self.host}:{self.port}: {self.banner!r}")
        sock = self._sock
        self._reader = threading.Thread(target=self._read_loop, args=(sock,), name="ami-tap", daemon=True)
        self._reader.start()
        resp = self.action("Login", Username=self.user, Secret=self._secret, Events="on", timeout=self._timeout)
        if resp.get("Response") != "Success":
            self.close()
            raise AmiError(f"AMI login as {self.user!r} failed: {resp.get('Message')}")

    def reconnect(self, timeout: float = 30.0) -> None:
        """Log in again (after an Asterisk restart). Events kept so far, and marks, stay valid."""
        with self._cond:
            self._closed = True  # the old reader's error is not reported
        try:
            self._sock.close()
        except OSError:
            pass
        self._reader.join(2)
        with self._cond:
            self._closed = False
            self._error = None
        deadline = time.monotonic() + timeout
        while True:  # Asterisk may still be starting
            try:
                self._connect()
                return
            except (OSError, AmiError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def ensure_connected(self) -> None:
        """Before a test: a tap whose connection died with an Asterisk an earlier test killed logs in again."""
        with self._cond:
            dead = self._error is not None or not self._reader.is_alive()
        if dead:
            self.reconnect()

    @classmethod
    def from_env(cls, **kw) -> "AmiTap":
        # the lab's own AMI user (docker/stack.sh: every event, CLI commands), not icsctl's least-privilege ics
        return cls(host=stack_setting("ICS_AMI_HOST", "127.0.0.1"),
                   port=int(stack_setting("ICS_AMI_PORT", "5038")),
                   user=stack_setting("ICS_STACK_AMI_LAB_USER", "") or stack_setting("ICS_AMI_USER", "ics"),
                   secret=stack_setting("ICS_STACK_AMI_LAB_SECRET", "") or stack_setting("ICS_AMI_SECRET", "") or "",
                   **kw)

    # ---- reading
    def _read_line(self, timeout: float) -> str:
        self._sock.settimeout(timeout)
        try:
            while b"\r\n" not in self._buf:
                chunk = self._sock.recv(4096)
                if not chunk:
                    raise AmiError("AMI closed the connection before its banner")
                self._buf += chunk
        finally:
            self._sock.settimeout(None)
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def _read_loop(self, sock: socket.socket) -> None:
        try:
            while True:
                while b"\r\n\r\n" not in self._buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise AmiError("AMI connection closed")
                    self._buf += chunk
                raw, self._buf = self._buf.split(b"\r\n\r\n", 1)
                msg: Event = {}
                for line in raw.decode("utf-8", "replace").split("\r\n"):
                    key, sep, value = line.partition(":")
                    if not sep:
                        continue
                    key = key.strip()
                    value = value[1:] if value.startswith(" ") else value
                    if key in msg:   # repeated headers (ChanVariable...) keep every value
                        msg[key] = msg[key] + "\n" + value
                    else:
                        msg[key] = value
                if msg:
                    self._dispatch(msg)
        except BaseException as e:  # noqa: BLE001 - reported to waiters
            with self._cond:
                if not self._closed:
                    self._error = e
                self._cond.notify_all()

    def _dispatch(self, msg: Event) -> None:
        with self._cond:
            msg["_t"] = f"{time.time():.6f}"
            aid = msg.get("ActionID")
            if "Response" in msg and aid:
                self._responses[aid] = msg
            elif "Event" in msg:
                if aid and aid in self._lists:
                    self._lists[aid].append(msg)
                self._events.append(msg)
                if len(self._events) > self._max:
                    drop = len(self._events) - self._max
                    del self._events[:drop]
                    self._offset += drop
            self._cond.notify_all()

    # ---- events
    def mark(self) -> int:
        """A position in the event stream: pass it as since= to see only later events."""
        with self._cond:
            return self._offset + len(self._events)

    def _slice(self, since: int | None) -> list[Event]:
        start = 0 if since is None else max(0, since - self._offset)
        return self._events[start:]

    def since(self, mark: int) -> list[Event]:
        with self._cond:
            return list(self._slice(mark))

    def events(self, match: Matcher | None = None, since: int | None = None) -> list[Event]:
        pred = matcher(match) if match is not None else (lambda e: True)
        with self._cond:
            return [e for e in self._slice(since) if pred(e)]

    def wait_for(self, match: Matcher, timeout: float = 10.0, since: int | None = None) -> Event:
        """The first event at or after since (default: all kept events) that matches."""
        pred = matcher(match)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                window = self._slice(since)
                for ev in window[checked:]:
                    if pred(ev):
                        return ev
                checked = len(window)
                if self._error is not None:
                    raise AmiError(f"AMI reader stopped: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    recent = "\n  ".join(_short(e) for e in window[-25:]) or "(none)"
                    raise TimeoutError(f"no AMI event matching {_describe(match)} in {timeout}s; "
                                       f"last {min(25, len(window))} of {len(window)} events:\n  {recent}")
                self._cond.wait(min(left, 0.5))
                # the list may have been trimmed meanwhile
                checked = min(checked, len(self._slice(since)))

    # ---- actions
    def action(self, name: str, timeout: float = 10.0, **headers: Any) -> Event:
        """Send an action, wait for its response. For event-list actions the list's
        events (up to its *Complete event) are in response['_events']."""
        aid = f"tap-{next(self._ids)}"
        lines = [f"Action: {name}", f"ActionID: {aid}"]
        for key, value in headers.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                text = str(v)
                if any(c in f"{key}{text}" for c in "\r\n"):
                    raise ValueError(f"AMI header {key!r} holds CR or LF")
                lines.append(f"{key}: {text}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._lists[aid] = []
        try:
            with self._wlock:
                self._sock.sendall(data)
            with self._cond:
                while aid not in self._responses:
                    if self._error is not None:
                        raise AmiError(f"AMI reader stopped: {self._error}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no response to AMI action {name} in {timeout}s")
                    self._cond.wait(min(left, 0.5))
                resp = dict(self._responses.pop(aid))
                if resp.get("EventList") == "start" or "will follow" in resp.get("Message", ""):
                    def complete() -> bool:
                        return any(e.get("EventList") == "Complete" or e.get("Event", "").endswith("Complete")
                                   for e in self._lists[aid])
                    while not complete():
                        if self._error is not None:
                            raise AmiError(f"AMI reader stopped: {self._error}")
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError(f"AMI action {name}: event list not complete in {timeout}s")
                        self._cond.wait(min(left, 0.5))
                    resp["_events"] = list(self._lists[aid])
                return resp
        finally:
            with self._cond:
                self._lists.pop(aid, None)

    def command(self, cli: str, timeout: float = 10.0) -> str:
        """A CLI command through AMI; its output as text."""
        resp = self.action("Command", timeout=timeout, Command=cli)
        return resp.get("Output", resp.get("Message", ""))

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        try:
            with self._wlock:
                self._sock.sendall(b"Action: Logoff\r\nActionID: tap-logoff\r\n\r\n")
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(2)

    def __enter__(self) -> "AmiTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
