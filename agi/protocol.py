"""The AGI protocol layer, shared by process AGI (stdin/stdout) and FastAGI (a socket).

pyst2's AGI class gives the command surface (stream_file, get_data, ...), but
several of its parts are unsafe (see the lab notes), so this subclass replaces
them, in one place:

- every argument is quoted and escaped (backslash and double quote), and an
  argument carrying CR, LF or NUL is refused before anything is written: one
  command can never become two;
- the environment is read strictly: duplicate keys, lines without a colon or
  non-UTF-8 bytes end the session (a caller ID with a newline cannot forge
  agi_extension or end the environment early without being noticed);
- a bare `HANGUP` notice before a reply is remembered and the real reply is
  still read, so replies never shift by one;
- `511` (command on a dead channel) raises ChannelGone, `result=-1` raises
  ChannelGone, malformed or missing replies raise ProtocolError;
- no signal handler is installed (it raises outside the main thread) and
  nothing is printed to the AGI stream except commands.
"""

from __future__ import annotations

import re
from typing import IO, Mapping

from asterisk import agi as pyst2

ENV_LINE = re.compile(r"^(agi_[a-z_0-9]+): ?(.*)$")
REPLY = re.compile(r"^(\d{3})(?:[ -](.*))?$")
DIGITS = re.compile(r"^[0-9*#]*$")
RESULT = re.compile(r"^result=(-?[0-9A-Za-z*#]*)(?: \((.*)\))?(?: endpos=(\d+))?\s*$")
FORBIDDEN = ("\r", "\n", "\0")
MAX_LINE = 8192


class AGIFailure(pyst2.AGIError):
    """Base of every error this layer raises."""


class ProtocolError(AGIFailure):
    """Asterisk (or whatever is on the other end) did not speak AGI."""


class UnsafeArgument(AGIFailure, ValueError):
    """An argument would have split the command line."""


class ChannelGone(AGIFailure, pyst2.AGIHangup):
    """The channel hung up: only commands that do not touch it can still work."""


