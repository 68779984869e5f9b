"""ics-recorder's mixing (ics.recorder, issue 9): packets placed by their RTP timestamps on the
bridge's timeline, both directions summed, what no packet covered left out (so lost audio comes
out short and is flagged); and the recordings.method setting."""

import os
import resource
import threading
import time
import wave

import numpy as np
import pytest

from ics import config, recorder, recordings, records
from tests.support.packets import batch, rtp_packet, udp_packet

START = 1_000_000  # bridged_ms
ULAW_ZERO = 0xFF   # G.711 mu-law silence
SSRC = 0x1234


def frames(first_ms: float, count: int, value: int, pt: int = 0, ssrc: int = SSRC, ts0: int = 160,
           jitter_ms: float = 0.0, skip: set[int] = frozenset()):
    """count 20 ms packets of one byte value, arriving from first_ms (each jitter_ms late, alternately)."""
    return [recorder.Chunk.of((first_ms + 20 * i + (jitter_ms if i % 2 else 0), pt, ssrc, (ts0 + 160 * i) & 0xFFFFFFFF,
                              bytes([value]) * 160) for i in range(count) if i not in skip)]


def test_ulaw_and_alaw_decode_as_g711():
    assert recorder.DECODE[0][ULAW_ZERO] == 0 and recorder.DECODE[0][0x00] == -32124
    assert recorder.DECODE[8][0xD5] == 8 and recorder.DECODE[8][0x55] == -8


def test_both_directions_summed_for_the_whole_bridge():
    to_phone = frames(START, 50, 0x80)      # 1 s of the inmate (mu-law 0x80: +32124)
    from_phone = frames(START + 5, 50, 0xFE)  # the family, 5 ms behind
    audio = recorder.mix((to_phone, from_phone), START, START + 1000)
    assert len(audio) == 8000
    assert int(audio[4000]) == min(32767, int(recorder.DECODE[0][0x80]) + int(recorder.DECODE[0][0xFE]))


def test_lost_packets_make_the_recording_shorter_by_their_time():
    lost = set(range(10, 60))  # 1 s of 3 s lost in both directions
    audio = recorder.mix((frames(START, 150, 0x90, skip=lost), frames(START, 150, 0xA0, skip=lost)),
                         START, START + 3000)
    assert len(audio) * 1000 // recorder.RATE == 2000


def test_one_direction_is_enough_to_cover_a_stretch():
    audio = recorder.mix((frames(START, 150, 0x90, skip=set(range(50, 100))), frames(START, 150, ULAW_ZERO)),
                         START, START + 3000)
    assert len(audio) == 3 * recorder.RATE


def test_timestamps_place_jittered_packets_without_gaps_or_overlaps():
    # arriving up to 15 ms late every other packet: by arrival they would collide, by timestamp not
    audio = recorder.mix((frames(START, 100, 0x90, jitter_ms=15), []), START, START + 2000)
    assert len(audio) == 2 * recorder.RATE and (audio == recorder.DECODE[0][0x90]).all()


def test_packets_of_other_sizes_are_placed_by_their_own_length():
    # 20 ms packets, then 30 ms ones (another ptime after a re-INVITE), then A-law 10 ms ones
    rows = [(START + 20 * i, 0, SSRC, 160 * i, b"\x90" * 160) for i in range(10)]
    rows += [(START + 200 + 30 * i, 0, SSRC, 1600 + 240 * i, b"\xA0" * 240) for i in range(10)]
    rows += [(START + 500 + 10 * i, 8, SSRC, 4000 + 80 * i, b"\xD5" * 80) for i in range(50)]
    audio = recorder.mix(([recorder.Chunk.of(rows)], []), START, START + 1000)
    assert len(audio) == 8000
    assert (audio[:1600] == recorder.DECODE[0][0x90]).all() and (audio[1600:4000] == recorder.DECODE[0][0xA0]).all()
    assert (audio[4000:] == recorder.DECODE[8][0xD5]).all()


def test_a_timestamp_step_or_new_ssrc_reanchors_on_arrival():
    before = frames(START, 50, 0x90)
    stepped = frames(START + 1000, 50, 0xA0, ts0=999_000)            # Asterisk's step at a switch
    other = frames(START + 2000, 50, 0xB0, ssrc=7, ts0=160)          # a new stream, timestamps reused
    audio = recorder.mix((before + stepped + other, []), START, START + 3000)
    assert len(audio) == 3 * recorder.RATE
    assert audio[4000] == recorder.DECODE[0][0x90] and audio[12000] == recorder.DECODE[0][0xA0]
    assert audio[20000] == recorder.DECODE[0][0xB0]


