"""structlog set-up and the log event names: the one list.

One JSON object per line (console rendering on a TTY). `call_id` is bound on
every line a call produces (structlog contextvars), so `grep call_id` follows
one call through the FastAGI server, the AMI listener and settlement.

Event names (the `event` field):
  service.start / service.stop / service.config_error / service.prompts_missing
  numbers.migrated           ics-fastagi start-up rewrote numbers stored before E.164 (migrated, kept_existing)
  numbers.unreadable         WARNING: stored text that is no phone number, left as it was (numbers, count)
  keys.migration_needed      ERROR: ics-fastagi found keys stored before hash tags and does not start
                             (count, examples, fix "run: icsctl keys migrate")
  agi.session.start / agi.session.end / agi.session.error
  agi.protocol_error         malformed environment or reply from Asterisk
  call.start                 inmate call entered the flow (number in E.164, its kind and region)
  call.pin_ok / call.pin_failed / call.pin_locked
  call.refused               refused before ringing (reason)
  call.listener_down         the AMI listener's heartbeat is missing: the call is refused
                             (system_unavailable)
  call.capacity_full         WARNING: capacity.max_calls calls are live (or being placed): the call is
                             refused (capacity_full): live, setting_up, max_calls, at (start | dial)
  call.name_recorded
  call.dialing               number, limit_s, held_cents
  callee.announce            called party answered, announcement starts
  callee.key                 a key (or none) pressed at the menu
  callee.quote               rate played
  callee.accepted / callee.refused / callee.blocked / callee.no_response
  call.settled               billed_minutes, billed_cents, reason
  call.settle_skipped        already settled (duplicate hang-up)
  call.end_stamp_ignored     WARNING: Asterisk's end time ([ics-settle]) was before the bridge or in
                             the future (clocks apart): the call ends at the settling instead
  call.auto_credited         system_error in the first minute: credited_cents (once)
  recording.checked         a call's recording measured at settlement: bridged_for_ms, recording_ms, diff_ms
  recording.short           ERROR: the recording is more than recordings.max_short_ms shorter than the
                            bridge (audio lost): bridged_for_ms, recording_ms, short_ms; flagged and counted
  recording.missing         ERROR: a bridged, non-privileged call has no recording file; flagged and counted
  recording.pending         the file was still being written at settlement: the AMI listener checks it later
  recording.check_failed    the check itself failed (Redis away, unreadable file): retried by the listener
  callee.recording          a recording started on the called channel: file, method (capture / mixmonitor)
  recorder.capturing / recorder.idle   ics-recorder up: capturing (device, filter), or idle (MixMonitor records)
  recorder.started          ics-recorder took a call: file, local and remote RTP addresses
  recorder.written          the call's WAV written after its end: ms of audio, packets per direction
  recorder.not_bridged      the call ended unbridged: its open file removed, nothing recorded
  recorder.dropped          ERROR: the kernel's capture ring overran (packets): audio lost, flagged at settlement
  recorder.spill_failed     ERROR: a live call's older packets could not go to disk (full?): kept in memory, tried again
  recorder.spill_orphaned   ERROR: at start, spill files a killed recorder left (files, calls): removed; those calls are flagged
  recorder.start_failed / recorder.finish_failed / recorder.capture_stopped   ERROR: as said
  ami.connected / ami.disconnected / ami.login_failed / ami.event_error / ami.ping_timeout
  ami.action_dropped        an action left unanswered by a lost connection (never re-sent)
  ami.settle_sweep          the listener settled a hung-up call its hangup handler missed
  ami.settle_retry          a hang-up the listener could not settle (Redis away) is kept and retried
                            (ended_ms from the AMI event, attempts, error); ami.settle_gave_up after
                            ami.settle_retry_max_s (the orphan scan may still find it)
  ami.heartbeat_failed      the listener's heartbeat could not be written (Redis away)
  ami.orphan_scan           the periodic look for ended calls nobody settled (found)
  ami.shutdown              Asterisk announced a shutdown or restart (AMI Shutdown event)
  ami.system_drop           a call that vanished with Asterisk (restart or crash while AMI was lost),
                            or whose called-party menu ended abnormally (ICS_FAULT on its Hangup):
                            recorded as system_error with the evidence, then settled
  ami.node_down             WARNING: a peer call node died whole (no heartbeat, its AMI silent): each of
                            its live calls (node, call_id, last_heartbeat_ms, ami) is recorded as a
                            system drop and settled by this listener (ami.peers)
  ami.rebuilt / ami.rebuild_failed   live-call state rebuilt from CoreShowChannels after (re)connect
  ami.action_failed         an action the listener sent was refused or lost
  enforce.watching          an inmate call is bridged: the rules apply (bridge, technology)
  enforce.load_failed       the call record or facility could not be read: default rules apply
  enforce.disconnect        a rule ended the call: reason, threshold, evidence, latency_ms, legs
  enforce.record_failed     the reason/evidence could not be written to the call record
  enforce.warn / enforce.flag   a rule fired whose response is warn (both hear the three-way
                            warning) or flag (the call goes on): reason, threshold, evidence
  enforce.bad_override      a number's or call's rule response that is no rule or response (ignored)
  tap.started / tap.failed  the called leg's audio tap (ChanSpy into AudioSocket) for a bridged call
  tap.detected              a signature in the called leg's audio (ami/tones.py): signature,
                            onset_offset_ms, duration_ms, level_dbfs, the rule and response it made
  tap.unknown               an AudioSocket connection with a UUID no tap expects (dropped)
  enforce.hangup            a leg was hung up outright (redirect failed or the prompt overran)
  enforce.warning / enforce.warning_failed   a time-limit notice to both parties (seconds_left)
  enforce.minute_held       the next minute of a live call held before it starts (paid_minutes, cents)
  enforce.funds_short       the next minute could not be held: the call ends with its paid ones
  enforce.hold_failed       Redis error while holding a minute (treated as funds_short: fail closed)
  ops.*                      icsctl changes (ops.fund, ops.inmate_create, ...; ops.keys_migrate: keys
                             renamed to their hash-tagged names: migrated, kept_existing, refused)
  redis.wait_short           a money script no replica confirmed within redis.wait_timeout_ms (WAIT;
                             script, replicas, wanted): the write stands on the master alone
"""

from __future__ import annotations

import logging
import sys

import structlog


def setup(fmt: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str = "ics"):
    return structlog.get_logger(name)
