"""The gateway plugin (unit level: real EventStore and SQLite, a stub service and context): catch-up of
events committed while no handler ran, the stage lookup for resent alarms, stop."""

from gateway.cases.hooks import CasesPlugin
from gateway.clock import ManualClock
from gateway.events import NewDeviceEvent
from gateway.store import EventStore
from gateway.village.testing import StubContext, sample_db


class StubService:
    def __init__(self):
        self.handlers, self.timers, self.stage_lookup = [], [], None

    def add_event_handler(self, fn):
        self.handlers.append(fn)

    def add_timer(self, fn, interval_s):
        self.timers.append((fn, interval_s))

    def set_stage_lookup(self, fn):
        self.stage_lookup = fn


def device_event(device_id, seq, kind, body, t):
    return NewDeviceEvent(kind, device_id, 1, seq, body, b"frame", "fq/v1/%08x/up" % device_id, int(t))


def test_catch_up_opens_cases_for_events_no_handler_saw(tmp_path):
    clock = ManualClock(1_773_500_000.0)
    path = tmp_path / "g.db"
    sample_db(path).close()
    store = EventStore(path, clock)
    store.append_device_events([device_event(0x101, 1, "heartbeat", [4000, 1, 0, None, 10000], clock.now())])
    plugin = CasesPlugin(path, clock, store)           # a fresh plugin starts at the log's head ...
    svc = StubService()
    plugin.install(svc, tick_s=0.5)
    assert svc.timers[0][1] == 0.5 and len(svc.handlers) == 1
    # ... so the old heartbeat is not replayed, but an alarm committed while the process was dying is
    store.append_device_events([device_event(0x102, 1, "alarm", [2], clock.now()),
                                device_event(0x301, 1, "checkin", [101, bytes.fromhex("04a1b2c3")], clock.now())])
    ctx = StubContext(clock, store=store)
    svc.timers[0][0](ctx)
    (case,) = plugin.cases.list_cases()
    assert case["device_id"] == 0x102 and case["level"] == 4          # medical at the lone elderly person's home
    assert ctx.acks == [(0x102, 1, 1, clock.now())] and set(ctx.sirens()) == {0x101, 0x103, 0x104, 0x301, 0x302,
                                                                                0x303, 0x304}
    assert len(plugin.patrol.checkins_between(0, 2e9)) == 1
    # the live handler seeing the same event afterwards changes nothing
    alarm = store.events_after(0)[1]
    svc.handlers[0](alarm, ctx)
    svc.timers[0][0](ctx)
    assert len(plugin.cases.list_cases()) == 1 and len(ctx.acks) == 1
    assert svc.stage_lookup(alarm) == 1
    plugin.cases.acknowledge(case["case_id"], "p-chen-li")
    assert svc.stage_lookup(alarm) == 2
    heartbeat = store.events_after(0)[0]
    assert svc.stage_lookup(heartbeat) == 0
    # a restarted plugin resumes from its cursor, not from the head
    assert CasesPlugin(path, clock, store).cases.cursor("events") == plugin.cases.cursor("events") >= 3
    plugin.stop()
    svc.handlers[0](alarm, ctx)                                          # after stop: a no-op, no error
    svc.timers[0][0](ctx)
    store.close()


class StubApp:
    def __init__(self, tmp_path, clock, section):
        self.clock = clock
        self.store = EventStore(tmp_path / "g.db", clock)
        self.registry = None
        self.service = StubService()
        self.config = self

    def section(self, name):
        return self._section

    def path_of(self, value):
        return str(value)


def test_attach_imports_the_village_file_when_it_changed(tmp_path):
    import pytest

    from gateway.cases.hooks import attach
    from gateway.village.config import ConfigInvalid
    from gateway.village.db import import_id, open_db
    from gateway.village.testing import sample_text

    village = tmp_path / "village.toml"
    village.write_text(sample_text(), encoding="utf-8")
    app = StubApp(tmp_path, ManualClock(), None)
    app._section = {"tick_s": 0.25, "village_file": str(village)}
    attach(app).stop()
    db = open_db(tmp_path / "g.db")
    assert import_id(db) == 1 and app.service.timers[0][1] == 0.25
    attach(app).stop()                                      # unchanged file: not imported again
    assert import_id(db) == 1
    village.write_text(sample_text().replace('name = "Chen Li"', 'name = "Chen Li (new phone)"'), encoding="utf-8")
    attach(app).stop()
    assert import_id(db) == 2
    village.write_text(sample_text().replace('level = 4\n', 'level = 6\n', 1), encoding="utf-8")
    with pytest.raises(ConfigInvalid):
        attach(app)
    assert import_id(db) == 2
    app._section = {"tick": 1}
    with pytest.raises(ValueError, match="unknown key"):
        attach(app)
    app.store.close()


