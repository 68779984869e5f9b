"""Redis key layout: the one place every key is named.

All money fields are integer cents. All times are integer epoch milliseconds.
Every phone number in a key, a hash field or a set member is E.164 (+13125550100,
ics.destination); older spellings (3125550100, 011...) are rewritten once by
ics.store.Store.migrate_numbers (icsctl numbers migrate; ics-fastagi runs it at start-up).

Redis Cluster hash tags. Below, {fid}, {aid}... are placeholders; a tag, the part of a key
name Redis Cluster hashes to pick its slot, is written with its literal braces as {a:<aid>},
{i:<iid>} or {n:<node>}. Every key a Lua script touches carries the same tag, so each script
runs in one slot (CROSSSLOT cannot happen; tests/unit/test_key_slots.py reads every script's
KEYS as called):
  {a:<aid>}    an account's money: the account, its ledger, month totals, the money state of its
               calls and the sets of open holds and of steps still to copy (ics.store.money)
  {i:<iid>}    an inmate: the inmate hash, PIN failures, approved list, weekly quota counts
  {n:<node>}   a call node's listener heartbeat and live count, and its calls setting up (ics.capacity)
A money movement that must reach another slot (the call record, the weekly quota) is a second,
idempotent step (ics.store.money.Money.sync_call), tracked in the account's :unsynced set until
it is done; icsctl ledger check reports one left half-done, and settling the call again completes it.

  ics:facilities                    set    facility ids
  ics:facility:{fid}                hash   name, overrides of [facility_defaults]
  ics:inmate:{i:<iid>}              hash   facility, name, pin_salt, pin_hash,
                                           pin_locked (0/1), name_recorded (0/1), unit (living
                                           unit id), status (active|restricted|suspended),
                                           quota_calls_week, quota_minutes_week (restricted; 0 = none),
                                           language (what the inmate hears; "" = the facility's)
  ics:inmate:{i:<iid>}:week:{yyyyWww}  hash  calls, minutes: accepted calls and billed minutes in
                                           that ISO week, facility time; call:{cid} -> minutes for each
                                           call counted (so a replayed count adds nothing: count_week.lua)
  ics:inmate:{i:<iid>}:pin_failures string consecutive wrong PINs (reset on success)
  ics:inmate:{i:<iid>}:approved     hash   number -> approval state (pending|approved|rejected);
                                           pending + approved at most the facility's approved_max
  ics:inmates                       set    inmate ids
  ics:units:{fid}                   set    living unit ids of a facility
  ics:unit:{fid}:{uid}              hash   name, schedule (ics.policy; "" = the facility's)
  ics:lockdown:{fid}                hash   facility-wide lockdown while present: since_ms, by,
                                           note, end_live (0/1)
  ics:lockdown:{fid}:{uid}          hash   the same for one living unit
  ics:privileged                    hash   number -> note (attorney): never recorded or monitored
  ics:audit                         stream append-only: action, by, call, ts, detail (investigator
                                           monitoring, cut-offs, lockdowns)
  ics:monitor:{mid}                 hash   one live-monitoring session: call, by, channel_id,
                                           started_ms, stopped_ms
  ics:block:inmate:{iid}            set    numbers this inmate may not call
  ics:block:facility:{fid}          set    numbers no inmate of the facility may call
  ics:account:{a:<aid>}             hash   type (prepaid|direct_bill|inmate_debit), owner,
                                           balance_cents (direct_bill: minus what it owes),
                                           held_cents, created_ms, monthly_limit_cents
                                           (direct_bill), inmate (inmate_debit: id debit-{iid}),
                                           expired_ms (set while expired: 180 days idle, FCC
                                           64.6130; a deposit deletes it), last_activity_ms
  ics:accounts                      set    account ids
  ics:account:{a:<aid>}:numbers     set    phone numbers billed to the account
  ics:number:{number}               string account id that pays for calls to number
  ics:account:{a:<aid>}:month:{yyyymm}  string  direct_bill: cents billed in that UTC month (settle Lua)
  ics:account:{a:<aid>}:call:{cid}  hash   the money of one call paid by the account, written only by the
                                           money scripts: held_cents, paid_minutes, settled (1), billed_cents,
                                           billed_minutes, tax_cents, credited_cents, credit_reason, week
                                           ("<iid> <yyyyWww>": the quota the call counts towards), v (bumped
                                           by every change); copied to ics:call:{cid} by the second step
  ics:account:{a:<aid>}:holds       set    call ids holding money (reserved, not settled): held_cents ==
                                           the sum of their held_cents (icsctl ledger check)
  ics:account:{a:<aid>}:unsynced    hash   call id -> v of a money change not yet copied to the call record
                                           and the weekly quota (the second step); empty when all is done
  ics:numinfo:{number}              hash   what a number is to the facility, per number: language (the
                                           called party's; else its account's, else the facility's),
                                           free (0/1: never billed, PREA lines, public defenders),
                                           unrecorded (0/1), tty (0/1: a family TTY, billed at most the
                                           facility's tty_rate_cents, audio rules off), note
  ics:courtesy:{number}             string the call id that used the number's one free courtesy call
                                           (taken when dialled, given back by settlement if never bridged)
  ics:lidb:{number}                 hash   line_type (landline|wireless|voip), collect_block (0/1),
                                           new_number (0/1), updated_ms; absent = landline, no blocks
  ics:ledger:{a:<aid>}              stream append-only: kind, amount_cents (> 0), balance_cents
                                           (after it), call, note, ts, minutes (charges);
                                           kind deposit/credit add, charge/refund/expiry take;
                                           balance_cents == deposits - charges - refunds
                                           + credits - expiries (icsctl ledger check)
  ics:call:{cid}                    hash   the call record (see ics.records.FIELDS)
  ics:listener:{n:<node>}:alive     string a call node's AMI listener heartbeat (node.id; the single box is
                                           "main"): set every second while it is logged in to its
                                           node's AMI, expires after LISTENER_ALIVE_MS; the node's
                                           inmate flow places no call without it (nothing would
                                           enforce the call's rules)
  ics:listener:{n:<node>}:live_calls  string how many inmate calls that listener sees placed (the called
                                           leg exists: ringing to bridged), written with the heartbeat,
                                           same expiry (ics.capacity: admission against capacity.max_calls)
  ics:capacity:{n:<node>}:setting_up  zset   inmate channel Uniqueid (the call's Linkedid) -> epoch ms the
                                           node's flow admitted it, until its listener counts it live or
                                           its channel is gone (ics.capacity)
  ics:nodes                         set    call node ids that beat (a cluster's nodes; a dead one with
                                           nothing left to settle is dropped until it beats again)
  ics:node:{node}                   hash   ami_host, ami_port (where icsctl and peers reach that node's
                                           AMI), beat_ms (its listener's last heartbeat, kept; dates
                                           the drop of its calls when the node dies: ami.peers)
  ics:node:{node}:sweep             string a peer settling that dead node's calls holds this (NX, expiry)
  ics:calls                         zset   call ids scored by start time
  ics:recordings:flagged_count      string calls whose recording was found short or missing when they
                                           settled (ics.recordings; shown by icsctl ledger check)
  ics:recordings:flagged            zset   those call ids, scored by the call's ended_ms
  ics:rules:number:{number}         hash   rule -> response (disconnect|warn|flag|off) for calls to that
                                           number, over its facility's (icsctl number rules; an attorney's
                                           PBX with music on hold)
  ics:rules:call:{cid}              hash   rule -> response for one call, over the number's and the
                                           facility's (set before the bridge by whoever knows the call is
                                           special, e.g. a relay/TTY call turning silence and tone rules off);
                                           field "why" says who and why (kept on the record)
  ics:alerts:threeway               stream investigators' alerts: call, facility, inmate, number, rule,
                                           response, at_ms, evidence (JSON), for every rule that fired
                                           with response flag or warn (capped near ALERTS_MAXLEN)
  ics:recordings:pending            zset   calls whose recording check waits for Asterisk to close the
                                           file (scored by ended_ms; the AMI listener retries them)
"""

