"""Real SIP phones for the end-to-end tests: pjsua2 with a null sound device.

One pjsua2 Endpoint per process, owned by ONE thread (``pjsua-main``) that
makes every pjsua2 call and polls ``libHandleEvents(10)``. Test code in any
thread submits work to it through a queue and waits on a future with a
timeout, so nothing here can hang a test run.

    harness = Harness()
    inmate = harness.phone("inmate1")                # password from stack.env
    family = harness.phone("3125550100")
    inmate.register(10); family.register(10)
    call = inmate.call("3125550100")
    incoming = family.wait_incoming(10)
    incoming.answer(); call.wait_state("CONFIRMED", 10)
    call.dtmf("1"); call.hold(); call.unhold(); call.flash_info()
    incoming.hangup(); call.wait_disconnected(10)
    harness.shutdown()

Settings measured against Asterisk 22 (see the lab notes): threadCnt=0 and
mainThreadOnly, noVad, sndAutoCloseTime=-1 (otherwise the null device stops
after a second and no RTP or RFC 2833 digit leaves), capture -> call ->
playback connected on media state, one UDP transport per phone on 127.0.0.1.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import pjsua2 as pj

from tests.support import stack_setting

log = logging.getLogger("ics.tests.phones")

SIP_SERVER = "127.0.0.1:5060"
DEFAULT_TIMEOUT = 10.0
OP_TIMEOUT = 5.0

STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}



def _add_headers(op, headers: dict[str, str] | None) -> None:
    """Extra SIP headers on a request (INVITE, BYE); a CR or LF would inject more."""
    for name, value in (headers or {}).items():
        if any(c in name + value for c in "\r\n"):
            raise ValueError("header with CR/LF")
        h = pj.SipHeader()
        h.hName, h.hValue = name, value
        op.txOption.headers.append(h)

class PhoneError(RuntimeError):
    pass


def sip_quote(text: str) -> str:
    """A SIP quoted-string (RFC 3261 25.1): backslash and double quote escaped."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("a display name cannot hold CR, LF or NUL")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------- pjsua2 side
# Everything in this section runs on the pjsua thread only.

class _Account(pj.Account):
    def __init__(self, phone: "Phone"):
        super().__init__()
        self.phone = phone

    def onRegState(self, prm):
        self.phone._on_reg_state(prm.code, prm.reason, prm.expiration)

    def onIncomingCall(self, prm):
        call = _Call(self, self.phone, prm.callId)
        handle = CallHandle(self.phone, call, incoming=True)
        self.phone._harness._calls.append(call)
        try:
            ci = call.getInfo()
            handle._remote = ci.remoteUri
            handle._sip_call_id = ci.callIdString
            op = pj.CallOpParam()
            op.statusCode = 200 if self.phone.auto_answer else 180
            call.answer(op)
        except pj.Error as e:
            log.warning("%s: could not answer incoming call: %s", self.phone.user, e.info())
        self.phone._incoming.put(handle)


