"""The AGI wire layer against replayed Asterisk transcripts (no Asterisk needed).

Each test feeds what Asterisk would send and checks what we wrote back, so the
pyst2 and panoramisk bugs from the lab notes are proven absent here.
"""

import io
import socket
import threading

import pytest
from asterisk import agi as pyst2

from agi.protocol import (ChannelGone, ProtocolError, SafeAGI, UnsafeArgument,
                          quote, read_env)

ENV = (
    b"agi_network: yes\n"
    b"agi_network_script: inmate\n"
    b"agi_request: agi://127.0.0.1:4573/inmate\n"
    b"agi_channel: PJSIP/inmate1-00000001\n"
    b"agi_uniqueid: 1700000000.1\n"
    b"agi_callerid: 100\n"
    b'agi_calleridname: Bob "the" \\Builder\n'
    b"agi_extension: 3125550100\n"
    b"\n"
)


def make(replies: bytes, env: bytes = ENV):
    out = io.BytesIO()
    agi = SafeAGI(io.BytesIO(env + replies), out)
    return agi, out


def sent(out: io.BytesIO) -> list[str]:
    return out.getvalue().decode().splitlines()


def test_environment_is_read_up_to_the_blank_line():
    agi, out = make(b"")
    assert agi.env["agi_extension"] == "3125550100"
    assert agi.env["agi_calleridname"] == 'Bob "the" \\Builder'
    assert out.getvalue() == b""  # nothing sent before the environment is read


def test_every_argument_is_quoted_and_escaped():
    agi, out = make(b"200 result=1\n")
    agi.set_variable("NAME", 'a" \\ b')
    assert sent(out) == ['SET VARIABLE "NAME" "a\\" \\\\ b"']


def test_quote_survives_asterisk_style_parsing():
    # Asterisk's parse_args: quotes group, backslash escapes the next char.
    def parse(line):
        args, cur, inq, esc, started = [], "", False, False, False
        for ch in line:
            if esc:
                cur += ch
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                inq = not inq
                started = True
            elif ch == " " and not inq:
                if cur or started:
                    args.append(cur)
                cur, started = "", False
            else:
                cur += ch
        if cur or started:
            args.append(cur)
        return args

    for value in ['plain', 'with space', 'q"uote', 'back\\slash', '"; HANGUP', '\\"', '']:
        assert parse("SET VARIABLE " + quote("X") + " " + quote(value))[2:] == ["X", value]


@pytest.mark.parametrize("evil", ["x\nHANGUP", "x\rEXEC Dial", "nul\0byte", "\r\n"])
def test_line_breaks_never_reach_the_wire(evil):
    agi, out = make(b"200 result=1\n")
    with pytest.raises(UnsafeArgument):
        agi.set_variable("CALLERNAME", evil)
    assert out.getvalue() == b""  # refused before anything was written


def test_pyst2_methods_that_forget_to_quote_are_quoted_too():
    # pyst2's set_callerid passes its argument raw; here it is still one argument.
    agi, out = make(b"200 result=1\n")
    agi.set_callerid('"Evil" <1> EXEC Dial')
    assert sent(out) == ['SET CALLERID "\\"Evil\\" <1> EXEC Dial"']


def test_hangup_notice_before_a_reply_does_not_shift_replies():
    agi, out = make(b"HANGUP\n200 result=1 (first)\n200 result=1 (second)\n")
    assert agi.get_variable("A") == "first"
    assert agi.hangup_seen
    assert agi.get_variable("B") == "second"


def test_dead_channel_511_raises_channel_gone():
    agi, _ = make(b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n")
    with pytest.raises(ChannelGone):
        agi.stream("ics/prompts/goodbye")
    assert isinstance(ChannelGone("x"), pyst2.AGIHangup)  # pyst2 callers catching AGIHangup still work


def test_result_minus_one_is_a_hangup():
    agi, _ = make(b"200 result=-1 endpos=0\n")
    with pytest.raises(ChannelGone):
        agi.stream("x", "12")


@pytest.mark.parametrize("reply", [b"garbage\n", b"200 reslt=1\n", b"\xff\xfe\n", b"99 result=0\n", b"600 foo\n"])
def test_malformed_replies_raise_protocol_error(reply):
    agi, _ = make(reply)
    with pytest.raises(ProtocolError):
        agi.get_variable("X")


def test_closed_connection_is_a_hangup_not_a_crash():
    agi, _ = make(b"")
    with pytest.raises(ChannelGone):
        agi.answer()


def test_empty_line_reply_is_malformed():
    agi, _ = make(b"\n")
    with pytest.raises(ProtocolError):
        agi.answer()


def test_520_usage_reply_is_consumed_whole():
    agi, _ = make(b"520-Invalid command syntax.  Proper usage follows:\nUsage: GET DATA\n520 End of proper usage.\n200 result=1 (ok)\n")
    with pytest.raises(pyst2.AGIUsageError):
        agi.execute("GET DATA")
    assert agi.get_variable("X") == "ok"  # the stream is still in step


def test_get_data_digits_and_timeout():
    agi, _ = make(b"200 result=1234 (timeout)\n200 result=98#*\n200 result= (timeout)\n")
    assert agi.read_digits("p", 1000, 4) == ("1234", True)
    assert agi.read_digits("p", 1000, 4) == ("98#*", False)
    assert agi.read_digits("p", 1000, 4) == ("", True)


def test_stream_returns_the_interrupting_digit():
    agi, out = make(b"200 result=49 endpos=1200\n200 result=0 endpos=8000\n")
    assert agi.stream("ics/prompts/menu-accept", "1239") == "1"
    assert agi.stream("ics/prompts/menu-accept", "1239") == ""
    assert sent(out)[0] == 'STREAM FILE "ics/prompts/menu-accept" "1239" "0"'


@pytest.mark.parametrize("env", [
    b"agi_channel: X\nagi_extension: 1\nagi_extension: 2\n\n",   # duplicate key (forged by a newline)
    b"agi_channel: X\nnot an env line\n\n",                      # newline inside a caller ID
    b"agi_channel: X\n",                                         # connection closed mid-environment
    b"agi_extension: 1\n\n",                                     # no channel
    b"agi_channel: \xff\n\n",                                    # not UTF-8
])
def test_malformed_environment_is_refused(env):
    with pytest.raises(ProtocolError):
        read_env(io.BytesIO(env))


def test_works_over_a_socket_from_a_non_main_thread():
    # pyst2's own AGI() installs a signal handler and raises off the main thread.
    a, b = socket.socketpair()
    result = {}

    def serve():
        agi = SafeAGI(a.makefile("rb"), a.makefile("wb"))
        result["value"] = agi.get_variable("X")

    t = threading.Thread(target=serve)
    t.start()
    b.sendall(ENV)
    f = b.makefile("rb")
    assert f.readline() == b'GET VARIABLE "X"\n'
    b.sendall(b"200 result=1 (hello world)\n")
    t.join(2)
    assert result["value"] == "hello world"
    a.close()
    b.close()