def test_metrics_gauges(tmp_path):
    from gateway.metrics import Metrics

    clock = ManualClock(1_773_500_000.0)
    path = tmp_path / "g.db"
    sample_db(path).close()
    store = EventStore(path, clock)
    plugin = CasesPlugin(path, clock, store)
    metrics = Metrics()
    plugin.export_metrics(metrics)
    plugin.install(StubService())
    store.append_device_events([device_event(0x101, 1, "alarm", [1], clock.now())])
    plugin.catch_up()
    text = metrics.render()
    assert "fengqiao_cases_open 1" in text and "fengqiao_case_effect_failures 0" in text
    assert "fengqiao_case_effects_pending 10" in text       # 7 sirens, 1 ack, 2 events: nobody flushed yet
    plugin.cases.flush(StubContext(clock, store=store))
    assert "fengqiao_case_effects_pending 0" in metrics.render()
    plugin.stop()
    store.close()


def _plugin_with_counters(path, clock, store):
    """A plugin whose services count the events offered to them (live handler or catch-up)."""
    plugin = CasesPlugin(path, clock, store)
    offered = []
    for svc in (plugin.cases, plugin.patrol):
        real = svc.on_event
        svc.on_event = lambda ev, real=real: (offered.append(ev.event_id), real(ev))[1]
    return plugin, offered


def _counted(tmp_path):
    """A sample gateway's store with a counting plugin (_plugin_with_counters) and a handing
    context: (clock, db path, store, plugin, offered ids, ctx). The test stops and closes them."""
    clock = ManualClock(1_773_500_000.0)
    path = tmp_path / "g.db"
    sample_db(path).close()
    store = EventStore(path, clock)
    plugin, offered = _plugin_with_counters(path, clock, store)
    return clock, path, store, plugin, offered, HandingContext(clock, store)


