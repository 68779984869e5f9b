"""AMI connection on panoramisk, with the guards its defaults lack.

- A callback's exception (sync or coroutine) is logged with its traceback,
  never lost; one bad event cannot stop dispatch of the next.
- A ping watchdog with a timeout: an AMI that stops answering is dropped and
  reconnected, instead of hanging forever.
- Actions are never re-sent after a reconnect (a second Originate or Hangup
  could act on the wrong call): unanswered ones fail with ConnectionError.
- CR or LF in any action header or value is refused before it is written.
"""

from __future__ import annotations

import asyncio

import structlog
from panoramisk import Manager

log = structlog.get_logger("ami")


class UnsafeAction(ValueError):
    pass


def check_action(action: dict) -> dict:
    for k, v in action.items():
        for text in (str(k), str(v)):
            if "\r" in text or "\n" in text:
                raise UnsafeAction(f"AMI action {action.get('Action', '?')}: {k!r} carries a line break")
    return action


class GuardedManager(Manager):
    def __init__(self, *, ping_interval_s: float = 5, ping_timeout_s: float = 3, **config):
        config.setdefault("forgetable_actions", ())
        # panoramisk's own pinger has no timeout: ours replaces it
        super().__init__(ping_delay=10**6, ping_interval=10**6, **config)
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self._watchdog: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.connected_event = asyncio.Event()
        self.login_hooks: list = []  # coroutine functions run after every successful login
        self.disconnect_hooks: list = []  # plain functions run when an established connection is lost

    # --- dispatch ----------------------------------------------------------
    def dispatch(self, event):
        matches = []
        event.manager = self
        for pattern, regexp in self.patterns:
            if regexp.match(event.event) is None:
                continue
            matches.append(pattern)
            for callback in self.callbacks[pattern]:
                try:
                    ret = callback(self, event)
                except Exception:
                    log.exception("ami.event_error", ami_event=event.event, callback=getattr(callback, "__name__", "?"))
                    continue
                if asyncio.iscoroutine(ret) or isinstance(ret, asyncio.Future):
                    task = asyncio.ensure_future(ret, loop=self.loop)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
        return matches

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("ami.event_error", error=repr(exc), exc_info=(type(exc), exc, exc.__traceback__))

    # --- actions -------------------------------------------------------------
    def send_action(self, action, as_list=None, **kwargs):
        check_action({**dict(action), **kwargs})
        return super().send_action(action, as_list=as_list, **kwargs)

    async def send_awaiting_actions(self, *_):
        self._drop_awaiting()

    def _drop_awaiting(self):
        # panoramisk queues unanswered actions to re-send after a reconnect; we fail them.
        while self.awaiting_actions:
            action = self.awaiting_actions.popleft()
            fut = getattr(action, "future", None)
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("AMI connection lost; action not re-sent"))
            log.warning("ami.action_dropped", action=action.get("action", "?"))

    # --- connection lifecycle ------------------------------------------------
    def connection_made(self, f):
        super().connection_made(f)
        if self._connected:
            self._start_watchdog()

    def login(self, future):
        ok = super().login(future)
        if ok:
            self.connected_event.set()
            log.info("ami.connected", host=self.config["host"], port=self.config["port"])
            for hook in self.login_hooks:
                task = self.loop.create_task(hook())
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        else:
            log.error("ami.login_failed", host=self.config["host"])
        return ok

    def connection_lost(self, exc):
        was_connected = self.connected_event.is_set()
        self.connected_event.clear()
        log.warning("ami.disconnected", error=repr(exc) if exc else None)
        for hook in self.disconnect_hooks if was_connected else ():
            try:
                hook()
            except Exception:
                log.exception("ami.event_error", callback=getattr(hook, "__name__", "?"))
        super().connection_lost(exc)
        self._drop_awaiting()  # the protocol moved unanswered actions there on close

    def ping(self):  # replaced by the watchdog
        return None

    def _start_watchdog(self):
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self.loop.create_task(self._watch())

    async def _watch(self):
        while True:
            await asyncio.sleep(self.ping_interval_s)
            if not self.authenticated or self.protocol is None:
                continue
            try:
                await asyncio.wait_for(self.protocol.send({"Action": "Ping"}), self.ping_timeout_s)
            except (asyncio.TimeoutError, ConnectionError) as exc:
                log.error("ami.ping_timeout", timeout_s=self.ping_timeout_s, error=repr(exc))
                transport = getattr(self.protocol, "transport", None)
                if transport is not None:
                    transport.abort()  # connection_lost → reconnect

    def close(self):
        if self._watchdog:
            self._watchdog.cancel()
        super().close()
