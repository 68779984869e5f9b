"""Channel variables the bridge reads or sets: the one list.

Read by the call flow:
  ICS_FACILITY    facility id of the inmate phone (pjsip.conf endpoint set_var)
  CHANNEL(rtp,src), CHANNEL(rtp,dest)  the called channel's RTP addresses (Asterisk's, the
                  phone's), read on accept for ics-recorder (recordings.method "capture")
Set by the call flow for the dialplan (dialplan/extensions.conf):
  ICS_CALL_ID     our call id; passed to the called-party gosub and to settlement
  ICS_STATION     the handset's caller ID name, as received (for CDRs)
  ICS_RESULT      "dial" when every check passed; anything else means do not dial
  ICS_DIAL        the Dial() target: dial.template filled from a parsed Destination (digits, + only)
  ICS_RING_S      seconds to let the called phone ring
  ICS_LIMIT_MS    Dial L() backstop: the call's limit (the smaller of the facility
                  limit and what the reserved balance buys) plus a few seconds; the
                  AMI listener ends the call at the limit itself, with a prompt
  ICS_NOTICE      ":<warn ms>:<repeat ms>" appended to L(): the periodic facility
                  notice to the called party (LIMIT_* below), or empty when off
  CALLERID(name), CALLERID(num)  fixed per facility before Dial
  ICS_CALLEE_PROMPTS  the called party's prompts directory (their number's, account's or the
                  facility's language): Dial L()'s notice and time-limit sounds
Set by the call flows on their own channel (Session.set_language), with CHANNEL(language):
  ICS_PROMPTS     this channel's prompts directory, ics/prompts (English) or ics/prompts/<lang>:
                  [ics-cut] and [ics-fail] play from it ([globals] has the English default)
Set by the dialplan for the notice (Dial L() reads them from the inmate channel):
  LIMIT_WARNING_FILE, LIMIT_PLAYAUDIO_CALLER, LIMIT_PLAYAUDIO_CALLEE
  LIMIT_TIMEOUT_FILE  always set: without any LIMIT_* sound Dial turns L() into S(),
                  which replaces the called leg's TIMEOUT(absolute) after U() returns
Set on the called channel by the called-party menu:
  GOSUB_RESULT    "ABORT" unless the call was accepted (Asterisk's Dial U() contract)
  TIMEOUT(absolute)  on accept: the paid minute plus rating.BACKSTOP_MS; the AMI
                  listener pushes it back each time it holds the next minute
  ICS_MENU_DONE   "1" when the menu ended normally (accept, refuse, block, no response,
                  the inmate gone); [ics-callee] clears it before the AGI. Unset after the
                  AGI (the FastAGI socket died, the flow raised) is a menu fault.
  ICS_COURTESY_END  on accepting a courtesy call: the provider's billing number; [ics-cut] then
                  tells the called party how to open a prepaid account and says it
Set by the dialplan on a menu fault ([ics-callee]: on the called channel, and on the
inmate channel via MASTER_CHANNEL):
  ICS_FAULT       "menu": [ics-inmate] sends the inmate to [ics-fail] after Dial; passed to
                  settlement (system_error, nothing billed) and, through manager.conf
                  channelvars, on each leg's AMI Hangup to the listener (which records
                  the drop, dated by the first, and settles it if the handler cannot)
Read by settlement (passed as AGI arguments by the hangup handler):
  DIALSTATUS, CHANNEL(hangupsource), HANGUPCAUSE (a network-failure cause: system_error),
  ICS_FAULT (above), STRFTIME(,,%s%3q): Asterisk's clock as the handler starts, the moment
  the call ended; the bill stops there, not when the settle AGI gets to run
"""

FACILITY = "ICS_FACILITY"
CALL_ID = "ICS_CALL_ID"
STATION = "ICS_STATION"
RESULT = "ICS_RESULT"
DIAL = "ICS_DIAL"
RING_S = "ICS_RING_S"
LIMIT_MS = "ICS_LIMIT_MS"
NOTICE = "ICS_NOTICE"
PROMPTS = "ICS_PROMPTS"
CALLEE_PROMPTS = "ICS_CALLEE_PROMPTS"
COURTESY_END = "ICS_COURTESY_END"
GOSUB_RESULT = "GOSUB_RESULT"
TIMEOUT = "TIMEOUT(absolute)"
MENU_DONE = "ICS_MENU_DONE"
FAULT = "ICS_FAULT"
