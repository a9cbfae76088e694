"""The case service: every alarm becomes a case that runs the five-step closed loop.

    received -> dispatched -> acknowledged (handled) -> feedback (the button shows "someone is
    coming") -> closed (by a person, with a note)       |  or: cancelled by the person at the button

All actions go through `CaseService` (the gateway's event handler and timer, `fengqiao case ...`,
later the duty console). A transition is one SQLite transaction that updates the case, appends a
step (time, actor, detail) and queues its *effects* in `case_effects`: gateway events to emit
upstream (`ctx.emit`), acks to buttons (`ctx.send_ack`), siren downlinks (`ctx.send_downlink`).
`flush(ctx)` performs queued effects in order and marks them done; the gateway calls it right
after a transition and from its timer, so an acknowledgement typed at `fengqiao case ack` in
another process reaches the button within one timer tick. Only the gateway process appends to
the event log (the hash chain has one writer); the CLI only writes these tables.

Failure modes and what happens:
- a handler sees the same alarm twice (restart catch-up, redelivery): `case_inputs` is keyed by
  event id, the second time is a no-op;
- the gateway stops between a transition and its effects: they stay queued and go out on the next
  flush (at-least-once: an effect performed just before a crash may be repeated once);
- a downlink fails (device revoked, broker down): the effect is retried on later flushes and
  given up after MAX_ATTEMPTS with the error kept in `case_effects.error`;
- no village configuration yet: the case is still opened and stored, with no one to alert, and
  the dispatch step says so.

Errors (all subclass CaseError): CaseNotFound, CaseStateError, UnknownPerson.
"""

import json
import logging
import threading

from gateway.cases import severity
from gateway.village.db import DirectoryCache

log = logging.getLogger("fengqiao.cases")

# SPEC section 3: ack stages and siren patterns.
STAGE_STORED, STAGE_DISPATCHED, STAGE_RESPONDER, STAGE_CLOSED, STAGE_CANCELLED = 0, 1, 2, 3, 4
PATTERN_NEIGHBOUR, PATTERN_PATROL = 1, 2
DOWN_SIREN = 0x82
MAX_ATTEMPTS = 5
LATE_DELIVERY_S = 60       # an alarm whose device time is older than this when stored is marked late
OPEN_STATES = ("open", "acknowledged")
OUTCOMES = ("real", "false", "test", "other")   # how a case was closed (duty console)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,                  -- open | acknowledged | closed | cancelled
    kind INTEGER NOT NULL, level INTEGER NOT NULL,
    device_id INTEGER NOT NULL, key_id INTEGER, alarm_seq INTEGER, alarm_event_id INTEGER NOT NULL,
    place_id TEXT, group_id TEXT, village_id TEXT,
    opened_at REAL NOT NULL, device_time INTEGER,
    dispatched_at REAL, acknowledged_at REAL, acknowledged_by TEXT, feedback_at REAL,
    closed_at REAL, closed_by TEXT, close_note TEXT,
    escalated_to TEXT NOT NULL DEFAULT 'village',
    village_deadline REAL, township_deadline REAL NOT NULL,
    first_responder TEXT, assigned_to TEXT);
CREATE INDEX IF NOT EXISTS cases_status ON cases(status);
CREATE TABLE IF NOT EXISTS case_inputs (
    event_id INTEGER PRIMARY KEY, case_id INTEGER, kind TEXT NOT NULL,
    device_id INTEGER NOT NULL, key_id INTEGER, seq INTEGER, device_time INTEGER, received_at REAL NOT NULL,
    role TEXT NOT NULL);                   -- first | repeat | joined | cancel | cancel_refused | unmatched
CREATE INDEX IF NOT EXISTS case_inputs_case ON case_inputs(case_id);
CREATE INDEX IF NOT EXISTS case_inputs_dev ON case_inputs(device_id, key_id, seq);
CREATE TABLE IF NOT EXISTS case_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, case_id INTEGER NOT NULL, step TEXT NOT NULL,
    at REAL NOT NULL, actor TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS case_steps_case ON case_steps(case_id);
CREATE TABLE IF NOT EXISTS case_sirens (
    case_id INTEGER NOT NULL, device_id INTEGER NOT NULL, pattern INTEGER NOT NULL,
    on_at REAL NOT NULL, off_at REAL, PRIMARY KEY (case_id, device_id));
