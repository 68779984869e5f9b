"""`make demo`: one collect call between two pjsua2 softphones on the running stack.

The inmate handset (inmate1) dials the family's number, keys in the inmate
number and PIN; the family phone answers, hears the announcement, presses 1,
talks for 5 seconds and hangs up. Prints the call record and the balance
before and after.
"""

from __future__ import annotations

import json
import sys
import time

from ics import reasons
from tests.support import callflow as cf
from tests.support.ami_tap import AmiTap
from tests.support.phones import Harness


def dollars(cents: int) -> str:
    return f"${cents / 100:.2f}" if cents >= 0 else f"-${-cents / 100:.2f}"


def main() -> int:
    world = cf.make_world(balance_cents=500)
    before = cf.balance(world)
    tap = AmiTap.from_env()
    harness = Harness()
    try:
        inmate = harness.phone("inmate1")
        family = harness.phone(cf.NUMBER)
        inmate.register(10)
        family.register(10)
        print(f"demo: family account fam1 holds {dollars(before)}; inmate {cf.INMATE} dials {cf.NUMBER}")
        mark = tap.mark()
        call = inmate.call(cf.NUMBER)
        cf.login(tap, call, mark)
        incoming = family.wait_incoming(20)
        incoming.answer()
        print("demo: family phone answered; announcement playing")
        cf.press_when(tap, incoming, "menu-accept", world.store.facility(cf.FACILITY)["accept_digit"], mark,
                      channel_prefix=f"PJSIP/{cf.NUMBER}")
        tap.wait_for(lambda e: e.get("Event") == "BridgeEnter"
                     and e.get("Channel", "").startswith(f"PJSIP/{cf.NUMBER}"), 10, since=mark)
        print("demo: accepted and bridged; talking for 5 s")
        time.sleep(5)
        incoming.hangup()
        rec = cf.wait_settled(world)
    finally:
        harness.shutdown()
        tap.close()
    after = cf.balance(world)
    print(json.dumps(rec, indent=2, sort_keys=True))
    print(f"demo: reason {rec['reason']} ({reasons.describe(rec['reason'])})")
    print(f"demo: billed {rec['billed_minutes']} minute(s), {dollars(rec['billed_cents'])}; "
          f"balance {dollars(before)} -> {dollars(after)}")
    return 0 if before - after == rec["billed_cents"] else 1


if __name__ == "__main__":
    sys.exit(main())