def test_only_the_bridged_window_and_only_audio_payloads():
    before_bridge = frames(START - 1000, 50, 0x90)    # the "connecting" prompt, before the bridge
    events = frames(START, 50, 0x90, pt=101)         # RFC 2833 events are not audio
    after_end = frames(START + 1000, 50, 0x90)
    audio = recorder.mix((before_bridge + events + after_end, []), START, START + 1000)
    assert len(audio) == 0


def test_recording_method_is_validated_at_start_up():
    assert config.load(environ={})["recordings"]["method"] == "capture"
    assert config.load(environ={"ICS_RECORDINGS_METHOD": "mixmonitor"})["recordings"]["method"] == "mixmonitor"
    with pytest.raises(config.ConfigError, match="recordings.method must be capture or mixmonitor, got 'rtpengine'"):
        config.load(environ={"ICS_RECORDINGS_METHOD": "rtpengine"})
    with pytest.raises(config.ConfigError, match="recordings.recorder_port must be a port"):
        config.load(environ={"ICS_RECORDINGS_RECORDER_PORT": "0"})


def test_the_capture_filter_is_asterisks_rtp_range(tmp_path):
    conf = tmp_path / "rtp.conf"
    conf.write_text("[general]\nrtpstart = 20000\nrtpend = 23999\n")
    cfg = config.load(environ={"ICS_CAPACITY_RTP_CONF": str(conf)})
    assert recorder.capture_filter(cfg) == "udp and portrange 20000-23999"


def test_a_request_naming_a_file_outside_the_recordings_dir_is_refused(tmp_path):
    cfg = config.load(environ={"ICS_RECORDINGS_DIR": str(tmp_path)})
    rec = recorder.Recorder(cfg, None)
    for bad in ({"call_id": "20261130023000-0123abcd", "file": "../../etc/x.wav"},
                {"call_id": "nope", "file": "ics/a.wav"}):
        with pytest.raises(ValueError):
            rec.start(dict(bad, local="127.0.0.1:20000", remote="127.0.0.1:40000"))
    ok = dict(call_id="20261130023000-0123abcd", file="ics/main/i1/2026-11-30/x.wav",
              local="127.0.0.1:20000", remote="127.0.0.1:40000")
    rec.start(ok)
    wav = recordings.measure(tmp_path / ok["file"])
    assert wav == recordings.Wav(0, 16_000, False)  # open, as MixMonitor leaves a file it writes
    assert rec.table.by_port[20000] == 0 and list(rec.calls) == [ok["call_id"]]


