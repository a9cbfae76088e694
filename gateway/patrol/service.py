"""The patrol service: records check-ins, flags doubtful ones, watches rounds while they run.

    svc = PatrolService(db, clock, registry=None)
    svc.on_event(stored_event)   # check-ins and heartbeats (idempotent by event id)
    svc.tick()                   # timer: live alerts and end-of-round evaluations
    svc.flush(ctx)               # emit queued gateway events (ctx.emit), in order

Check-ins are never rejected; doubtful ones are kept and flagged (event `patrol_checkin_flagged`):
`unknown_card`, `unknown_checkpoint`, `checkpoint_mismatch` (the number sent is not the device's
place), `too_fast` (same card at two checkpoints faster than `max_speed_kmh`), `clock_unknown` (no
device time: placed at the gateway's receive time), `clock_ahead` (device time in the future by
more than `clock_tolerance_s`: placed at receive time), `clock_disagrees` (the device's latest live
heartbeat showed its clock off by more than the tolerance).

A check-in is placed by its device time, so a batch delivered after an outage lands where it
happened. While a round runs the timer raises `patrol_round_not_started` (start window over, no
check-in) and `patrol_missed_checkpoint` (a deadline passed without a visit), each once. When a
round is over, `patrol_round_evaluated` carries its result; if check-ins that arrive later change
it (an outage), `patrol_round_reevaluated` carries the corrected one with the previous status.
"""

import datetime
import json
import logging
import threading

from gateway.cases.service import MAX_ATTEMPTS, _Tx, device_text
from gateway.patrol import rounds
from gateway.village.db import DirectoryCache

