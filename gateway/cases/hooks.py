"""Plugging cases and patrols into the running gateway (G-core's plugin hook `attach(app)`).

    plugin = attach(app)      # app: gateway.cli.GatewayApp (service, store, registry, clock, config)
    plugin.stop()

What it registers:
- an event handler: alarms and cancels -> CaseService, check-ins and heartbeats -> PatrolService,
  then the queued effects are performed at once (sirens within the same handler call as the alarm);
- a timer (`[cases] tick_s`, default 1 s): catch up on device events a handler may have missed
  (gateway stopped between commit and handler), escalation deadlines, patrol rounds, and the
  effects of actions taken from the CLI in another process (`fengqiao case ack` -> button LED);
- the stage lookup, so a resent alarm frame is re-acknowledged with its case's current stage.

Catch-up uses a cursor in `case_meta`: every event up to it has been handled, and every device
event after it is offered to the services on the next tick (they ignore what they already
recorded), so nothing committed is left without its case even if the process died right after the
commit. A fresh database starts the cursor at the log's head.

The tick does not re-read what the live handler already handled (issue 14: in a 250k-event storm
the old catch-up read, decoded and re-offered every event a second time, ~9 us each, 6.2 s of CPU).
The handler remembers the ids it has handled since the cursor (`_handled`, any source: event ids
are dense, one per record); the tick moves the cursor over the run of consecutive handled ids with
no row read, and reads only the ids in a gap -- events committed before this process's handler
ran (the restart case), one whose handler call failed, or one still behind a later id in the
handler's queue (a gateway event handed over from another thread) -- and offers those itself. A
tick with nothing handled since the last one reads on from the cursor to the head, as before. The
cursor is written after the events below it were handled, so a crash at any point leaves every
unhandled event after it.
"""

import logging
import os
import threading

from gateway.cases.service import CaseService, stage_of
from gateway.patrol.service import PatrolService
from gateway.village.db import open_db

log = logging.getLogger("fengqiao.cases")

_KINDS = ("alarm", "alarm_cancel", "checkin", "heartbeat")