def test_a_batch_from_the_kernel_reaches_each_call_by_its_addresses(tmp_path):
    """The capture path as it runs (ics-recorder's parse and hand-out), on frames as libpcap gives
    them: each called leg's two directions to its call, everything else left out."""
    cfg = config.load(environ={"ICS_RECORDINGS_DIR": str(tmp_path)})
    rec = recorder.Recorder(cfg, None)
    a, b = "20261130023000-0000000a", "20261130023000-0000000b"
    rec.start(dict(call_id=a, file=f"ics/main/i1/d/{a}.wav", local="127.0.0.1:20000", remote="127.0.0.9:40000"))
    rec.start(dict(call_id=b, file=f"ics/main/i1/d/{b}.wav", local="127.0.0.1:20010", remote="127.0.0.9:40010"))
    t = START
    frames_at = []
    for i in range(50):  # 1 s each way of call a (to the phone 0x90, from it 0xA0), b from its phone only
        frames_at += [
            (t + 20 * i, udp_packet("127.0.0.1", 20000, "127.0.0.9", 40000, rtp_packet(0, i, 160 * i, 1, b"\x90" * 160))),
            (t + 20 * i + 1, udp_packet("127.0.0.9", 40000, "127.0.0.1", 20000,
                                        rtp_packet(0, i, 160 * i, 2, b"\xA0" * 160, csrcs=1, ext_words=1, pad=4))),
            (t + 20 * i + 2, udp_packet("127.0.0.9", 40010, "127.0.0.1", 20010, rtp_packet(8, i, 160 * i, 3, b"\xD5" * 160))),
            # not a called leg's audio: the inmate's leg, a stranger to a called leg's port, RFC 2833
            (t + 20 * i + 3, udp_packet("127.0.0.1", 20002, "127.0.0.8", 40002, rtp_packet(0, i, 160 * i, 4, b"\x00" * 160))),
            (t + 20 * i + 4, udp_packet("127.0.0.7", 40000, "127.0.0.1", 20000, rtp_packet(0, i, 160 * i, 5, b"\x00" * 160))),
            (t + 20 * i + 5, udp_packet("127.0.0.9", 40000, "127.0.0.1", 20000, rtp_packet(101, i, 160 * i, 2, b"\x01\x0a\x00\xa0"))),
            (t + 20 * i + 6, b"\0" * 12 + b"\x86\xdd" + b"\x60" + b"\0" * 60),  # IPv6: not Asterisk's RTP here
        ]
    data, meta = batch(frames_at)
    key, chunk = recorder.parse(data, meta, 14, rec.table)
    assert len(chunk) == 150 and sorted(set(key.tolist())) == [2, 3, 5]  # serial 1 both ways, serial 2 from the phone
    rec.parsed_keys.append(key), rec.parsed.append(chunk)
    rec.hand_out(t + 1000)
    assert rec.caught_up_ms == t + 1000
    ca, cb = rec.calls[a], rec.calls[b]
    assert [sum(map(len, d)) for d in ca.packets] == [50, 50] and [sum(map(len, d)) for d in cb.packets] == [0, 50]
    assert ca.packets[1][0].size.tolist() == [160] * 50  # past the CSRC and the extension, the padding off
    audio = recorder.mix(ca.packets, START, START + 1000)
    assert len(audio) == 8000 and (audio[:8] == recorder.DECODE[0][0x90]).all()  # from the phone 1 ms later
    assert (audio[8:] == recorder.DECODE[0][0x90] + recorder.DECODE[0][0xA0]).all()
    assert (recorder.mix(cb.packets, START, START + 1000) == recorder.DECODE[8][0xD5]).all()


def test_a_port_asterisk_hands_out_again_belongs_to_the_call_that_registered_it_last(tmp_path):
    cfg = config.load(environ={"ICS_RECORDINGS_DIR": str(tmp_path)})
    rec = recorder.Recorder(cfg, None)
    old, new = "20261130023000-0000000c", "20261130023000-0000000d"
    for cid in (old, new):
        rec.start(dict(call_id=cid, file=f"ics/main/i1/d/{cid}.wav", local="127.0.0.1:20000", remote="127.0.0.9:40000"))
    data, meta = batch([(START, udp_packet("127.0.0.9", 40000, "127.0.0.1", 20000, rtp_packet(0, 1, 160, 2, b"\xA0" * 160)))])
    rec.parsed_keys[:], rec.parsed[:] = zip(*[recorder.parse(data, meta, 14, rec.table)])
    rec.hand_out(START + 20)
    assert sum(map(len, rec.calls[new].packets[1])) == 1 and sum(map(len, rec.calls[old].packets[1])) == 0


def recording_one(store, call_id: str, port: int) -> tuple[recorder.Recorder, str, dict]:
    """A recorder (real Redis) with one call registered, Asterisk's end at 127.0.0.1:port:
    (the recorder, the file's name, the call flow's request)."""
    name = f"ics/main/i1/2026-11-30/{call_id}.wav"
    req = dict(call_id=call_id, file=name, local=f"127.0.0.1:{port}", remote=f"127.0.0.1:{port + 20000}")
    rec = recorder.Recorder(store.cfg, store.r)
    rec.start(req)
    return rec, name, req


def test_the_file_is_written_once_the_capture_has_passed_the_calls_end(store):
    """Settlement's check (ics.recordings) sees an open file until the recorder has handled every
    packet up to the call's end, then the whole recording: a capture behind under load never cuts
    a call's last seconds off."""
    cid = "20261130023000-0123abcd"
    rec, name, _ = recording_one(store, cid, 20000)
    call = rec.calls[cid]
    ended = int(recorder.time.time() * 1000) - 500
    bridged = ended - 2000
    call.packets[0].extend(frames(bridged, 100, 0x90))
    records.create(store.r, cid, bridged_ms=bridged, ended_ms=ended, recording=name, privileged="0")
    rec.caught_up_ms = ended - 50  # the capture thread is still behind the end
    rec.finish_ended()
    path = store.cfg.recordings_dir / name
    assert recordings.measure(path) == recordings.Wav(0, 16_000, False) and cid in rec.calls
    rec.caught_up_ms = ended + recorder.SETTLE_GRACE_MS
    rec.finish_ended()
    assert recordings.measure(path) == recordings.Wav(2 * 16_000, 16_000, True) and not rec.calls