PREFIX = "ics"

FACILITIES = f"{PREFIX}:facilities"
INMATES = f"{PREFIX}:inmates"
ACCOUNTS = f"{PREFIX}:accounts"
CALLS = f"{PREFIX}:calls"
NODES = f"{PREFIX}:nodes"
RECORDINGS_FLAGGED_COUNT = f"{PREFIX}:recordings:flagged_count"
RECORDINGS_FLAGGED = f"{PREFIX}:recordings:flagged"
RECORDINGS_PENDING = f"{PREFIX}:recordings:pending"
ALERTS = f"{PREFIX}:alerts:threeway"
ALERTS_MAXLEN = 100_000
LISTENER_ALIVE_MS = 3000  # three missed beats (ami.listener HEARTBEAT_S): calls are refused
DEFAULT_NODE = "main"     # config node.id of a single box


def listener_alive(node: str) -> str:
    return f"{PREFIX}:listener:{{n:{node}}}:alive"


def live_calls(node: str) -> str:
    return f"{PREFIX}:listener:{{n:{node}}}:live_calls"


def calls_setting_up(node: str) -> str:
    return f"{PREFIX}:capacity:{{n:{node}}}:setting_up"


def node(nid: str) -> str:
    return f"{PREFIX}:node:{nid}"


def node_sweep(nid: str) -> str:
    return f"{PREFIX}:node:{nid}:sweep"