log = logging.getLogger("fengqiao.patrol")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patrol_checkins (
    event_id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL, key_id INTEGER, seq INTEGER,
    checkpoint_no INTEGER NOT NULL, place_id TEXT, card TEXT NOT NULL, person_id TEXT,
    device_time INTEGER, received_at REAL NOT NULL, time REAL NOT NULL, flags TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS patrol_checkins_time ON patrol_checkins(time);
CREATE TABLE IF NOT EXISTS patrol_device_clock (
    device_id INTEGER PRIMARY KEY, offset_s REAL NOT NULL, observed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS patrol_alerts (
    round_key TEXT NOT NULL, kind TEXT NOT NULL, place_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (round_key, kind, place_id));
CREATE TABLE IF NOT EXISTS patrol_rounds (
    round_key TEXT PRIMARY KEY, status TEXT NOT NULL, result TEXT NOT NULL, evaluated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS patrol_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, body TEXT NOT NULL, device_id INTEGER,
    place_id TEXT, created_at REAL NOT NULL, done_at REAL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT);
"""

LOOKBACK_DAYS = 1   # the timer watches rounds of today and yesterday (local), plus dates touched by late check-ins


class PatrolService:
    def __init__(self, db, clock, registry=None):
        self.db = db
        self.clock = clock
        self.db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._directory = DirectoryCache(db, registry)
        self._dirty_dates = set()
        self._offsets = {}          # device_id -> last clock offset written
        self.emit_failures = 0

    def directory(self):
        """The configuration; called outside our write transactions (see CaseService.directory)."""
        with self._lock:
            return self._directory.get()

    # -- device events --------------------------------------------------------------------

    def on_event(self, ev):
        if ev.source != "device":
            return None
        if ev.kind == "checkin":
            return self.on_checkin(ev)
        if ev.kind == "heartbeat":
            return self.on_heartbeat(ev)
        return None

    def on_heartbeat(self, ev):
        """A heartbeat sent with an empty outbox travelled live: its time shows the device's clock offset."""
        if not ev.device_time or ev.body[2] != 0:
            return None
        offset = ev.device_time - ev.received_at
        with self._lock:
            last = self._offsets.get(ev.device_id)
            if last is None or abs(last - offset) >= 1.0:     # skip the write when nothing changed
                self.db.execute("INSERT OR REPLACE INTO patrol_device_clock VALUES (?,?,?)",
                                (ev.device_id, offset, ev.received_at))
                self._offsets[ev.device_id] = offset
        return ev.device_id

    def on_checkin(self, ev):
        """Record a check-in (once per event id) with its flags; returns its flags dict or None if seen."""
        d = self.directory()    # outside the transaction (see CaseService.directory)
        with self._lock, _Tx(self.db):
            if self.db.execute("SELECT 1 FROM patrol_checkins WHERE event_id = ?", (ev.event_id,)).fetchone():
                return None
            number, uid = ev.body[0], bytes(ev.body[1]).hex()
            flags = {}
            place = d.checkpoint_place.get(number) if d else None
            dev_place = d.device_place(ev.device_id, ev.place_id) if d else ev.place_id
            if place is None:
                flags["unknown_checkpoint"] = {"checkpoint_no": number}
                if d and dev_place in d.places and d.places[dev_place]["kind"] == "checkpoint":
                    place = dev_place
            elif dev_place and dev_place != place:
                flags["checkpoint_mismatch"] = {"sent": place, "device_place": dev_place}
            person = d.card_owner.get(uid) if d else None
            if person is None:
                flags["unknown_card"] = {"card": uid}
            tol = d.patrol_settings()["clock_tolerance_s"] if d else 120
            if not ev.device_time:
                flags["clock_unknown"] = {}
                t = ev.received_at
            elif ev.device_time > ev.received_at + tol:
                flags["clock_ahead"] = {"ahead_s": round(ev.device_time - ev.received_at, 3)}
                t = ev.received_at
            else:
                t = float(ev.device_time)
            row = self.db.execute("SELECT offset_s FROM patrol_device_clock WHERE device_id = ?",
                                  (ev.device_id,)).fetchone()
            if row and abs(row[0]) > tol and "clock_ahead" not in flags:
                flags["clock_disagrees"] = {"offset_s": round(row[0], 3)}
            self.db.execute("INSERT INTO patrol_checkins VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (ev.event_id, ev.device_id, ev.key_id, ev.seq, number, place, uid, person,
                             ev.device_time, ev.received_at, t, json.dumps(flags, sort_keys=True)))
            if d:
                self._speed_check(d, uid, t, ev.event_id, flags)
            if flags:
                self._queue_checkin_flag(ev.event_id, flags)
            offset = d.settings["utc_offset_s"] if d else 0
            day = rounds.local_date(t, offset)
            self._dirty_dates.update({day, day - datetime.timedelta(days=1)})
            return flags

    def _speed_check(self, d, card, t, event_id, new_flags):
        """Re-run the speed check for this card around `t`; flags the new check-in or a neighbour."""
        window = 6 * 3600
        items = self.checkins_between(t - window, t + window, card=card)
        found = rounds.speed_flags(items, d.distance_m, d.patrol_settings()["max_speed_kmh"])
        for item in items:
            detail = found.get(item["event_id"])
            if detail is None or "too_fast" in item["flags"]:
                continue
            if item["event_id"] == event_id:
                new_flags["too_fast"] = detail
            else:  # an earlier-delivered check-in turns out to be the second of a too-fast pair
                item["flags"]["too_fast"] = detail
                self._queue_checkin_flag(item["event_id"], {"too_fast": detail})
            flags = new_flags if item["event_id"] == event_id else item["flags"]
            self.db.execute("UPDATE patrol_checkins SET flags = ? WHERE event_id = ?",
                            (json.dumps(flags, sort_keys=True), item["event_id"]))

    def _queue_checkin_flag(self, event_id, flags):
        c = self._checkin(event_id)
        body = {"checkin_event_id": event_id, "checkpoint": c["place"], "checkpoint_no": c["checkpoint_no"],
                "card": c["card"], "person": c["person"], "time": c["time"], "flags": flags,
                "device": device_text(c["device_id"])}
        self._queue("patrol_checkin_flagged", body, c["device_id"], c["place"])

    # -- timer ---------------------------------------------------------------------------

    def tick(self):
        """Evaluate the rounds that may be running or just ended; returns the events queued."""
        d = self.directory()
        if d is None:
            return []
        queued = []
        with self._lock, _Tx(self.db):
            now = self.clock.now()
            offset = d.settings["utc_offset_s"]
            today = rounds.local_date(now, offset)
            dates = {today - datetime.timedelta(days=k) for k in range(LOOKBACK_DAYS + 1)} | self._dirty_dates
            self._dirty_dates = set()
            for date in sorted(dates):
                for spec in rounds.planned_rounds(d, date):
                    if now < spec["earliest_start"]:
                        continue
                    if not asked_to_walk(d, spec, now):
                        continue
                    result = self.evaluate(spec, now)
                    queued += self._alerts(spec, result, now)
                    if result["final"]:
                        queued += self._record_final(spec, result, now)
        return queued

    def _alerts(self, spec, result, now):
        out = []
        base = {"round": spec["key"], "schedule": spec["schedule"], "route": spec["route"], "team": spec["team"],
                "date": spec["date"], "planned_start": spec["planned_start"]}
        if result["status"] == "not_started":
            if self._alert_once(spec["key"], "not_started", "", now):
                body = dict(base, window_end=spec["window_end"], at=now)
                out.append(self._queue("patrol_round_not_started", body, None, spec["village"]))
        for cp in result["checkpoints"]:
            if cp["status"] == "missed" and self._alert_once(spec["key"], "missed", cp["place"], now):
                body = dict(base, checkpoint=cp["place"], expected_at=cp["expected_at"], deadline=cp["deadline"],
                            started_at=result["started_at"], at=now)
                out.append(self._queue("patrol_missed_checkpoint", body, None, cp["place"]))
        return out

    def _alert_once(self, key, kind, place, now):
        cur = self.db.execute("INSERT OR IGNORE INTO patrol_alerts VALUES (?,?,?,?)", (key, kind, place, now))
        return cur.rowcount == 1

    def _record_final(self, spec, result, now):
        summary = summarize(result)
        text = json.dumps(summary, sort_keys=True)
        row = self.db.execute("SELECT status, result FROM patrol_rounds WHERE round_key = ?", (spec["key"],)).fetchone()
        if row and row[1] == text:
            return []
        self.db.execute("INSERT OR REPLACE INTO patrol_rounds VALUES (?,?,?,?)", (spec["key"], result["status"], text, now))
        body = dict(summary, at=now)
        if row is None:
            return [self._queue("patrol_round_evaluated", body, None, spec["village"])]
        body["previous_status"] = row[0]
        return [self._queue("patrol_round_reevaluated", body, None, spec["village"])]

    # -- queries -------------------------------------------------------------------------

    def evaluate(self, spec, now=None):
        first, last = rounds.span(spec)
        return rounds.evaluate(spec, self.checkins_between(first, last), now)

    def evaluate_date(self, date, village=None, now=None):
        """[(spec, result)] for every planned round of local `date` (as of `now`; None = final)."""
        d = self.directory()
        if d is None:
            return []
        return [(spec, self.evaluate(spec, now)) for spec in rounds.planned_rounds(d, date, village)
                if asked_to_walk(d, spec, now)]

    def checkins_between(self, t0, t1, card=None):
        sql = ("SELECT event_id, device_id, checkpoint_no, place_id, card, person_id, device_time, received_at, time, flags"
               " FROM patrol_checkins WHERE time >= ? AND time <= ?")
        args = [t0, t1]
        if card is not None:
            sql += " AND card = ?"
            args.append(card)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY time, event_id", args).fetchall()
        return [_checkin_dict(r) for r in rows]

    def _checkin(self, event_id):
        r = self.db.execute("SELECT event_id, device_id, checkpoint_no, place_id, card, person_id, device_time,"
                            " received_at, time, flags FROM patrol_checkins WHERE event_id = ?", (event_id,)).fetchone()
        return _checkin_dict(r)

    # -- outbox --------------------------------------------------------------------------

    def _queue(self, kind, body, device_id, place_id):
        self.db.execute("INSERT INTO patrol_outbox (kind, body, device_id, place_id, created_at) VALUES (?,?,?,?,?)",
                        (kind, json.dumps(body, sort_keys=True), device_id, place_id, self.clock.now()))
        return kind

    def flush(self, ctx):
        n = 0
        with self._lock:
            rows = self.db.execute("SELECT id, kind, body, device_id, place_id, attempts FROM patrol_outbox "
                                   "WHERE done_at IS NULL ORDER BY id").fetchall()
            for oid, kind, body, device_id, place_id, attempts in rows:
                try:
                    ctx.emit(kind, json.loads(body), device_id=device_id, place_id=place_id, actor="system")
                except Exception as exc:  # noqa: BLE001 - kept, counted and retried
                    self.emit_failures += 1
                    attempts += 1
                    log.warning("patrol event %s (%s) not emitted (attempt %d): %s", oid, kind, attempts, exc)
                    self.db.execute("UPDATE patrol_outbox SET attempts = ?, error = ?, done_at = ? WHERE id = ?",
                                    (attempts, "%s: %s" % (type(exc).__name__, exc),
                                     self.clock.now() if attempts >= MAX_ATTEMPTS else None, oid))
                    continue
                self.db.execute("UPDATE patrol_outbox SET done_at = ?, attempts = ? WHERE id = ?",
                                (self.clock.now(), attempts + 1, oid))
                n += 1
        return n


def _checkin_dict(r):
    return {"event_id": r[0], "device_id": r[1], "checkpoint_no": r[2], "place": r[3], "card": r[4], "person": r[5],
            "device_time": r[6], "received_at": r[7], "time": r[8], "flags": json.loads(r[9])}


def summarize(result):
    """The JSON-able part of a round result that is stored and emitted."""
    return {
        "round": result["key"], "schedule": result["schedule"], "route": result["route"], "team": result["team"],
        "date": result["date"], "status": result["status"], "planned_start": result["planned_start"],
        "started_at": result["started_at"], "late_start": result["late_start"], "out_of_order": result["out_of_order"],
        "missed": result["missed"],
        "checkpoints": [{"place": c["place"], "status": c["status"], "visited_at": c["visited_at"], "card": c["card"]}
                        for c in result["checkpoints"]],
    }


def asked_to_walk(directory, spec, now=None):
    """False for a round whose start window was over before its schedule was first configured:
    nobody was asked to walk it. Uses the schedule's first import (kept across re-imports), so
    editing the village file later never hides earlier rounds from re-evaluation or reports."""
    since = directory.schedule_since.get(spec["schedule"], 0.0)
    if now is not None and since > now:
        return True  # a clock set before the import (tests, replays): judge every round
    return spec["latest_start"] >= since