def heartbeats(n, first_device=0x9000):
    return [device_event(first_device + i // 50, i % 50 + 1, "heartbeat", [3700, i % 50, 49 - i % 50, None, 10203], 0)
            for i in range(n)]


class HandingContext(StubContext):
    """Like the service: the gateway events the plugin emits are handed to the handler too."""

    def __init__(self, clock, store):
        super().__init__(clock, store=store)
        self.handed = []

    def emit(self, kind, body, device_id=None, place_id=None, actor="system"):
        ev = super().emit(kind, body, device_id, place_id, actor)
        self.handed.append(ev)
        return ev

    def hand_over(self, plugin):
        while self.handed:
            plugin.on_event(self.handed.pop(0), self)


def test_a_tick_after_handled_events_reads_nothing_back(tmp_path):
    """Issue 14: the timer used to read, decode and re-offer every event the live handler had just
    handled (250k in a storm). Now a tick after N handled events reads no row and calls no service,
    whatever N, and the cursor still moves over them."""
    clock, path, store, plugin, offered, ctx = _counted(tmp_path)
    for n in (10, 3000):
        stored = store.append_device_events(heartbeats(n, 0x9000 + n))
        stored += [store.append_gateway_event("note", {"n": n})]        # the handler sees gateway events too
        for ev in stored:
            plugin.on_event(ev, ctx)
        ctx.hand_over(plugin)               # what the last tick emitted (patrol alerts), as the service does
        del offered[:]
        plugin.on_tick(ctx)
        assert plugin.rows_fetched == 0 and plugin.rows_offered == 0 and offered == []
        assert plugin.cases.cursor("events") == stored[-1].event_id
    # the handler behind: the tick looks at the oldest unhandled event only, and leaves it to the handler
    stored = store.append_device_events(heartbeats(500, 0x9400))
    ctx.hand_over(plugin)
    plugin.on_tick(ctx)
    assert plugin.rows_fetched == 1 and plugin.rows_offered == 0 and offered == []
    for ev in stored:
        plugin.on_event(ev, ctx)
    ctx.hand_over(plugin)
    del offered[:]
    plugin.on_tick(ctx)
    ctx.hand_over(plugin)
    plugin.on_tick(ctx)                     # idle: nothing new, nothing read
    assert plugin.rows_fetched == 1 and plugin.rows_offered == 0 and offered == []
    assert plugin.cases.cursor("events") == store.head()[0]
    plugin.stop()
    store.close()


def test_the_tick_offers_only_what_the_handler_missed(tmp_path):
    """A handler call that failed is offered again by the next tick; an event the handler never got
    once it is LEAVE_TO_HANDLER_S old; one it gets late is left to it. Nothing else is offered."""
    from gateway.cases.hooks import LEAVE_TO_HANDLER_S

    clock, path, store, plugin, offered, ctx = _counted(tmp_path)
    stored = store.append_device_events(heartbeats(100) + [device_event(0x102, 1, "alarm", [2], clock.now())]
                                        + heartbeats(100, 0x9100))
    alarm, late, lost = stored[100], stored[150], stored[180]
    real = plugin.cases.on_alarm

    def failing(ev):
        raise RuntimeError("database is locked")
    plugin.cases.on_alarm = failing
    for ev in stored:
        if ev in (late, lost):
            continue                                     # still queued / never handed over
        try:
            plugin.on_event(ev, ctx)
        except RuntimeError:
            pass
    plugin.cases.on_alarm = real
    assert plugin.cases.list_cases() == []
    del offered[:]
    plugin.on_tick(ctx)
    assert offered == [alarm.event_id] and plugin.rows_offered == 1
    (case,) = plugin.cases.list_cases()
    assert case["device_id"] == 0x102 and ctx.acks[0][:3] == (0x102, 1, 1)
    assert plugin.cases.cursor("events") == late.event_id - 1
    plugin.on_event(late, ctx)                           # the handler gets to it
    ctx.hand_over(plugin)
    del offered[:]
    plugin.on_tick(ctx)
    assert plugin.rows_offered == 1 and plugin.cases.cursor("events") == lost.event_id - 1
    clock.advance(LEAVE_TO_HANDLER_S + 1)
    plugin.on_tick(ctx)                                  # the lost one is old now: the tick offers it
    assert offered == [lost.event_id] and plugin.rows_offered == 2
    ctx.hand_over(plugin)
    plugin.on_tick(ctx)
    assert plugin.rows_offered == 2 and len(plugin.cases.list_cases()) == 1
    assert plugin.cases.cursor("events") == store.head()[0]
    plugin.stop()
    store.close()


def test_restart_handles_what_was_committed_but_not_handled(tmp_path):
    """The guarantee the catch-up exists for: the cursor never passes an event the handler did not
    finish, so after a crash (handled but not yet ticked, or committed but never handed over) a
    restarted plugin handles every such event once, on its first tick, even while its own handler
    is already handling new events."""
    clock, path, store, plugin, _, ctx = _counted(tmp_path)
    first = store.append_device_events(heartbeats(50) + [device_event(0x102, 1, "alarm", [2], clock.now())])
    for ev in first:
        plugin.on_event(ev, ctx)
    plugin.on_tick(ctx)
    assert plugin.cases.cursor("events") == first[-1].event_id
    handled = store.append_device_events([device_event(0x101, 1, "alarm", [1], clock.now())] + heartbeats(20, 0x9100))
    for ev in handled:
        plugin.on_event(ev, ctx)                         # handled, then the process dies before its tick
    ctx.hand_over(plugin)                                # (and what the tick emitted)
    store.append_device_events([device_event(0x301, 1, "checkin", [101, bytes.fromhex("04a1b2c3")], clock.now())]
                               + heartbeats(20, 0x9200))     # committed, never handed to the handler
    plugin.stop()                                        # (no tick: the cursor is where the last tick left it)
    assert CasesPlugin(path, clock, store).cases.cursor("events") == first[-1].event_id
    again, offered = _plugin_with_counters(path, clock, store)
    ctx = HandingContext(clock, store)
    head = store.head()[0]
    new = store.append_device_events(heartbeats(5, 0x9300))
    for ev in new:
        again.on_event(ev, ctx)                          # the new process's handler is already at work
    again.on_tick(ctx)
    assert len(offered) == 42 + 5 and again.cases.cursor("events") == new[-1].event_id
    assert again.rows_offered == head - first[-1].event_id          # every event after the cursor, once
    assert len(again.cases.list_cases()) == 1            # 0x101 joined the open case of its group, not a second case
    assert len(again.patrol.checkins_between(0, 2e9)) == 1
    ctx.hand_over(again)
    again.on_tick(ctx)
    assert again.rows_offered == head - first[-1].event_id and again.cases.cursor("events") == store.head()[0]
    again.stop()
    store.close()