def test_a_call_never_bridged_leaves_no_file(store):
    cid = "20261130023000-0123abce"
    rec, name, _ = recording_one(store, cid, 20002)
    records.create(store.r, cid, ended_ms=int(recorder.time.time() * 1000) - 1000, recording=name)
    rec.caught_up_ms = recorder.time.time() * 1000
    rec.finish_ended()
    assert not (store.cfg.recordings_dir / name).exists() and not rec.calls


def test_calls_asking_together_while_the_recorder_is_busy_are_all_answered_without_a_retry(tmp_path):
    """Calls accepted together ask together, and the recorder may be busy a moment (the capture
    thread holding the GIL): every connection waits in the listen backlog, none is dropped to a
    SYN retry (1 s, then 3 s), which outlasted the call flow's wait and refused those calls a bridge."""
    cfg = config.load(environ={"ICS_RECORDINGS_DIR": str(tmp_path)})
    server = recorder._Server(("127.0.0.1", 0), recorder._Handler)
    server.recorder = recorder.Recorder(cfg, None)
    cfg["recordings"]["recorder_port"] = server.server_address[1]
    results, threads = {}, []

    def ask(i: int) -> None:
        cid = f"20261130023000-{i:08x}"
        t0 = time.monotonic()
        try:
            recorder.start(cfg, cid, f"ics/main/i1/d/{cid}.wav", f"127.0.0.1:{20000 + 4 * i}", "127.0.0.9:40000")
            results[i] = time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 (the assertion names it)
            results[i] = exc

    for i in range(40):
        threads.append(threading.Thread(target=ask, args=(i,)))
        threads[-1].start()
    time.sleep(0.3)  # busy: nothing accepted yet
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    for t in threads:
        t.join(5)
    server.shutdown()
    server.server_close()
    assert len(results) == 40 and all(isinstance(v, float) and v < 0.9 for v in results.values()), results
    assert len(server.recorder.calls) == 40