# the single box's (node.id "main")
LISTENER_ALIVE = listener_alive(DEFAULT_NODE)
LIVE_CALLS = live_calls(DEFAULT_NODE)
CALLS_SETTING_UP = calls_setting_up(DEFAULT_NODE)


def facility(fid: str) -> str:
    return f"{PREFIX}:facility:{fid}"


def inmate(iid: str) -> str:
    return f"{PREFIX}:inmate:{{i:{iid}}}"


def pin_failures(iid: str) -> str:
    return f"{inmate(iid)}:pin_failures"


def approved(iid: str) -> str:
    return f"{inmate(iid)}:approved"


def inmate_week(iid: str, week: str) -> str:
    return f"{inmate(iid)}:week:{week}"


def units(fid: str) -> str:
    return f"{PREFIX}:units:{fid}"


def unit(fid: str, uid: str) -> str:
    return f"{PREFIX}:unit:{fid}:{uid}"


def lockdown(fid: str, uid: str | None = None) -> str:
    return f"{PREFIX}:lockdown:{fid}" if not uid else f"{PREFIX}:lockdown:{fid}:{uid}"


PRIVILEGED = f"{PREFIX}:privileged"
AUDIT = f"{PREFIX}:audit"


def monitor(mid: str) -> str:
    return f"{PREFIX}:monitor:{mid}"


def block_inmate(iid: str) -> str:
    return f"{PREFIX}:block:inmate:{iid}"


def block_facility(fid: str) -> str:
    return f"{PREFIX}:block:facility:{fid}"


def account(aid: str) -> str:
    return f"{PREFIX}:account:{{a:{aid}}}"


def account_numbers(aid: str) -> str:
    return f"{account(aid)}:numbers"


def call_money(aid: str, cid: str) -> str:
    return f"{account(aid)}:call:{cid}"


def account_holds(aid: str) -> str:
    return f"{account(aid)}:holds"


def account_unsynced(aid: str) -> str:
    return f"{account(aid)}:unsynced"


def tag_id(key: str) -> str:
    """The id inside a key's hash tag: tag_id(ledger("fam1")) == "fam1"."""
    return key[key.index("{") + 1:key.index("}")].split(":", 1)[1]


def number_account(number: str) -> str:
    return f"{PREFIX}:number:{number}"


def account_month(aid: str, yyyymm: str) -> str:
    return f"{account(aid)}:month:{yyyymm}"


def numinfo(number: str) -> str:
    return f"{PREFIX}:numinfo:{number}"


def courtesy(number: str) -> str:
    return f"{PREFIX}:courtesy:{number}"


def lidb(number: str) -> str:
    return f"{PREFIX}:lidb:{number}"


