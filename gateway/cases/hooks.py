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
event after it is offered to the services by a tick unless the live handler gets to it first (the
services ignore what they already recorded), so nothing committed is left without its case even
if the process died right after the commit. A fresh database starts the cursor at the log's head.

The tick does not re-read what the live handler handles (issue 14: in a 250k-event storm the old
catch-up read, decoded and re-offered every event a second time: 3.2 s of CPU per storm).
The handler keeps a watermark, `_done`: the highest id with every id up to it handled (after the
event's work is committed; any source -- event ids are dense, one per record); ids handled out of
order wait in a heap until the run is contiguous. The tick writes the watermark as the cursor (no
row read) and offers itself only:
- events up to the log's head when this plugin started (committed before its handler ran: the
  restart case), at once;
- events whose handler call failed, at once (their ids are remembered);
- any other event after the watermark once it is LEAVE_TO_HANDLER_S old (one row read per tick
  to see the oldest): the handler is behind or never got it. Until the handler has handled
  anything in this process (tests, a quiet start) that wait is not applied.
The cursor is written only over handled events, so a crash at any point leaves every unhandled
event after it.
"""

import heapq
import logging
import os
import threading

from gateway.cases.service import CaseService, stage_of
from gateway.patrol.service import PatrolService
from gateway.village.db import open_db

log = logging.getLogger("fengqiao.cases")

_KINDS = ("alarm", "alarm_cancel", "checkin", "heartbeat")
LEAVE_TO_HANDLER_S = 10.0      # a newer unhandled event is left to the live handler (see above)


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
        # the watermark (see the module text): on_event (handler thread) moves it, the tick (timer thread) reads it
        self._handled_lock = threading.Lock()
        self._done = self.cases.cursor("events")
        self._cursor = self._done                   # as last written
        self._ahead = []                            # heap: ids handled above _done + 1
        self._failed = set()                        # ids whose handler call raised: the tick retries them
        self._start_head = store.head()[0] if store is not None else 0
        self._handler_ran = False
        self.rows_fetched = self.rows_offered = 0   # the catch-up's reads from the log, what it offered (tests)

    def install(self, service, tick_s=1.0):
        service.add_event_handler(self.on_event)
        service.add_timer(self.on_tick, tick_s)
        if hasattr(service, "set_stage_lookup"):
            service.set_stage_lookup(self.stage_of)
        return self

    def on_event(self, ev, ctx):
        if self._stopped:
            return
        self._handler_ran = True
        if ev.source == "device" and ev.kind in _KINDS:
            try:
                if ev.kind in ("alarm", "alarm_cancel"):
                    self.cases.on_event(ev)     # recorded (its own transaction) before we count it handled
                    self.cases.flush(ctx)
                else:
                    self.patrol.on_event(ev)
                    self.patrol.flush(ctx)
            except Exception:
                with self._handled_lock:
                    self._failed.add(ev.event_id)
                raise
        self._mark_handled(ev.event_id)

    def _mark_handled(self, event_id, through=False):
        """`through`: the catch-up offered the log's next row after the watermark (no ids between)."""
        with self._handled_lock:
            if event_id <= self._done:
                return
            if event_id != self._done + 1 and not through:
                heapq.heappush(self._ahead, event_id)
                return
            self._done = done = event_id
            ahead = self._ahead
            while ahead and ahead[0] <= done + 1:
                x = heapq.heappop(ahead)
                if x == done + 1:
                    done = x
            self._done = done

    def on_tick(self, ctx):
        if self._stopped:
            return
        self.catch_up()
        self.cases.check_deadlines()
        self.cases.flush(ctx)
        self.patrol.tick()
        self.patrol.flush(ctx)

    def catch_up(self, batch=500):
        """Offer what the live handler has not handled and will not soon (see the module text), then
        write the watermark as the cursor; returns how many events were offered here."""
        if self.store is None:
            return 0
        n, failed = 0, []
        try:
            with self._handled_lock:
                failed, self._failed = sorted(self._failed), set()
            while failed:                               # failed handler calls: again now
                self._offer(self.store.get(failed[0]))
                n += 1
                self._mark_handled(failed.pop(0))
            while True:
                with self._handled_lock:
                    done, waiting = self._done, self._handler_ran
                    gap = self._ahead[0] - done - 1 if self._ahead else batch
                if self.store.head()[0] <= done:
                    break
                events = self.store.events_after(done, 1 if waiting else min(gap, batch))
                self.rows_fetched += len(events)
                if not events:
                    break
                young = self.cases.clock.now() - LEAVE_TO_HANDLER_S
                if waiting and events[0].event_id > self._start_head and events[0].received_at > young:
                    break                               # the handler's (it is behind by less than the wait)
                if waiting and gap > 1:
                    events = self.store.events_after(done, min(gap, batch))
                    self.rows_fetched += len(events)
                for ev in events:
                    if waiting and ev.event_id > self._start_head and ev.received_at > young:
                        break
                    self._offer(ev)
                    n += 1
                    self._mark_handled(ev.event_id, through=True)   # a hole in the ids cannot stall us
        except Exception:
            with self._handled_lock:
                self._failed.update(failed)
            raise
        finally:
            with self._handled_lock:
                done = self._done
            if done != self._cursor:
                self.cases.set_cursor("events", done)
                self._cursor = done
        return n

    def _offer(self, ev):
        self.rows_offered += 1
        if ev.source == "device" and ev.kind in ("alarm", "alarm_cancel"):
            self.cases.on_event(ev)
        elif ev.source == "device" and ev.kind in ("checkin", "heartbeat"):
            self.patrol.on_event(ev)

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