def test_the_finisher_yields_the_cpu_and_the_capture_thread_does_not(store):
    """Files are written at a lower priority than everything live (Linux nice is per thread)."""
    rec = recorder.Recorder(store.cfg, store.r)
    tids = {}

    def finisher():
        tids["finisher"] = threading.get_native_id()
        rec.finisher()

    t = threading.Thread(target=finisher, daemon=True)
    t.start()
    base = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's
    deadline = time.time() + 5
    while time.time() < deadline and ("finisher" not in tids or os.getpriority(os.PRIO_PROCESS, tids["finisher"]) == base):
        time.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, tids["finisher"]) == min(19, base + recorder.FINISHER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
    rec.stopping.set()
    t.join(2)


def one_second_each_way(call: recorder.Call, bridged: int, k: int, sent: tuple[list, list]) -> None:
    """Second k of the bridge handed to the call, both directions (a level of its own each
    second), and kept in sent too: what the file must hold."""
    for d, value in ((0, 0x80), (1, 0xFE)):
        chunk = frames(bridged + 1000 * k + 5 * d, 50, value - k, ts0=160 + 8000 * k)
        call.packets[d].extend(chunk)
        sent[d].extend(chunk)


def written_at_end(store, rec: recorder.Recorder, cid: str, name: str, bridged: int, seconds: int) -> bytes:
    """The call ends seconds after its bridge and the capture has passed that: the WAV's audio."""
    records.create(store.r, cid, bridged_ms=bridged, ended_ms=bridged + 1000 * seconds, recording=name,
                   privileged="0")
    rec.caught_up_ms = bridged + 1000 * seconds + recorder.SETTLE_GRACE_MS
    rec.finish_ended()
    with wave.open(str(store.cfg.recordings_dir / name)) as w:
        return w.readframes(w.getnframes())


def test_a_long_call_keeps_its_older_packets_on_disk_and_its_file_is_the_same(store, monkeypatch):
    """Past SPILL_PACKETS a direction, a live call's older packets move to a file beside its
    recording; the WAV written at the end is what mixing every packet in memory gives."""
    monkeypatch.setattr(recorder, "SPILL_PACKETS", 100)
    cid = "20261130023000-0123abcf"
    rec, name, _ = recording_one(store, cid, 20004)
    call = rec.calls[cid]
    bridged = int(recorder.time.time() * 1000) - 10_000
    sent: tuple[list, list] = ([], [])
    for k in range(8):  # 8 hand-outs of 1 s each way, the finisher's spill between them
        one_second_each_way(call, bridged, k, sent)
        rec.spill()
        assert all(sum(map(len, call.packets[d])) < recorder.SPILL_PACKETS for d in (0, 1))
    spill = call.spill
    assert spill is not None and spill.exists()
    expected = recorder.mix(sent, bridged, bridged + 8000)
    assert written_at_end(store, rec, cid, name, bridged, 8) == expected.tobytes()
    assert len(expected) == 8 * 8000 and not spill.exists() and not rec.calls


def test_a_call_asked_for_again_drops_its_spill(store, monkeypatch):
    monkeypatch.setattr(recorder, "SPILL_PACKETS", 10)
    cid = "20261130023000-0123abd0"
    rec, _, req = recording_one(store, cid, 20006)
    rec.calls[cid].packets[0].extend(frames(START, 20, 0x80))
    rec.spill()
    spill = rec.calls[cid].spill
    assert spill.exists()
    rec.start(req)
    assert not spill.exists() and rec.calls[cid].spill is None


def test_a_spill_the_disk_refuses_leaves_the_packets_in_memory_and_the_file_whole(store, monkeypatch):
    """A full disk mid-spill (here the file size limit, RLIMIT_FSIZE: a real short write, then
    EFBIG): the half-written record is cut off, the packets stay in memory, the next spill takes
    them, and the WAV is still every packet."""
    monkeypatch.setattr(recorder, "SPILL_PACKETS", 100)
    cid = "20261130023000-0123abd1"
    rec, name, _ = recording_one(store, cid, 20008)
    call = rec.calls[cid]
    bridged = int(recorder.time.time() * 1000) - 10_000
    sent: tuple[list, list] = ([], [])
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    sizes = []
    for k in range(6):
        one_second_each_way(call, bridged, k, sent)
        full = k == 3  # room for part of one direction's record, not for all of it
        size = call.spill.stat().st_size if call.spill else 0
        if full:
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 5000, limit[1]))
        try:
            rec.spill()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        sizes.append(call.spill.stat().st_size if call.spill else 0)
        if full:
            assert sizes[-1] == size and all(sum(map(len, call.packets[d])) >= 100 for d in (0, 1))
    assert sizes[4] > sizes[3]  # the next spill took them
    expected = recorder.mix(sent, bridged, bridged + 6000)
    assert written_at_end(store, rec, cid, name, bridged, 6) == expected.tobytes()
    assert len(expected) == 6 * 8000


def test_spill_files_a_dead_recorder_left_are_dropped_when_the_next_one_starts(store, monkeypatch):
    monkeypatch.setattr(recorder, "SPILL_PACKETS", 10)
    cid = "20261130023000-0123abd2"
    rec, name, _ = recording_one(store, cid, 20010)
    rec.calls[cid].packets[0].extend(frames(START, 20, 0x80))
    rec.spill()
    orphan = rec.calls[cid].spill
    assert orphan.exists() and orphan.parent == store.cfg.recordings_dir / recorder.SPILL_DIR
    recorder.Recorder(store.cfg, store.r).drop_orphan_spills()  # the service restarted: the call is not its own
    assert not orphan.exists() and (store.cfg.recordings_dir / name).exists()


@pytest.mark.parametrize("sizes", [[160] * 5, [160, 80, 0, 240, 160]], ids=["one size", "ragged"])
def test_payloads_are_gathered_whole_and_in_order(sizes):
    """Both ways of copying the payloads out of a batch (rows of one size at once, or byte by
    byte) give each run whole, in the order asked."""
    d = np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8)
    starts = np.array([1500, 3, 700, 1000, 3], np.int64)
    sizes = np.array(sizes, np.int64)
    want = b"".join(d[s:s + n].tobytes() for s, n in zip(starts, sizes))
    assert recorder.gather(d, starts, sizes).tobytes() == want