def quote(value) -> str:
    """One AGI argument, always double-quoted with \\ and \" escaped."""
    if isinstance(value, bool):
        raise UnsafeArgument(f"boolean argument {value!r}")
    text = str(value)
    for ch in FORBIDDEN:
        if ch in text:
            raise UnsafeArgument(f"argument carries {ch!r}: {text[:40]!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_env(rfile: IO[bytes]) -> dict[str, str]:
    env: dict[str, str] = {}
    while True:
        raw = rfile.readline(MAX_LINE)
        if not raw:
            raise ProtocolError("connection closed while reading the AGI environment")
        if not raw.endswith(b"\n"):
            raise ProtocolError("AGI environment line too long or unterminated")
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ProtocolError("AGI environment is not UTF-8") from None
        if line == "":
            break
        m = ENV_LINE.match(line)
        if not m:
            raise ProtocolError(f"malformed AGI environment line {line[:60]!r}")
        key, value = m.groups()
        if key in env:
            raise ProtocolError(f"duplicate AGI environment key {key}")
        env[key] = value
    if "agi_channel" not in env:
        raise ProtocolError("AGI environment has no agi_channel")
    return env


class SafeAGI(pyst2.AGI):
    """pyst2's AGI surface over any binary reader/writer pair, with a safe wire layer."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], env: Mapping[str, str] | None = None):
        # pyst2.AGI.__init__ installs a SIGHUP handler and chatters on stderr: skip it.
        self.rfile = rfile
        self.wfile = wfile
        self._got_sighup = False
        self.hangup_seen = False
        self.env = dict(env) if env is not None else read_env(rfile)

    # pyst2 methods call _quote on some arguments and not others; quoting now
    # happens once, for every argument, in send_command.
    def _quote(self, string):
        return string

    def test_hangup(self):
        return None

    def send_command(self, command, *args):
        parts = [command.strip()]
        for a in args:
            if isinstance(a, (list, tuple)):
                raise UnsafeArgument("nested argument list")
            parts.append(quote(a))
        line = " ".join(parts)
        if any(ch in command for ch in FORBIDDEN):
            raise UnsafeArgument("command name carries a line break")
        self.wfile.write(line.encode("utf-8") + b"\n")
        self.wfile.flush()

    def execute(self, command, *args):
        try:
            self.send_command(command, *args)
        except (BrokenPipeError, ConnectionResetError):
            raise ChannelGone("AGI connection closed") from None
        return self.get_result()

    def _readline(self) -> str:
        try:
            raw = self.rfile.readline(MAX_LINE)
        except (ConnectionResetError, OSError) as exc:
            raise ChannelGone(f"AGI connection lost: {exc}") from None
        if not raw:
            raise ChannelGone("AGI connection closed")
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ProtocolError("AGI reply is not UTF-8") from None

    def get_result(self, stdin=None):
        line = self._readline()
        while line == "HANGUP":
            # FastAGI's hangup notice arrives on its own line, before or between
            # replies: note it and read on, so the next reply is still this command's.
            self.hangup_seen = True
            line = self._readline()
        m = REPLY.match(line)
        if not m:
            raise ProtocolError(f"malformed AGI reply {line[:80]!r}")
        code, rest = int(m.group(1)), m.group(2) or ""
        if code == 200:
            r = RESULT.match(rest)
            if not r:
                raise ProtocolError(f"malformed 200 reply {line[:80]!r}")
            value, data, endpos = r.groups()
            if value == "-1":
                raise ChannelGone(f"command failed on a hung-up channel ({line[:60]})")
            out = {"result": (value, data or "")}
            if endpos is not None:
                out["endpos"] = int(endpos)
            return out
        if code == 511:
            raise ChannelGone(rest or "dead channel")
        if code == 510:
            raise pyst2.AGIInvalidCommand(rest)
        if code == 520:
            usage = [line]
            while not line.startswith("520 "):
                line = self._readline()
                usage.append(line)
                if len(usage) > 200:
                    raise ProtocolError("unterminated 520 usage reply")
            raise pyst2.AGIUsageError("\n".join(usage))
        raise ProtocolError(f"unexpected AGI reply code {code}")

    # --- the few commands the call flows use, with pyst2's quirks ironed out --
    def get_variable(self, name):
        """Value or '' when unset (pyst2 returns the literal 'hangup' text in some paths)."""
        res = self.execute("GET VARIABLE", name)
        value, data = res["result"]
        return data if value == "1" else ""

    def set_variable(self, name, value):
        self.execute("SET VARIABLE", name, value)

    def stream(self, sound: str, escape_digits: str = "") -> str:
        """Play a sound; returns the digit that interrupted it, or ''."""
        res = self.execute("STREAM FILE", sound, escape_digits, 0)
        return _digit(res["result"][0])

    def stream_at(self, sound: str, escape_digits: str, offset: int) -> tuple[str, int]:
        """Play a sound from a sample offset; returns (the digit that interrupted it or '',
        the sample it stopped at)."""
        res = self.execute("STREAM FILE", sound, escape_digits, int(offset))
        return _digit(res["result"][0]), res.get("endpos", 0)

    def wait_digit(self, timeout_ms: int) -> str:
        res = self.execute("WAIT FOR DIGIT", timeout_ms)
        return _digit(res["result"][0])

    def read_digits(self, sound: str, timeout_ms: int, max_digits: int) -> tuple[str, bool]:
        """GET DATA: returns (digits, timed_out)."""
        res = self.execute("GET DATA", sound, timeout_ms, max_digits)
        value, data = res["result"]
        return value if DIGITS.match(value) else "", data == "timeout"

    def say_number(self, number: int) -> None:
        self.execute("SAY NUMBER", int(number), "")

    def say_digits(self, digits: str) -> None:
        self.execute("SAY DIGITS", digits, "")

    def record(self, path: str, fmt: str, max_ms: int) -> None:
        self.execute("RECORD FILE", path, fmt, "#", max_ms, 0, "beep")


def _digit(result: str) -> str:
    if result in ("", "0"):
        return ""
    try:
        return chr(int(result))
    except ValueError:
        raise ProtocolError(f"not a digit code: {result!r}") from None
