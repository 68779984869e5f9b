"""Asterisk's RTP port range against capacity.max_calls (issue 9): ics-fastagi refuses to start,
naming the file and the numbers, when the range cannot carry the calls it is configured for.
(Calls past max_calls are refused by admission control: tests/unit/test_admission.py.)"""

from __future__ import annotations

import re

import pytest

from agi.server import preflight
from ics import config
from ics.store import Store, connect
from tests.support import REPO

RTP_CONF = REPO / "dialplan" / "rtp.conf"


def rtp_conf(tmp_path, start: int, end: int, sep: str = "=") -> str:
    p = tmp_path / "rtp.conf"
    p.write_text(f"; test\n[general]\nrtpstart {sep} {start} ; first\nrtpend {sep} {end}\n[other]\nrtpend = 1\n")
    return str(p)


def test_the_shipped_range_carries_twice_the_measured_ceiling_with_headroom():
    # dialplan/rtp.conf is what the chroot stack and both docker images load
    assert config.read_rtp_range(RTP_CONF) == (20000, 23999)
    assert config.check_rtp_range(RTP_CONF, 100) == 4000      # the default max_calls
    assert config.check_rtp_range(RTP_CONF, 250) == 4000
    assert config.check_rtp_range(RTP_CONF, 500) == 4000      # 2x the 250 calls the box carries
    with pytest.raises(config.ConfigError):
        config.check_rtp_range(RTP_CONF, 501)


def test_a_range_too_small_is_refused_with_the_file_and_the_numbers(tmp_path):
    path = rtp_conf(tmp_path, 20000, 20999)  # the old 1,000 ports
    with pytest.raises(config.ConfigError) as err:
        config.check_rtp_range(path, 250)
    msg = str(err.value)
    assert path in msg and "rtpstart=20000 rtpend=20999 gives 1000 RTP ports" in msg
    assert "capacity.max_calls=250 needs 2000" in msg and "raise rtpend to at least 21999" in msg
    assert config.check_rtp_range(rtp_conf(tmp_path, 20000, 21999, "=>"), 250) == 2000  # "=>" as Asterisk allows


@pytest.mark.parametrize("text,why", [
    ("[general]\nrtpstart = 20000\n", "no rtpend in [general]"),
    ("[general]\nrtpstart = 20000\nrtpend = lots\n", "rtpend must be a port number"),
    ("[other]\nrtpstart = 1\nrtpend = 99999\n", "no rtpstart or rtpend in [general]"),
])
def test_an_unreadable_range_is_refused(tmp_path, text, why):
    p = tmp_path / "rtp.conf"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(why)):
        config.read_rtp_range(p)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.read_rtp_range(tmp_path / "absent.conf")


def test_max_calls_is_layered_and_validated(tmp_path):
    assert config.load(environ={})["capacity"] == {"max_calls": 100, "rtp_conf": "/etc/asterisk/rtp.conf"}
    assert config.load(environ={"ICS_CAPACITY_MAX_CALLS": "400"})["capacity"]["max_calls"] == 400
    for bad in ("0", "-5", "20000"):
        with pytest.raises(config.ConfigError, match="capacity.max_calls must be 1 to 10000"):
            config.load(environ={"ICS_CAPACITY_MAX_CALLS": bad})


def test_fastagi_does_not_start_on_a_range_too_small(redis_url, tmp_path):
    env = {"ICS_REDIS_URL": redis_url, "ICS_SOUNDS_DIR": str(tmp_path / "sounds"),
           "ICS_CAPACITY_RTP_CONF": rtp_conf(tmp_path, 20000, 20999), "ICS_CAPACITY_MAX_CALLS": "250"}
    cfg = config.load(environ=env)
    store = Store(connect(cfg), cfg)
    try:
        problems = preflight(cfg, store)
        assert any("rtpstart=20000 rtpend=20999" in p and "capacity.max_calls=250" in p for p in problems), problems
        cfg = config.load(environ=dict(env, ICS_CAPACITY_RTP_CONF=str(RTP_CONF)))
        assert not [p for p in preflight(cfg, store) if "rtp" in p], "the shipped range passes"
    finally:
        store.r.close()


def test_the_bench_judges_a_ceiling_by_most_of_its_runs_at_each_n():
    """make capacity REPEAT=3: one run on a shared box can be clean or not at the same N."""
    from bench.capacity.capacity import ceiling_of

    assert ceiling_of({170: [True], 180: [False]}) == 170
    assert ceiling_of({180: [True, True, False], 190: [True, False, False]}) == 180  # 1 of 3 is not most
    assert ceiling_of({180: [True, False]}) == 0                                      # a tie is not most
    assert ceiling_of({160: [False, False, True], 190: [True, True, False]}) == 190  # the highest such N
    assert ceiling_of({}) == 0
