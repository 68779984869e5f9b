"""A carrier-like far end for the e2e tests: the called party behind a switch, not on our Asterisk.

    carrier = Carrier(phones)       # (the `carrier` fixture in tests/e2e/test_carrier.py)
    carrier.start()                 # the switch up, our dial.template pointed at its trunk
    line = carrier.line             # pjsua2 phone 3125550100, registered to the switch
    carrier.codec("alaw")           # the trunk and line speak PCMA only (next call)
    carrier.flash(callee)           # the subscriber flashes; the switch plays the three-way audio
    carrier.stop()

The switch (tests/support/carrier/: a second Asterisk from our root, SIP 127.0.0.1:5070, AMI
5041, RTP 30000-30999) answers our trunk and rings its subscriber's phone. Our side reaches it
as production reaches a carrier: `dial.template = "PJSIP/{e164}@carrier"` (ics-fastagi restarted
with ICS_DIAL_TEMPLATE) and a trunk endpoint `carrier` #included into the rendered pjsip.conf in
the root (dropped again by `docker/stack.sh reload` at stop). Our called leg is PJSIP/carrier-….

A flash: the phone sends INFO Signal=!, the switch raises Flash on its AMI and never passes it
on (FRAME_DROP on the trunk leg); this module then redirects the trunk leg into
[carrier-flash] (dead air, dial tone, digits in band, ringback, a third voice) and the
subscriber into [carrier-flash],held. Our Asterisk gets no SIP event, only that audio.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import REPO, services, stack_dir, stack_setting
from tests.support.callflow import NUMBER
from tests.support.farend import FarEnd

HERE = Path(__file__).resolve().parent
SIP = "127.0.0.1:5070"
AMI_PORT = 5041
TEMPLATE = "PJSIP/{e164}@carrier"
CALLED_LEG = "PJSIP/carrier-"  # our called leg's channel name, over the trunk
OVERLAY = "ics-carrier-pjsip.conf"
# our trunk to the switch (known by its address: it never registers), as the test's overlay
OURS_PJSIP = f"""; tests/support/carrier.py: the trunk to the lab's carrier switch (test overlay)
[carrier](phone-endpoint)
context = ics-outside
allow_transfer = no
aors = carrier

[carrier]
type = aor
contact = sip:{SIP}

[carrier]
type = identify
endpoint = carrier
match = {SIP}
"""


class Carrier:
    def __init__(self, phones):
        self.far = FarEnd("carrier", HERE / "carrier", ami_port=AMI_PORT, ami_user="carrier",
                          subs={"CODEC": "ulaw", "LINE_PASSWORD": stack_setting("ICS_SIP_PASSWORD") or ""})
        self.phones = phones
        self.line = None

    def start(self) -> None:
        self.far.start()
        services.kill("fastagi")
        services.restart("fastagi", env={"ICS_DIAL_TEMPLATE": TEMPLATE})  # (stack.sh up renders the configs)
        etc = stack_dir() / "asterisk/etc/asterisk"
        (etc / OVERLAY).write_text(OURS_PJSIP)
        pjsip = etc / "pjsip.conf"
        pjsip.write_text(pjsip.read_text() + f'\n#include "{OVERLAY}"\n')
        services.asterisk_cli("module reload res_pjsip.so")
        assert "carrier" in services.asterisk_cli("pjsip show endpoint carrier"), "our trunk did not load"
        # pjsua hands an incoming INVITE to the first account of its user, whichever transport it
        # came in on: the single box's phone of this number (an earlier module's) goes first, or it
        # takes the switch's calls (it is made again on use)
        for phone in [p for p in self.phones.phones.values() if p.user == NUMBER and p.server != SIP]:
            self.phones.remove(phone)
        self.line = self.phones.phone(NUMBER, server=SIP)
        self.line.register(10)

    def stop(self) -> None:
        if self.line is not None:
            self.phones.remove(self.line)
            self.line = None
        self.far.stop()
        services.kill("fastagi")
        services.restart("fastagi")  # the default dial.template again
        subprocess.run(["bash", str(REPO / "docker" / "stack.sh"), "reload"], capture_output=True, timeout=120,
                       check=True)  # our configs rendered again: the trunk is gone

    def codec(self, name: str) -> None:
        """The trunk and the line offer only this codec (ulaw or alaw) from the next call on."""
        if name not in ("ulaw", "alaw"):
            raise ValueError(f"not a trunk codec: {name!r}")
        self.far.subs["CODEC"] = name
        self.far.write_config()
        self.far.cli("module reload res_pjsip.so")

    def trunk_leg(self) -> str:
        """The switch's side of our trunk on the live call."""
        chans = [c for c in self.far.cli("core show channels concise").splitlines() if c.startswith("PJSIP/ours-")]
        assert len(chans) == 1, chans
        return chans[0].split("!", 1)[0]

    def flash(self, callee) -> dict:
        """The subscriber flashes (SIP INFO); on the switch's Flash event the trunk leg gets what
        a carrier plays and the subscriber dial tone. Returns the switch's Flash event."""
        tap = self.far.tap
        mark = tap.mark()
        callee.flash_info()
        ev = tap.wait_for({"Event": "Flash"}, 5, since=mark)
        trunk, line = self.trunk_leg(), ev["Channel"]
        tap.action("Setvar", Channel=trunk, Variable="SUBSCRIBER", Value=line)
        resp = tap.action("Redirect", Channel=trunk, Context="carrier-flash", Exten="s", Priority=1,
                          ExtraChannel=line, ExtraContext="carrier-flash", ExtraExten="held", ExtraPriority=1)
        assert resp.get("Response") == "Success", resp
        return ev