class _Call(pj.Call):
    def __init__(self, acc: _Account, phone: "Phone", call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.phone = phone
        self.handle: CallHandle | None = None

    def onCallState(self, prm):
        try:
            ci = self.getInfo()
        except pj.Error:
            return
        if self.handle:
            self.handle._on_state(ci)

    def onCallMediaState(self, prm):
        try:
            ci = self.getInfo()
            adm = pj.Endpoint.instance().audDevManager()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    aud = self.getAudioMedia(mi.index)
                    adm.getCaptureDevMedia().startTransmit(aud)
                    aud.startTransmit(adm.getPlaybackDevMedia())
            if self.handle:
                self.handle._on_media([STATE_MEDIA.get(mi.status, str(mi.status)) for mi in ci.media])
        except pj.Error as e:
            log.warning("%s: media state: %s", self.phone.user, e.info())

    def onDtmfDigit(self, prm):
        if self.handle:
            self.handle._on_dtmf(prm.digit)

    def onCallTransferStatus(self, prm):
        if self.handle:
            self.handle._on_transfer_status(prm.statusCode, prm.reason, prm.finalNotify)
        prm.cont = True
        if prm.finalNotify and 200 <= prm.statusCode < 300 and self.phone.hangup_after_transfer:
            # as real phones do: Asterisk leaves the transferring leg up
            try:
                self.hangup(pj.CallOpParam())
            except pj.Error:
                pass

    def onCallTsxState(self, prm):
        # INFO requests the far end sends us (Asterisk relays a flash as Signal=!)
        try:
            tsx = prm.e.body.tsxState.tsx
            if tsx.role == pj.PJSIP_ROLE_UAS and tsx.method == "INFO" and self.handle:
                rdata = prm.e.body.tsxState.src.rdata
                self.handle._on_info(rdata.wholeMsg)
        except Exception:  # noqa: BLE001 - best effort, never in the way of a call
            pass


STATE_MEDIA = {
    pj.PJSUA_CALL_MEDIA_NONE: "NONE",
    pj.PJSUA_CALL_MEDIA_ACTIVE: "ACTIVE",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "LOCAL_HOLD",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "REMOTE_HOLD",
    pj.PJSUA_CALL_MEDIA_ERROR: "ERROR",
}


# --------------------------------------------------------------------- test side

class CallHandle:
    """One call leg of a phone. Every method is thread-safe and bounded in time."""

    def __init__(self, phone: "Phone", call: _Call, incoming: bool):
        self.phone = phone
        self._call = call
        call.handle = self
        self.incoming = incoming
        self._cond = threading.Condition()
        self.state = "INCOMING" if incoming else "NULL"
        self.states: list[str] = [self.state]
        self.last_status_code: int | None = None
        self.last_reason = ""
        self.media: list[str] = []
        self.received_digits = ""
        self.received_info: list[str] = []
        self.transfer_status: list[tuple[int, str, bool]] = []
        self._remote = ""
        self._sip_call_id = ""
        self._recorder = None

    # ---- callbacks (pjsua thread)
    def _on_state(self, ci) -> None:
        with self._cond:
            self.state = STATE_NAMES.get(ci.state, str(ci.state))
            if not self.states or self.states[-1] != self.state:
                self.states.append(self.state)
            if ci.lastStatusCode:
                self.last_status_code = int(ci.lastStatusCode)
            self.last_reason = ci.lastReason
            self._remote = ci.remoteUri or self._remote
            self._sip_call_id = ci.callIdString or self._sip_call_id
            self._cond.notify_all()

    def _on_media(self, media: list[str]) -> None:
        with self._cond:
            self.media = media
            self._cond.notify_all()

    def _on_dtmf(self, digit: str) -> None:
        with self._cond:
            self.received_digits += digit
            self._cond.notify_all()

    def _on_transfer_status(self, code: int, reason: str, final: bool) -> None:
        with self._cond:
            self.transfer_status.append((code, reason, final))
            self._cond.notify_all()

    def _on_info(self, msg: str) -> None:
        with self._cond:
            self.received_info.append(msg)
            self._cond.notify_all()

    # ---- properties
    @property
    def remote_uri(self) -> str:
        return self._remote

    @property
    def sip_call_id(self) -> str:
        return self._sip_call_id

    @property
    def disconnected(self) -> bool:
        return self.state == "DISCONNECTED"

    def __repr__(self) -> str:
        return (f"<CallHandle {self.phone.user} {'in' if self.incoming else 'out'} {self.state}"
                f" status={self.last_status_code} remote={self._remote!r}>")

    # ---- waiting
    def wait_for(self, predicate: Callable[["CallHandle"], bool], timeout: float = DEFAULT_TIMEOUT,
                 what: str = "condition") -> "CallHandle":
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self!r}: {what} not reached in {timeout}s; states {self.states}")
                self._cond.wait(min(left, 0.2))
        return self

    def wait_state(self, state: str | Callable[["CallHandle"], bool],
                   timeout: float = DEFAULT_TIMEOUT) -> "CallHandle":
        """Wait for a state name (CONFIRMED, EARLY, DISCONNECTED...) or a predicate.

        Waiting for a state other than DISCONNECTED fails at once if the call ends."""
        if callable(state):
            return self.wait_for(state, timeout, what="predicate")
        name = state.upper()
        if name not in STATE_NAMES.values():
            raise ValueError(f"unknown call state {state!r}")

        def reached(h: CallHandle) -> bool:
            if name in h.states:
                return True
            if h.state == "DISCONNECTED":
                raise PhoneError(f"{h!r}: disconnected ({h.last_status_code} {h.last_reason}) "
                                 f"while waiting for {name}")
            return False
        return self.wait_for(reached, timeout, what=name)

    def wait_disconnected(self, timeout: float = DEFAULT_TIMEOUT) -> "CallHandle":
        return self.wait_for(lambda h: h.state == "DISCONNECTED", timeout, what="DISCONNECTED")

    def wait_media(self, status: str = "ACTIVE", timeout: float = DEFAULT_TIMEOUT) -> "CallHandle":
        return self.wait_for(lambda h: status in h.media, timeout, what=f"media {status}")

    def wait_transfer_final(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Status code of the final NOTIFY for this leg's REFER (200 = transferred)."""
        self.wait_for(lambda h: any(final for _, _, final in h.transfer_status), timeout,
                      what="final transfer NOTIFY")
        return next(code for code, _, final in self.transfer_status if final)

    def wait_digits(self, digits: str, timeout: float = DEFAULT_TIMEOUT) -> "CallHandle":
        return self.wait_for(lambda h: digits in h.received_digits, timeout, what=f"digits {digits!r}")

    # ---- actions
    def _op(self, fn: Callable[[], Any], timeout: float = OP_TIMEOUT) -> Any:
        if self._call is None:
            raise PhoneError(f"{self!r}: the phone harness is shut down")
        return self.phone._harness.run(fn, timeout)

    def answer(self, code: int = 200) -> "CallHandle":
        def do():
            op = pj.CallOpParam()
            op.statusCode = code
            self._call.answer(op)
        self._op(do)
        return self

    def hangup(self, code: int = 0, headers: dict[str, str] | None = None) -> "CallHandle":
        """Hang up (or decline with code, e.g. 486/603, before answering). No-op once disconnected.
        headers go on the BYE (e.g. Reason: Q.850;cause=38, what a failing trunk sends)."""
        def do():
            if self.state == "DISCONNECTED" or not self._call.isActive():
                return
            op = pj.CallOpParam()
            if code:
                op.statusCode = code
            _add_headers(op, headers)
            self._call.hangup(op)
        self._op(do)
        return self

    def dtmf(self, digits: str) -> "CallHandle":
        """RFC 2833 / 4733 digits (0-9 * # A-D, R = flash)."""
        bad = set(digits) - set("0123456789*#ABCDabcdR")
        if bad:
            raise ValueError(f"not DTMF: {sorted(bad)}")
        self._op(lambda: self._call.dialDtmf(digits))
        return self

    def flash_rfc2833(self) -> "CallHandle":
        """Hook flash as RFC 2833 event 16."""
        return self.dtmf("R")

    def send_info(self, content_type: str, body: str) -> "CallHandle":
        def do():
            prm = pj.CallSendRequestParam()
            prm.method = "INFO"
            prm.txOption.contentType = content_type
            prm.txOption.msgBody = body
            self._call.sendRequest(prm)
        self._op(do)
        return self

    def flash_info(self) -> "CallHandle":
        """Hook flash as SIP INFO application/dtmf-relay Signal=!."""
        return self.send_info("application/dtmf-relay", "Signal=!\r\nDuration=100\r\n")

    def dtmf_info(self, digit: str, duration_ms: int = 160) -> "CallHandle":
        return self.send_info("application/dtmf-relay", f"Signal={digit}\r\nDuration={duration_ms}\r\n")

    def hold(self) -> "CallHandle":
        self._op(lambda: self._call.setHold(pj.CallOpParam(True)))
        return self

    def unhold(self) -> "CallHandle":
        def do():
            op = pj.CallOpParam(True)
            op.opt.flag = pj.PJSUA_CALL_UNHOLD
            self._call.reinvite(op)
        self._op(do)
        return self

    def record_audio(self, path) -> "CallHandle":
        """Record what this phone hears (the call's received audio) into a WAV file, until
        stop_recording() or hang-up. The far end's audio only: this phone sends silence."""
        def do():
            rec = pj.AudioMediaRecorder()
            rec.createRecorder(str(path))
            ci = self._call.getInfo()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    self._call.getAudioMedia(mi.index).startTransmit(rec)
            self._recorder = rec
        self._op(do)
        return self

    def stop_recording(self) -> "CallHandle":
        """Close the WAV (its header is written when the recorder goes, on the pjsua thread)."""
        def do():
            self._recorder = None
            gc.collect()
        self._op(do)
        return self

    def blind_transfer(self, target: str) -> "CallHandle":
        """REFER to target: a number (looked up in this endpoint's context) or a sip: URI."""
        uri = target if target.startswith("sip:") else f"sip:{target}@{SIP_SERVER}"
        self._op(lambda: self._call.xfer(uri, pj.CallOpParam(True)))
        return self

    def talk(self, wav: str) -> "CallHandle":
        """Send a WAV (8 kHz mono 16-bit) into the call on a loop, as a speaking person
        would; quiet() stops it. The null sound device otherwise sends pure silence."""
        def do():
            player = pj.AudioMediaPlayer()
            player.createPlayer(str(wav), 0)
            player.startTransmit(self._call.getAudioMedia(-1))
            self._player = player  # pjsua2 needs the Python reference kept
        self._op(do)
        return self

    def quiet(self) -> "CallHandle":
        def do():
            player, self._player = getattr(self, "_player", None), None
            if player is not None:
                try:
                    player.stopTransmit(self._call.getAudioMedia(-1))
                except pj.Error:
                    pass  # the call's media is already gone
        self._op(do)
        return self

    def attended_transfer(self, other: "CallHandle") -> "CallHandle":
        """REFER with Replaces: connect this call's peer to other's peer."""
        self._op(lambda: self._call.xferReplaces(other._call, pj.CallOpParam(True)))
        return self


class Phone:
    """A SIP account registered to Asterisk, on its own UDP transport on 127.0.0.1."""

    def __init__(self, harness: "Harness", user: str, password: str, display_name: str | None,
                 server: str = SIP_SERVER):
        self._harness = harness
        self.user = user
        self.server = server  # registrar and proxy: Asterisk, or a cluster's Kamailio
        self.password = password
        self.display_name = display_name
        self.auto_answer = False
        self.hangup_after_transfer = True
        self._incoming: queue.Queue[CallHandle] = queue.Queue()
        self._cond = threading.Condition()
        self.reg_code: int | None = None
        self.reg_reason = ""
        self.reg_expires = 0
        self.transport_id: int | None = None
        self.local_port: int | None = None
        self._acc: _Account | None = None

    def __repr__(self) -> str:
        return f"<Phone {self.user} port={self.local_port} reg={self.reg_code}>"

    # ---- pjsua thread
    def _id_uri(self) -> str:
        uri = f"<sip:{self.user}@127.0.0.1>"
        return f"{sip_quote(self.display_name)} {uri}" if self.display_name is not None else uri

    def _account_config(self) -> pj.AccountConfig:
        cfg = pj.AccountConfig()
        cfg.idUri = self._id_uri()
        cfg.regConfig.registrarUri = f"sip:{self.server}"
        cfg.regConfig.registerOnAdd = False
        cfg.regConfig.timeoutSec = 300
        cfg.regConfig.retryIntervalSec = 0
        cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", self.user, 0, self.password))
        cfg.sipConfig.transportId = self.transport_id
        cfg.natConfig.contactRewriteUse = 0
        cfg.natConfig.viaRewriteUse = 0
        cfg.natConfig.sdpNatRewriteUse = 0
        cfg.natConfig.sipOutboundUse = 0
        cfg.natConfig.iceEnabled = False
        cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        cfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
        cfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        return cfg

    def _create(self) -> None:
        ep = self._harness._ep
        tcfg = pj.TransportConfig()
        tcfg.port = 0
        tcfg.boundAddress = "127.0.0.1"
        tcfg.publicAddress = "127.0.0.1"
        self.transport_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.local_port = ep.transportGetInfo(self.transport_id).localName.split(":")[-1]
        self._acc = _Account(self)
        self._acc.create(self._account_config())

    def _on_reg_state(self, code: int, reason: str, expires: int) -> None:
        with self._cond:
            self.reg_code = int(code)
            self.reg_reason = reason
            self.reg_expires = int(expires)
            self._cond.notify_all()

    # ---- test side
    def _wait_reg(self, ok: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self!r}: {what} not done in {timeout}s "
                                       f"(last {self.reg_code} {self.reg_reason})")
                self._cond.wait(min(left, 0.2))

    def register(self, timeout: float = DEFAULT_TIMEOUT) -> "Phone":
        with self._cond:
            self.reg_code = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._harness.run(lambda: self._acc.setRegistration(True))
                break
            except PhoneError as exc:
                # a REGISTER of this account is still in flight (pjsua's own refresh, or one sent
                # just before): PJSIP_EBUSY until it completes
                if "EBUSY" not in str(exc) or time.monotonic() > deadline:
                    raise
                with self._cond:
                    self._cond.wait(0.2)
        self._wait_reg(lambda: self.reg_code is not None, timeout, "REGISTER")
        if self.reg_code != 200 or self.reg_expires <= 0:
            raise PhoneError(f"{self.user}: registration failed: {self.reg_code} {self.reg_reason}")
        return self

    def unregister(self, timeout: float = DEFAULT_TIMEOUT) -> "Phone":
        with self._cond:
            self.reg_code = None
        self._harness.run(lambda: self._acc.setRegistration(False))
        self._wait_reg(lambda: self.reg_code is not None, timeout, "un-REGISTER")
        return self

    def set_display_name(self, display_name: str | None) -> "Phone":
        """Change the caller-ID name sent in From (quoted and escaped as SIP requires)."""
        if display_name is not None:
            sip_quote(display_name)  # validate before touching the account
        self.display_name = display_name
        self._harness.run(lambda: self._acc.modify(self._account_config()))
        return self

    def call(self, number: str, headers: dict[str, str] | None = None) -> CallHandle:
        """INVITE number@127.0.0.1:5060 (the dialplan context of this endpoint decides)."""
        uri = number if number.startswith("sip:") else f"sip:{number}@{self.server}"

        def do() -> CallHandle:
            call = _Call(self._acc, self)
            handle = CallHandle(self, call, incoming=False)
            self._harness._calls.append(call)
            op = pj.CallOpParam(True)
            _add_headers(op, headers)
            call.makeCall(uri, op)
            return handle
        return self._harness.run(do)

    def wait_incoming(self, timeout: float = DEFAULT_TIMEOUT) -> CallHandle:
        """The next incoming call that is still up (answered with 180 Ringing unless auto_answer)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self!r}: no incoming call in {timeout}s")
            try:
                handle = self._incoming.get(timeout=left)
            except queue.Empty:
                continue
            if handle.state != "DISCONNECTED":
                return handle

    def drain_incoming(self) -> list[CallHandle]:
        out = []
        while True:
            try:
                out.append(self._incoming.get_nowait())
            except queue.Empty:
                return out


class Harness:
    """The pjsua2 Endpoint and the one thread that owns it."""

    _instance_lock = threading.Lock()
    _instances = 0

    def __init__(self, log_level: int | None = None, start_timeout: float = 10.0):
        with Harness._instance_lock:
            if Harness._instances:
                raise PhoneError("one pjsua2 Endpoint per process: reuse the existing Harness")
            Harness._instances += 1
        self._log_level = int(os.environ.get("ICS_PJ_LOG_LEVEL", 1 if log_level is None else log_level))
        self._work: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue()
        self._ep: pj.Endpoint | None = None
        self._calls: list[_Call] = []
        self._phones: dict[str, Phone] = {}
        self._stopped = threading.Event()
        self._ready: Future = Future()
        self._thread = threading.Thread(target=self._main, name="pjsua-main", daemon=True)
        self._thread.start()
        try:
            self._ready.result(start_timeout)
        except BaseException:
            self._stopped.set()
            with Harness._instance_lock:
                Harness._instances -= 1
            raise

    # ---- the pjsua thread
    def _init(self) -> None:
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = "ics-test-phone"
        cfg.uaConfig.maxCalls = 32
        cfg.logConfig.level = self._log_level
        cfg.logConfig.consoleLevel = self._log_level
        cfg.medConfig.noVad = True
        cfg.medConfig.sndAutoCloseTime = -1
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.hasIoqueue = True
        cfg.medConfig.threadCnt = 1
        ep.libInit(cfg)
        ep.audDevManager().setNullDev()
        # Asterisk offers ulaw, alaw, gsm: G.711 first, nothing that needs transcoding
        for info in ep.codecEnum2():
            cid = info.codecId
            prio = 255 if cid.startswith("PCMU/") else 254 if cid.startswith("PCMA/") else 0
            ep.codecSetPriority(cid, prio)
        ep.libStart()
        self._ep = ep

    def _main(self) -> None:
        try:
            self._init()
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            self._ready.set_exception(e)
            return
        self._ready.set_result(True)
        while not self._stopped.is_set():
            self._drain()
            try:
                self._ep.libHandleEvents(10)
            except Exception:  # noqa: BLE001
                log.exception("libHandleEvents")
        self._destroy()

    def _drain(self) -> None:
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stopped.set()
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                if isinstance(e, pj.Error):
                    e = PhoneError(f"pjsua2: {e.info()}")
                fut.set_exception(e)

    def _pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._ep.libHandleEvents(10)

    def _destroy(self) -> None:
        ep = self._ep
        if ep is None:
            return
        try:
            ep.hangupAllCalls()
            self._pump(0.5)
            for phone in self._phones.values():
                if phone._acc is not None:
                    try:
                        if phone.reg_code == 200 and phone.reg_expires > 0:
                            phone._acc.setRegistration(False)
                    except pj.Error:
                        pass
            self._pump(0.3)
            for phone in self._phones.values():
                if phone._acc is not None:
                    phone._acc.shutdown()
            self._pump(0.1)
            # pjsua2 Call objects must be gone before libDestroy: a Call deleted
            # afterwards asserts in pjsua_call_set_user_data. Break the
            # handle <-> call cycle so they are freed now, not at exit.
            self._release_calls()
            gc.collect()
            ep.libDestroy()
        except Exception:  # noqa: BLE001
            log.exception("pjsua2 shutdown")
        finally:
            for phone in self._phones.values():
                phone._acc = None
            self._ep = None

    def _release_calls(self) -> None:
        # a function of its own: no loop variable keeps a Call alive in _destroy
        for c in self._calls:
            if c.handle is not None:
                c.handle._call = None
                c.handle._player = None  # players too must go before libDestroy
                c.handle._recorder = None  # a recorder must go before libDestroy too
            c.handle = None
        self._calls.clear()

    # ---- any thread
    def run(self, fn: Callable[[], Any], timeout: float = OP_TIMEOUT) -> Any:
        """Run fn on the pjsua thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn()
        if self._stopped.is_set() or not self._thread.is_alive():
            raise PhoneError("the phone harness is shut down")
        fut: Future = Future()
        self._work.put((fn, fut))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise TimeoutError(f"pjsua thread did not run {getattr(fn, '__name__', fn)} in {timeout}s") from None

    def phone(self, user: str, password: str | None = None, display_name: str | None = None,
              server: str = SIP_SERVER) -> Phone:
        """The phone for user at server (a SIP address:port, default the single box's Asterisk),
        created on first use (same object on later calls).

        password defaults to ICS_SIP_PASSWORD (stack.env). A different display_name
        on a later call updates the account's From header."""
        if password is None:
            password = stack_setting("ICS_SIP_PASSWORD")
            if not password:
                raise PhoneError("no SIP password: set ICS_SIP_PASSWORD or run docker/stack.sh up")
        key = user if server == SIP_SERVER else f"{user}@{server}"
        existing = self._phones.get(key)
        if existing is not None:
            if existing.display_name != display_name:
                existing.set_display_name(display_name)
            if existing.password != password:
                raise PhoneError(f"{user} already exists with another password")
            return existing
        phone = Phone(self, user, password, display_name, server)
        if display_name is not None:
            sip_quote(display_name)
        self.run(phone._create)
        self._phones[key] = phone
        return phone

    def remove(self, phone: Phone, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Unregister a phone and free its account and transport: a module that made phones of
        its own (the cluster's, registered at Kamailio) leaves the session's harness as it found
        it (pjsua has a fixed number of transports, and two accounts of one user would race for
        the single box's incoming calls)."""
        if phone.reg_code == 200 and phone.reg_expires > 0:
            try:
                phone.unregister(timeout)
            except (PhoneError, TimeoutError):
                pass  # the registrar is gone: nothing to undo there

        def free() -> None:
            if phone._acc is not None:
                phone._acc.shutdown()
                phone._acc = None
            if phone.transport_id is not None:
                self._ep.transportClose(phone.transport_id)
                phone.transport_id = None

        self.run(free)
        self._phones = {k: p for k, p in self._phones.items() if p is not phone}

    @property
    def phones(self) -> dict[str, Phone]:
        return dict(self._phones)

    def register_all(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Register every phone of the single box again (after an Asterisk restart its registrar
        is empty); a cluster's phones register at its Kamailio, which did not restart."""
        for phone in list(self._phones.values()):
            if phone.server == SIP_SERVER:
                phone.register(timeout)

    def active_calls(self) -> list[CallHandle]:
        return [c.handle for c in list(self._calls) if c.handle and c.handle.state != "DISCONNECTED"]

    def hangup_all(self, timeout: float = 5.0) -> None:
        """Hang up every call still up and wait until they are gone (between tests)."""
        calls = self.active_calls()
        if not calls:
            for phone in self._phones.values():
                phone.drain_incoming()
            return
        self.run(lambda: self._ep.hangupAllCalls())
        deadline = time.monotonic() + timeout
        for h in calls:
            try:
                h.wait_disconnected(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("call did not end after hangup: %r", h)
        for phone in self._phones.values():
            phone.drain_incoming()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Hang up, unregister, libDestroy. Idempotent."""
        if not self._thread.is_alive():
            return
        self._work.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("pjsua thread did not stop in %ss", timeout)
        with Harness._instance_lock:
            Harness._instances = max(0, Harness._instances - 1)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