CREATE TABLE IF NOT EXISTS case_effects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, case_id INTEGER, kind TEXT NOT NULL, payload TEXT NOT NULL,
    created_at REAL NOT NULL, done_at REAL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT);
CREATE INDEX IF NOT EXISTS case_effects_pending ON case_effects(done_at);
CREATE TABLE IF NOT EXISTS case_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class CaseError(Exception):
    """A case action that cannot be done; the message says why."""


class CaseNotFound(CaseError, LookupError):
    pass


class CaseStateError(CaseError):
    """The action does not apply to the case in its current state (e.g. closing a closed case)."""


class UnknownPerson(CaseError):
    pass


def device_text(device_id):
    return "%08x" % device_id


class CaseService:
    def __init__(self, db, clock, registry=None):
        self.db = db
        self.clock = clock
        self.db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._directory = DirectoryCache(db, registry)
        self.effect_failures = 0

    def directory(self):
        """The current village configuration (reloaded after `fengqiao registry import`), or None.

        Called at the start of each action, *outside* its transaction: a reload may ask the
        registry (its own lock and connection); doing that while holding our write transaction
        could deadlock with a registry write waiting for the database. Inside a transaction the
        code uses `_dir()`, the configuration already loaded."""
        with self._lock:         # one thread at a time on our connection
            return self._directory.get()

    def _dir(self):
        return self._directory.current()

    # -- device events --------------------------------------------------------------------

    def on_event(self, ev):
        """Route a stored device event; returns the case id it touched, or None."""
        if ev.source != "device":
            return None
        if ev.kind == "alarm":
            return self.on_alarm(ev)
        if ev.kind == "alarm_cancel":
            return self.on_cancel(ev)
        return None

    def on_alarm(self, ev):
        self.directory()
        with self._lock, _Tx(self.db):
            seen = self.db.execute("SELECT case_id FROM case_inputs WHERE event_id = ?", (ev.event_id,)).fetchone()
            if seen:
                return seen[0]
            d = self._dir()
            now = self.clock.now()
            kind = ev.body[0]
            place = ev.place_id or (d.device_place(ev.device_id) if d else None)
            level = severity.level_for(d, kind, place) if d else severity.HIGHEST - 2
            group = d.group_of_household.get(place) if d else None
            joined = self._case_to_join(ev, group)
            if joined is not None:
                return self._join(joined, ev, level, now)
            return self._open(ev, d, kind, place, level, group, now)

    def _case_to_join(self, ev, group):
        """An open case this alarm belongs to: same device (repeat press), or same group within the window."""
        row = self.db.execute(
            "SELECT c.case_id FROM cases c JOIN case_inputs i ON i.case_id = c.case_id "
            "WHERE c.status IN ('open', 'acknowledged') AND i.device_id = ? AND i.kind = 'alarm' "
            "ORDER BY c.case_id DESC LIMIT 1", (ev.device_id,)).fetchone()
        if row:
            return row[0]
        if group is None:
            return None
        d = self._dir()
        window = d.cases_settings()["correlate_window_s"] if d else 0
        row = self.db.execute(
            "SELECT case_id FROM cases WHERE status IN ('open', 'acknowledged') AND group_id = ? AND opened_at >= ? "
            "ORDER BY case_id DESC LIMIT 1", (group, ev.received_at - window)).fetchone()
        return row[0] if row else None

    def _open(self, ev, d, kind, place, level, group, now):
        village = d.above(place, "village") if d and place else None
        v_deadline, t_deadline = severity.deadlines(d, level, ev.received_at) if d else (
            ev.received_at + 300, ev.received_at + 1200)
        first = d.grid_member_for(place) if d and place else None
        cur = self.db.execute(
            "INSERT INTO cases (status, kind, level, device_id, key_id, alarm_seq, alarm_event_id, place_id, group_id,"
            " village_id, opened_at, device_time, dispatched_at, village_deadline, township_deadline,"
            " first_responder) VALUES ('open',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (kind, level, ev.device_id, ev.key_id, ev.seq, ev.event_id, place, group, village, ev.received_at,
             ev.device_time, now, v_deadline, t_deadline, first))
        case_id = cur.lastrowid
        self._input(ev, case_id, "first")
        received = {"event_id": ev.event_id, "device": device_text(ev.device_id), "seq": ev.seq,
                    "kind": severity.kind_name(kind), "device_time": ev.device_time}
        if ev.device_time and ev.received_at - ev.device_time > LATE_DELIVERY_S:
            # sent from the button's outbox after an outage: still dispatched, but say how old it is
            received["delivered_late_s"] = round(ev.received_at - ev.device_time)
        self._step(case_id, "received", ev.received_at, "system", received)

        neighbours, checkpoints, notify, note = [], [], [], None
        if d is None:
            note = "no village configuration imported: nobody to alert"
        else:
            info = severity.level_info(d, level)
            duration = d.cases_settings()["siren_duration_s"]
            if group:
                households = d.groups[group]["households"]
                neighbours = [x for x in d.devices_in(households) if x != ev.device_id]
            else:
                note = "household is in no joint-defence group"
            if info["patrol_alert"] and village:
                checkpoints = [x for x in d.devices_under(village, role="checkpoint") if x != ev.device_id]
            for dev in neighbours:
                self._siren_on(case_id, dev, PATTERN_NEIGHBOUR, duration, now)
            for dev in checkpoints:
                self._siren_on(case_id, dev, PATTERN_PATROL, duration, now)
            notify = [first] if first else []
        self._queue(case_id, "ack", {"device_id": ev.device_id, "seq": ev.seq, "stage": STAGE_DISPATCHED})
        # sirens and the button's ack are queued first: they go out before any event is written to the log
        self._emit(case_id, "case_opened", ev.received_at, "system", ev.device_id, place,
                   {"alarm_event_id": ev.event_id, "kind": severity.kind_name(kind), "level": level,
                    "group": group, "village": village})
        detail = {"level": level, "first_responder": first, "notify": notify,
                  "sirens": [device_text(x) for x in neighbours], "checkpoints": [device_text(x) for x in checkpoints],
                  "village_deadline": v_deadline, "township_deadline": t_deadline}
        if note:
            detail["note"] = note
        self._step(case_id, "dispatched", now, "system", detail)
        self._emit(case_id, "case_dispatched", now, "system", ev.device_id, place, detail)
        if level >= severity.HIGHEST:
            self._escalate(case_id, "township", "severity", now, d, place)
        return case_id

    def _join(self, case_id, ev, level, now):
        case = self._case(case_id)
        role = "repeat" if any(i["device_id"] == ev.device_id and i["kind"] == "alarm"
                               for i in self._inputs(case_id)) else "joined"
        self._input(ev, case_id, role)
        detail = {"event_id": ev.event_id, "device": device_text(ev.device_id), "seq": ev.seq, "role": role,
                  "kind": severity.kind_name(ev.body[0]), "level": level}
        self._step(case_id, "joined", now, "system", detail)
        self._emit(case_id, "case_joined", now, "system", ev.device_id, ev.place_id, detail)
        stage = STAGE_RESPONDER if case["status"] == "acknowledged" else STAGE_DISPATCHED
        self._queue(case_id, "ack", {"device_id": ev.device_id, "seq": ev.seq, "stage": stage})
        if level > case["level"]:
            d = self._dir()
            v_deadline, t_deadline = severity.deadlines(d, level, case["opened_at"]) if d else (
                case["village_deadline"], case["township_deadline"])
            self.db.execute("UPDATE cases SET level = ?, village_deadline = ?, township_deadline = ? WHERE case_id = ?",
                            (level, v_deadline, t_deadline, case_id))
            self._step(case_id, "level_raised", now, "system", {"from": case["level"], "to": level})
            if level >= severity.HIGHEST and case["escalated_to"] == "village" and case["status"] == "open":
                self._escalate(case_id, "township", "severity", now, d, case["place_id"])
        return case_id

    def on_cancel(self, ev):
        self.directory()
        with self._lock, _Tx(self.db):
            if self.db.execute("SELECT 1 FROM case_inputs WHERE event_id = ?", (ev.event_id,)).fetchone():
                return None
            alarm_seq = ev.body[0]
            row = self.db.execute(
                "SELECT case_id, device_time, received_at FROM case_inputs WHERE device_id = ? AND key_id IS ? "
                "AND seq = ? AND kind = 'alarm'", (ev.device_id, ev.key_id, alarm_seq)).fetchone()
            now = self.clock.now()
            if row is None:
                self._input(ev, None, "unmatched")
                self._emit(None, "case_cancel_unmatched", now, "system", ev.device_id, ev.place_id,
                           {"event_id": ev.event_id, "alarm_seq": alarm_seq, "device": device_text(ev.device_id)})
                return None
            case_id, alarm_dt, alarm_rx = row
            case = self._case(case_id)
            d = self._dir()
            grace = d.cases_settings()["cancel_grace_s"] if d else 30
            if ev.device_time and alarm_dt:
                elapsed = ev.device_time - alarm_dt
            else:
                elapsed = ev.received_at - alarm_rx
            others = {i["device_id"] for i in self._inputs(case_id) if i["kind"] == "alarm"} - {ev.device_id}
            reason = None
            if case["status"] not in OPEN_STATES:
                reason = "case already %s" % case["status"]
            elif elapsed > grace:
                reason = "grace period of %d s passed (%.0f s after the alarm)" % (grace, elapsed)
            elif others:
                reason = "other households pressed too (%s)" % ", ".join(device_text(x) for x in sorted(others))
            actor = "person@" + device_text(ev.device_id)
            if reason:
                self._input(ev, case_id, "cancel_refused")
                detail = {"event_id": ev.event_id, "alarm_seq": alarm_seq, "reason": reason}
                self._step(case_id, "cancel_refused", now, actor, detail)
                self._emit(case_id, "case_cancel_refused", now, actor, ev.device_id, case["place_id"], detail)
                return case_id
            self._input(ev, case_id, "cancel")
            self.db.execute("UPDATE cases SET status = 'cancelled', closed_at = ?, closed_by = ?, close_note = ? "
                            "WHERE case_id = ?", (now, actor, "cancelled by the person at the button", case_id))
            detail = {"event_id": ev.event_id, "alarm_seq": alarm_seq, "elapsed_s": round(elapsed, 3)}
            self._step(case_id, "cancelled", now, actor, detail)
            self._emit(case_id, "case_cancelled", now, actor, ev.device_id, case["place_id"], detail)
            self._sirens_off(case_id, now)
            for i in self._inputs(case_id):
                if i["kind"] == "alarm":
                    self._queue(case_id, "ack", {"device_id": i["device_id"], "seq": i["seq"], "stage": STAGE_CANCELLED})
            return case_id

    # -- actions by people (CLI, duty console) -----------------------------------------------

    def _person(self, person_id):
        d = self._dir()
        if d is not None and person_id not in d.people:
            raise UnknownPerson("no person %r in the village configuration (known: %s)"
                                % (person_id, ", ".join(sorted(d.people)) or "none"))
        if not person_id:
            raise UnknownPerson("say who does it (a person id)")
        return person_id

    def acknowledge(self, case_id, actor, note=""):
        self.directory()
        with self._lock, _Tx(self.db):
            self._person(actor)
            case = self._open_case(case_id)
            if case["status"] == "acknowledged":
                raise CaseStateError("case %d was already acknowledged by %s" % (case_id, case["acknowledged_by"]))
            self._acknowledge(case, actor, note, self.clock.now())

    def _acknowledge(self, case, actor, note, now, implicit=False):
        case_id = case["case_id"]
        self.db.execute("UPDATE cases SET status = 'acknowledged', acknowledged_at = ?, acknowledged_by = ? "
                        "WHERE case_id = ?", (now, actor, case_id))
        detail = {"note": note, "escalated_to": case["escalated_to"]}
        if implicit:
            detail["implicit"] = "closed without a separate acknowledgement"
        self._step(case_id, "acknowledged", now, actor, detail)
        self._emit(case_id, "case_acknowledged", now, actor, case["device_id"], case["place_id"], detail)
        for i in self._inputs(case_id):
            if i["kind"] == "alarm":
                self._queue(case_id, "ack", {"device_id": i["device_id"], "seq": i["seq"], "stage": STAGE_RESPONDER,
                                             "feedback": True})

    def dispatch(self, case_id, actor, to_person, note=""):
        self.directory()
        with self._lock, _Tx(self.db):
            self._person(actor)
            self._person(to_person)
            case = self._open_case(case_id)
            now = self.clock.now()
            self.db.execute("UPDATE cases SET assigned_to = ? WHERE case_id = ?", (to_person, case_id))
            detail = {"to": to_person, "note": note, "manual": True}
            self._step(case_id, "dispatched", now, actor, detail)
            self._emit(case_id, "case_dispatched", now, actor, case["device_id"], case["place_id"], detail)

    def note(self, case_id, actor, text):
        """A note on an open or closed case (step `note`, event `case_note`); no effect on devices."""
        if not text or not text.strip():
            raise CaseStateError("a note needs some text")
        self.directory()
        with self._lock, _Tx(self.db):
            self._person(actor)
            case = self._case(case_id)
            now = self.clock.now()
            self._step(case_id, "note", now, actor, {"note": text})
            self._emit(case_id, "case_note", now, actor, case["device_id"], case["place_id"], {"note": text})

    def close(self, case_id, actor, note, outcome=None):
        """Step 5. `outcome` (optional): one of OUTCOMES, kept in the step and the case_closed event."""
        if not note or not note.strip():
            raise CaseStateError("closing a case needs a note (what happened, what was done)")
        if outcome is not None and outcome not in OUTCOMES:
            raise CaseStateError("outcome must be one of %s" % ", ".join(OUTCOMES))
        self.directory()
        with self._lock, _Tx(self.db):
            self._person(actor)
            case = self._open_case(case_id)
            now = self.clock.now()
            if case["status"] == "open":
                self._acknowledge(case, actor, "", now, implicit=True)
            self.db.execute("UPDATE cases SET status = 'closed', closed_at = ?, closed_by = ?, close_note = ? "
                            "WHERE case_id = ?", (now, actor, note, case_id))
            closed = {"note": note} if outcome is None else {"note": note, "outcome": outcome}
            self._step(case_id, "closed", now, actor, closed)
            self._emit(case_id, "case_closed", now, actor, case["device_id"], case["place_id"], closed)
            self._sirens_off(case_id, now)
            for i in self._inputs(case_id):
                if i["kind"] == "alarm":
                    self._queue(case_id, "ack", {"device_id": i["device_id"], "seq": i["seq"], "stage": STAGE_CLOSED})

    # -- timer: deadlines ------------------------------------------------------------------

    def check_deadlines(self):
        """Escalate unacknowledged cases whose deadline passed; returns [(case_id, to), ...]."""
        done = []
        self.directory()
        with self._lock, _Tx(self.db):
            now = self.clock.now()
            d = self._dir()
            rows = self.db.execute(
                "SELECT case_id FROM cases WHERE status = 'open' AND ((escalated_to = 'village' AND village_deadline <= ?)"
                " OR (escalated_to = 'township' AND township_deadline <= ?)) ORDER BY case_id", (now, now)).fetchall()
            for (case_id,) in rows:
                case = self._case(case_id)
                if case["escalated_to"] == "village":
                    self._escalate(case_id, "township", "village deadline", now, d, case["place_id"],
                                   deadline=case["village_deadline"])
                    done.append((case_id, "township"))
                if case["township_deadline"] <= now:
                    self._escalate(case_id, "county", "township deadline", now, d, case["place_id"],
                                   deadline=case["township_deadline"])
                    done.append((case_id, "county"))
        return done

    def _escalate(self, case_id, to, reason, now, d, place, deadline=None):
        case = self._case(case_id)
        if to == "township":
            notify = d.duty_officers_for(place) if d and place else []
        else:
            notify = d.county_officers_for(place) if d and place else []
        self.db.execute("UPDATE cases SET escalated_to = ? WHERE case_id = ?", (to, case_id))
        detail = {"from": case["escalated_to"], "to": to, "reason": reason, "notify": notify, "deadline": deadline}
        self._step(case_id, "escalated", now, "system", detail)
        self._emit(case_id, "case_escalated", now, "system", case["device_id"], place, detail)

    # -- effects ---------------------------------------------------------------------------

    def flush(self, ctx):
        """Perform queued effects in order through the gateway context; returns how many were done."""
        n = 0
        with self._lock:
            rows = self.db.execute("SELECT id, case_id, kind, payload, attempts FROM case_effects "
                                   "WHERE done_at IS NULL ORDER BY id").fetchall()
            for effect_id, case_id, kind, payload, attempts in rows:
                p = json.loads(payload)
                try:
                    self._perform(ctx, case_id, kind, p)
                except Exception as exc:  # noqa: BLE001 - any failure of a neighbour is kept and retried
                    self.effect_failures += 1
                    attempts += 1
                    give_up = attempts >= MAX_ATTEMPTS
                    log.warning("case %s effect %s (%s) failed (attempt %d%s): %s", case_id, effect_id, kind,
                                attempts, ", giving up" if give_up else "", exc)
                    self.db.execute("UPDATE case_effects SET attempts = ?, error = ?, done_at = ? WHERE id = ?",
                                    (attempts, "%s: %s" % (type(exc).__name__, exc),
                                     self.clock.now() if give_up else None, effect_id))
                    continue
                self.db.execute("UPDATE case_effects SET done_at = ?, attempts = ? WHERE id = ?",
                                (self.clock.now(), attempts + 1, effect_id))
                n += 1
        return n

    def _perform(self, ctx, case_id, kind, p):
        if kind == "emit":
            ctx.emit(p["kind"], p["body"], device_id=p["device_id"], place_id=p["place_id"], actor=p["actor"])
        elif kind == "ack":
            ctx.send_ack(p["device_id"], p["seq"], p["stage"])
            if p.get("feedback"):
                self._feedback(ctx, case_id, p)
        elif kind == "siren":
            ctx.send_downlink(p["device_id"], DOWN_SIREN, [p["on"], p["pattern"], p["duration_s"]])
        else:
            raise CaseError("unknown effect kind %r" % kind)

    def _feedback(self, ctx, case_id, p):
        """Step 4: the button was told "someone is coming"; recorded once per case."""
        now = self.clock.now()
        with _Tx(self.db):
            case = self._case(case_id)
            first = case["feedback_at"] is None
            if first:
                self.db.execute("UPDATE cases SET feedback_at = ? WHERE case_id = ?", (now, case_id))
            detail = {"device": device_text(p["device_id"]), "seq": p["seq"], "stage": p["stage"]}
            self._step(case_id, "feedback", now, "system", detail)
        body = dict(detail, case_id=case_id, at=now)
        ctx.emit("case_feedback", body, device_id=p["device_id"], place_id=case["place_id"], actor="system")

    # -- recording helpers -------------------------------------------------------------------

    def _input(self, ev, case_id, role):
        self.db.execute("INSERT INTO case_inputs VALUES (?,?,?,?,?,?,?,?,?)",
                        (ev.event_id, case_id, ev.kind, ev.device_id, ev.key_id,
                         ev.seq,
                         ev.device_time, ev.received_at, role))

    def _step(self, case_id, step, at, actor, detail):
        self.db.execute("INSERT INTO case_steps (case_id, step, at, actor, detail) VALUES (?,?,?,?,?)",
                        (case_id, step, at, actor, json.dumps(detail, sort_keys=True)))

    def _queue(self, case_id, kind, payload):
        self.db.execute("INSERT INTO case_effects (case_id, kind, payload, created_at) VALUES (?,?,?,?)",
                        (case_id, kind, json.dumps(payload, sort_keys=True), self.clock.now()))

    def _emit(self, case_id, kind, at, actor, device_id, place_id, detail):
        body = dict(detail, at=at)
        if case_id is not None:
            body["case_id"] = case_id
        self._queue(case_id, "emit", {"kind": kind, "body": body, "device_id": device_id, "place_id": place_id,
                                      "actor": actor})

    def _siren_on(self, case_id, device_id, pattern, duration_s, now):
        self.db.execute("INSERT OR REPLACE INTO case_sirens VALUES (?,?,?,?,NULL)", (case_id, device_id, pattern, now))
        self._queue(case_id, "siren", {"device_id": device_id, "on": True, "pattern": pattern, "duration_s": duration_s})

    def _sirens_off(self, case_id, now):
        for dev, pattern in self.db.execute("SELECT device_id, pattern FROM case_sirens WHERE case_id = ? AND off_at IS NULL"
                                            " ORDER BY device_id", (case_id,)).fetchall():
            self.db.execute("UPDATE case_sirens SET off_at = ? WHERE case_id = ? AND device_id = ?", (now, case_id, dev))
            self._queue(case_id, "siren", {"device_id": dev, "on": False, "pattern": pattern, "duration_s": 0})

    # -- queries ---------------------------------------------------------------------------

    def _case(self, case_id):
        cur = self.db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,))
        row = cur.fetchone()
        if row is None:
            raise CaseNotFound("no case %s" % case_id)
        return dict(zip([c[0] for c in cur.description], row))

    def _open_case(self, case_id):
        case = self._case(case_id)
        if case["status"] not in OPEN_STATES:
            raise CaseStateError("case %d is %s (at %s by %s)" % (case_id, case["status"], case["closed_at"],
                                                                    case["closed_by"]))
        return case

    def _inputs(self, case_id):
        cur = self.db.execute("SELECT * FROM case_inputs WHERE case_id = ? ORDER BY event_id", (case_id,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def get(self, case_id):
        """The case with its steps, inputs, sirens and effects still pending."""
        with self._lock:
            case = self._case(case_id)
            cur = self.db.execute("SELECT step, at, actor, detail FROM case_steps WHERE case_id = ? ORDER BY id",
                                  (case_id,))
            case["steps"] = [{"step": s, "at": at, "actor": a, "detail": json.loads(dt)} for s, at, a, dt in cur]
            case["inputs"] = self._inputs(case_id)
            case["sirens"] = [{"device_id": d, "pattern": p, "on_at": on, "off_at": off} for d, p, on, off in
                              self.db.execute("SELECT device_id, pattern, on_at, off_at FROM case_sirens "
                                              "WHERE case_id = ? ORDER BY device_id", (case_id,))]
            case["pending_effects"] = self.db.execute(
                "SELECT COUNT(*) FROM case_effects WHERE case_id = ? AND done_at IS NULL", (case_id,)).fetchone()[0]
            return case

    def list_cases(self, status=None, since=None, until=None, limit=1000, after_id=None):
        # One query, not one per case: the board refetches this on case events while the
        # pipeline thread waits on the same lock to open the next case. after_id: only the cases
        # opened after that one (ids only grow), what the board asks for when a case opens.
        sql, args = "SELECT * FROM cases WHERE 1=1", []
        if after_id is not None:
            sql += " AND case_id > ?"
            args.append(after_id)
        if status == "open":
            sql += " AND status IN ('open', 'acknowledged')"
        elif status:
            sql += " AND status = ?"
            args.append(status)
        if since is not None:
            sql += " AND opened_at >= ?"
            args.append(since)
        if until is not None:
            sql += " AND opened_at < ?"
            args.append(until)
        sql += " ORDER BY case_id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            cur = self.db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def current_stage(self, device_id, key_id, seq):
        """The ack stage to resend for a duplicate alarm frame (SPEC section 4), or None if no case."""
        with self._lock:
            return stage_of(self.db, device_id, key_id, seq)

    def cursor(self, name):
        with self._lock:
            row = self.db.execute("SELECT value FROM case_meta WHERE key = ?", ("cursor:" + name,)).fetchone()
        return int(row[0]) if row else 0

    def set_cursor(self, name, event_id):
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO case_meta VALUES (?, ?)", ("cursor:" + name, str(event_id)))


def stage_of(db, device_id, key_id, seq):
    """The current ack stage of the case an alarm frame belongs to, or None (a read; any connection)."""
    row = db.execute("SELECT c.status FROM case_inputs i JOIN cases c ON c.case_id = i.case_id "
                     "WHERE i.device_id = ? AND i.key_id IS ? AND i.seq = ? AND i.kind = 'alarm'",
                     (device_id, key_id, seq)).fetchone()
    if row is None:
        return None
    return {"open": STAGE_DISPATCHED, "acknowledged": STAGE_RESPONDER, "closed": STAGE_CLOSED,
            "cancelled": STAGE_CANCELLED}[row[0]]


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception; re-entrant (nested uses join the outer)."""

    def __init__(self, db):
        self.db = db
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