class CasesPlugin:
    def __init__(self, db_path, clock, store, registry=None):
        self.cases = CaseService(open_db(db_path), clock, registry)
        self.patrol = PatrolService(open_db(db_path), clock, registry)
        # The stage lookup runs in the gateway's pipeline thread: its own connection and lock, so a
        # resent alarm is re-acknowledged without waiting for the case service's work.
        self._stage_db = open_db(db_path)
        self._stage_lock = threading.Lock()
        self.store = store
        self._stopped = False
        if store is not None and self.cases.cursor("events") == 0:
            self.cases.set_cursor("events", store.head()[0])
        # ids handled by on_event (handler thread) since the cursor; the tick (timer thread) takes them
        self._handled_lock = threading.Lock()
        self._handled = set()
        self._handled_min, self._handled_max = float("inf"), 0     # kept as ids arrive: the tick is O(1)
        self._cursor = self.cases.cursor("events")
        self.rows_read = 0          # events the catch-up read from the log (tests, profiling)

    def install(self, service, tick_s=1.0):
        service.add_event_handler(self.on_event)
        service.add_timer(self.on_tick, tick_s)
        if hasattr(service, "set_stage_lookup"):
            service.set_stage_lookup(self.stage_of)
        return self

    def on_event(self, ev, ctx):
        if self._stopped:
            return
        if ev.source == "device" and ev.kind in _KINDS:
            if ev.kind in ("alarm", "alarm_cancel"):
                self.cases.on_event(ev)     # recorded (its own transaction) before we count it handled
                self.cases.flush(ctx)
            else:
                self.patrol.on_event(ev)
                self.patrol.flush(ctx)
        self._mark_handled(ev.event_id)

    def _mark_handled(self, event_id):
        # only after the event's work is committed: a failed handler call leaves a gap the tick fills
        with self._handled_lock:
            if event_id > self._cursor:
                self._handled.add(event_id)
                if event_id > self._handled_max:
                    self._handled_max = event_id
                if event_id < self._handled_min:
                    self._handled_min = event_id

    def on_tick(self, ctx):
        if self._stopped:
            return
        self.catch_up()
        self.cases.check_deadlines()
        self.cases.flush(ctx)
        self.patrol.tick()
        self.patrol.flush(ctx)

    def catch_up(self, batch=500):
        """Offer the events after the cursor that the live handler has not handled; returns how many
        were offered here. Cost: the ids handled since the last tick (set operations, no row read)
        plus the events actually offered."""
        if self.store is None:
            return 0
        with self._handled_lock:
            handled, low, top = self._handled, self._handled_min, self._handled_max
            self._handled, self._handled_min, self._handled_max = set(), float("inf"), 0
        cursor = self.cases.cursor("events")
        n = 0
        try:
            if handled:
                if low <= cursor:
                    handled = {i for i in handled if i > cursor}
                while cursor < top:
                    if len(handled) == top - cursor:        # dense ids: all of (cursor, top] were handled
                        cursor = top
                        break
                    if cursor + 1 in handled:
                        handled.discard(cursor + 1)
                        cursor += 1
                        continue
                    nxt = min(handled)                      # a gap (cursor, nxt): read and offer it
                    events = self.store.events_after(cursor, min(batch, nxt - cursor - 1))
                    for ev in events:
                        self._offer(ev)
                        n += 1
                        cursor = ev.event_id
                    if not events:                          # no such ids in the log: nothing to offer
                        cursor = nxt - 1
                    elif cursor >= nxt:                     # the log skipped ids: drop what is now below
                        handled = {i for i in handled if i > cursor}
                    self._set_cursor(cursor)
            else:
                while True:                                 # nothing handled since the last tick: read on to the head
                    events = self.store.events_after(cursor, batch)
                    if not events:
                        break
                    for ev in events:
                        self._offer(ev)
                        n += 1
                    cursor = events[-1].event_id
                    self._set_cursor(cursor)
        except Exception:
            with self._handled_lock:                        # keep what is still above the cursor for next time
                for i in handled:
                    if i > cursor:
                        self._handled.add(i)
                        self._handled_min, self._handled_max = min(self._handled_min, i), max(self._handled_max, i)
            raise
        finally:
            if cursor != self._cursor:
                self._set_cursor(cursor)
        return n

    def _offer(self, ev):
        self.rows_read += 1
        if ev.source == "device" and ev.kind in ("alarm", "alarm_cancel"):
            self.cases.on_event(ev)
        elif ev.source == "device" and ev.kind in ("checkin", "heartbeat"):
            self.patrol.on_event(ev)

    def _set_cursor(self, cursor):
        self.cases.set_cursor("events", cursor)
        with self._handled_lock:
            self._cursor = cursor

    def stage_of(self, ev):
        if ev.kind != "alarm":
            return 0
        with self._stage_lock:
            if self._stopped:
                return 0
            stage = stage_of(self._stage_db, ev.device_id, ev.key_id, ev.seq)
        return 0 if stage is None else stage

    def counts(self):
        """{"open": cases not closed, "pending_effects": effects waiting} (a read on our own connection)."""
        with self._stage_lock:
            if self._stopped:
                return {"open": 0, "pending_effects": 0}
            db = self._stage_db
            return {"open": db.execute("SELECT COUNT(*) FROM cases WHERE status IN ('open', 'acknowledged')").fetchone()[0],
                    "pending_effects": db.execute("SELECT COUNT(*) FROM case_effects WHERE done_at IS NULL").fetchone()[0]
                    + db.execute("SELECT COUNT(*) FROM patrol_outbox WHERE done_at IS NULL").fetchone()[0]}

    def export_metrics(self, metrics):
        metrics.gauge_fn("fengqiao_cases_open", lambda: self.counts()["open"], "alarm cases not yet closed or cancelled")
        metrics.gauge_fn("fengqiao_case_effects_pending", lambda: self.counts()["pending_effects"],
                         "sirens, acks and case/patrol events waiting to be sent")
        metrics.gauge_fn("fengqiao_case_effect_failures", lambda: self.cases.effect_failures + self.patrol.emit_failures,
                         "failed attempts to send a case or patrol effect (retried, given up after 5)")

    def stop(self):
        """Called before the service stops: handlers and timer become no-ops, then the files close."""
        self._stopped = True
        with self._stage_lock:
            self._stage_db.close()
        for svc in (self.cases, self.patrol):
            try:
                with svc._lock:
                    svc.db.close()
            except Exception:  # noqa: BLE001 - closing at shutdown, nothing to recover
                log.exception("closing the cases database failed")


def attach(app):
    """G-core's plugin entry point (gateway.cli.GatewayApp). Gateway config section:

        [cases]
        tick_s = 1.0                         # timer: deadlines, patrol rounds, CLI actions' effects
        village_file = "village.toml"        # optional: imported at start when it changed
    """
    section = app.config.section("cases") if getattr(app, "config", None) else {}
    unknown = set(section) - {"tick_s", "village_file"}
    if unknown:
        raise ValueError("unknown key(s) in [cases]: %s" % ", ".join(sorted(unknown)))
    tick_s = float(section.get("tick_s", 1.0))
    if section.get("village_file"):
        import_if_changed(app.store.path, app.config.path_of(section["village_file"]), app.registry, app.clock)
    plugin = CasesPlugin(app.store.path, app.clock, app.store, app.registry)
    metrics = getattr(app, "metrics", None)
    if metrics is not None:
        plugin.export_metrics(metrics)
    return plugin.install(app.service, tick_s)


def import_if_changed(db_path, village_path, registry, clock):
    """Import the village file at start unless the same content is already imported; an invalid
    file stops the start with every error (the gateway never runs on half a configuration)."""
    import hashlib
    import json

    from gateway.village.cli import sync_registry
    from gateway.village.config import parse_village
    from gateway.village.db import import_village

    with open(village_path, encoding="utf-8") as f:
        data = parse_village(f.read(), os.path.basename(village_path))
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    db = open_db(db_path)
    try:
        row = db.execute("SELECT value FROM village_meta WHERE key = 'sha256'").fetchone()
        if row and row[0] == digest:
            return False
        if registry is not None:
            sync_registry(registry, data)
        import_village(db, data, os.path.abspath(village_path), clock.now())
        log.info("village configuration imported", extra={"fields": {"file": village_path}})
        return True
    finally:
        db.close()