def ledger(aid: str) -> str:
    return f"{PREFIX}:ledger:{{a:{aid}}}"


def call(cid: str) -> str:
    return f"{PREFIX}:call:{cid}"


def number_rules(number: str) -> str:
    return f"{PREFIX}:rules:number:{number}"


def call_rules(cid: str) -> str:
    return f"{PREFIX}:rules:call:{cid}"


# Every place a number is kept, for the migration to E.164: hashes whose fields are numbers,
# sets whose members are numbers, and key prefixes followed by a number.
NUMBER_HASHES = (f"{PREFIX}:inmate:*:approved", PRIVILEGED)
NUMBER_SETS = (f"{PREFIX}:block:inmate:*", f"{PREFIX}:block:facility:*", f"{PREFIX}:account:*:numbers")
NUMBER_KEY_PREFIXES = (f"{PREFIX}:number:", f"{PREFIX}:lidb:", f"{PREFIX}:numinfo:", f"{PREFIX}:courtesy:")

# Key prefixes whose keys were named without a hash tag before tags ({a:<aid>}, {i:<iid>}): a key
# under one of them with no "{" is old data, renamed by icsctl keys migrate (Store.migrate_keys);
# ics-fastagi refuses to start while one is left (it could not find what it holds).
OLD_ACCOUNT, OLD_LEDGER, OLD_INMATE = f"{PREFIX}:account:", f"{PREFIX}:ledger:", f"{PREFIX}:inmate:"
UNTAGGED_PREFIXES = (OLD_ACCOUNT, OLD_LEDGER, OLD_INMATE)


# Who may write which keys: the Redis ACL users (ics.redis_acl renders them; docker/stack.sh
# writes the ACL file at set-up). Every service reads every ics:* key; these are the only ones
# each may change (a script's KEYS count as written, Redis checks them before it runs).
_ANY = "*"
WRITES: dict[str, tuple[str, ...]] = {
    # the call flow: the call record and its money (holds, the settle script's ledger and counts),
    # the caller's PIN state and name, the called party's block (9), admission; at start-up it
    # rewrites stored numbers as E.164 (Store.migrate_numbers: lists, blocks, number and LIDB keys;
    # keys named before hash tags it only looks for: icsctl keys migrate renames them)
    # (a * in a pattern spans ":": inmate(*)* covers its pin_failures, approved and week keys,
    # account(*)* its holds and its calls' money)
    "fastagi": (call(_ANY), CALLS, inmate(_ANY) + _ANY, account(_ANY) + _ANY, ledger(_ANY), number_account(_ANY), lidb(_ANY),
                block_inmate(_ANY), block_facility(_ANY),
                PRIVILEGED, live_calls(_ANY), calls_setting_up(_ANY), RECORDINGS_FLAGGED_COUNT,
                RECORDINGS_FLAGGED, RECORDINGS_PENDING,
                # a free line's use is audited (13); a courtesy call claims its number's one free call
                # (given back if it never bridged); the E.164 rewrite covers numinfo and courtesy keys
                AUDIT, numinfo(_ANY), courtesy(_ANY)),
    # the listener: its node's heartbeat and where to reach it (node(*) covers a dead peer's sweep
    # lock), the rules' cuts and drops on call records, next-minute holds, settlement when the
    # hangup handler could not (ledger, monthly and weekly counts), recordings
    "listener": (call(_ANY), account(_ANY) + _ANY, ledger(_ANY),
                 inmate_week(_ANY, _ANY), listener_alive(_ANY), live_calls(_ANY), calls_setting_up(_ANY),
                 NODES, node(_ANY), RECORDINGS_FLAGGED_COUNT, RECORDINGS_FLAGGED, RECORDINGS_PENDING,
                 # a rule that warned or flagged (11); settlement gives back an unused courtesy call
                 ALERTS, courtesy(_ANY)),
    # ics-recorder reads call records (when a call was bridged and ended) and writes nothing
    "recorder": (),
    # icsctl administers everything of ours
    "icsctl": (f"{PREFIX}:*",),
}
READS = f"{PREFIX}:*"
