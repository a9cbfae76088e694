"""The patrol service over a real SQLite file with a manual clock and a stub context (unit level):
live alerts while the round runs, offline check-ins synced later, flags without rejection."""

import datetime

import pytest

from gateway.clock import ManualClock
from gateway.patrol import rounds
from gateway.patrol.service import PatrolService, summarize
from gateway.village.testing import EventMaker, StubContext, sample_db

DATE = datetime.date(2026, 3, 14)
START = rounds.local_midnight(DATE, 8 * 3600) + 21 * 3600          # the 21:00 round, local UTC+8
KEY = "night-early/route-night/2026-03-14"
POINTS = {"cp-gate": (0x301, 101), "cp-school": (0x302, 102), "cp-well": (0x303, 103), "cp-temple": (0x304, 104)}
WANG = "04a1b2c3"


class Scenario:
    def __init__(self, path):
        self.clock = ManualClock(START - 3600)
        self.svc = PatrolService(sample_db(path), self.clock)
        self.ctx = StubContext(self.clock)
        self.mk = EventMaker(self.clock)

    def tap(self, place, at, card=WANG, delivered_at=None, **kw):
        dev, number = POINTS[place]
        self.clock.set(delivered_at if delivered_at is not None else at)
        flags = self.svc.on_event(self.mk.checkin(dev, number, card, device_time=int(at), **kw))
        self.svc.flush(self.ctx)
        return flags

    def run_until(self, t, step_s=60):
        """Let the gateway's timer run (a tick every step_s) up to t; returns [(kind, time)] emitted."""
        out = []
        now = self.clock.now()
        while now < t:
            now = min(now + step_s, t)
            self.clock.set(now)
            self.svc.tick()
            n = len(self.ctx.emitted)
            self.svc.flush(self.ctx)
            out += [(e[0], now, e[1]) for e in self.ctx.emitted[n:]]
        return out

    def ours(self, events):
        return [(k, t, b) for k, t, b in events if b.get("round") == KEY]


@pytest.fixture
def scen(tmp_path):
    return Scenario(tmp_path / "g.db")


def test_missed_checkpoint_is_raised_while_the_round_runs(scen):
    t0 = START + 300
    scen.run_until(t0 - 60)
    scen.tap("cp-gate", t0)
    events = scen.run_until(t0 + 19 * 60)
    scen.tap("cp-well", t0 + 19 * 60)                   # the school was skipped
    events += scen.run_until(t0 + 30 * 60)
    scen.tap("cp-temple", t0 + 30 * 60)
    events += scen.run_until(t0 + 2 * 3600)
    ours = scen.ours(events)
    missed = [(t, b) for k, t, b in ours if k == "patrol_missed_checkpoint"]
    assert len(missed) == 1
    t_missed, body = missed[0]
    assert body["checkpoint"] == "cp-school" and body["deadline"] == t0 + 20 * 60
    assert body["deadline"] <= t_missed <= body["deadline"] + 60       # at the deadline (next tick)
    assert t_missed < t0 + 3600                                         # before the round ends
    final = [b for k, _, b in ours if k == "patrol_round_evaluated"]
    assert len(final) == 1 and final[0]["status"] == "missed" and final[0]["missed"] == ["cp-school"]
    assert not [k for k, _, _ in ours if k in ("patrol_round_not_started", "patrol_round_reevaluated")]


def test_round_not_started_is_raised_at_the_end_of_the_start_window(scen):
    events = scen.ours(scen.run_until(START + 3 * 3600))
    kinds = [(k, t - START) for k, t, _ in events]
    assert kinds == [("patrol_round_not_started", 1800), ("patrol_round_evaluated", 3600)]
    assert events[1][2]["status"] == "not_started"


def test_complete_round_gives_no_alert(scen):
    scen.run_until(START)
    for i, place in enumerate(POINTS):
        scen.tap(place, START + 120 + i * 600)
        scen.run_until(START + 120 + (i + 1) * 600 - 1)
    events = scen.ours(scen.run_until(START + 4 * 3600))
    assert [(k, b["status"]) for k, _, b in events] == [("patrol_round_evaluated", "complete")]


def walk_times(t0):
    return [("cp-gate", t0), ("cp-school", t0 + 600), ("cp-well", t0 + 1300), ("cp-temple", t0 + 1800)]


def test_offline_round_synced_an_hour_later_evaluates_like_the_live_one(tmp_path):
    t0 = START + 240
    live = Scenario(tmp_path / "live.db")
    live.run_until(t0 - 1)
    for place, at in walk_times(t0):
        live.run_until(at)
        live.tap(place, at)
    live_events = live.ours(live.run_until(START + 3 * 3600))
    assert [(k, b["status"]) for k, _, b in live_events] == [("patrol_round_evaluated", "complete")]

    off = Scenario(tmp_path / "offline.db")
    off_events = off.ours(off.run_until(START + 2 * 3600))          # nothing arrives while the network is down
    assert [k for k, _, _ in off_events] == ["patrol_round_not_started", "patrol_round_evaluated"]
    sync = START + 2 * 3600 + 60                                     # an hour after the round's end
    for place, at in reversed(walk_times(t0)):                       # the outbox may deliver in any order
        off.tap(place, at, delivered_at=sync)
    off_events = off.ours(off.run_until(START + 3 * 3600))
    assert [(k, b["status"], b["previous_status"]) for k, _, b in off_events] == [
        ("patrol_round_reevaluated", "complete", "not_started")]

    spec = next(s for s in rounds.planned_rounds(live.svc.directory(), DATE) if s["key"] == KEY)
    a, b = live.svc.evaluate(spec), off.svc.evaluate(spec)
    assert summarize(a) == summarize(b) and a["status"] == "complete"

    # the outbox resends one frame after a lost ack: same event, not counted twice
    dev, number = POINTS["cp-well"]
    first = off.svc.checkins_between(0, 2e9)
    again = off.mk.checkin(dev, number, WANG, device_time=int(t0 + 1300), seq=off.mk.seqs[dev])
    again = again.__class__(**{**again.__dict__, "event_id": first[2]["event_id"]})
    assert off.svc.on_event(again) is None
    assert len(off.svc.checkins_between(0, 2e9)) == 4


def test_flags_without_rejecting(scen):
    t = START + 300
    assert scen.tap("cp-gate", t) == {}
    flags = scen.tap("cp-school", t + 30)                            # 350 m in 30 s
    assert flags["too_fast"]["from"] == "cp-gate" and flags["too_fast"]["seconds"] == 30
    assert scen.tap("cp-well", t + 900, card="deadbeef")["unknown_card"] == {"card": "deadbeef"}
    ahead = scen.tap("cp-temple", t + 2000, delivered_at=t + 1000)
    assert ahead["clock_ahead"]["ahead_s"] == 1000
    unknown_clock = scen.tap("cp-temple", 0, delivered_at=t + 1100)
    assert "clock_unknown" in unknown_clock
    scen.clock.set(t + 1200)
    scen.svc.on_event(scen.mk.heartbeat(0x303, outbox_depth=0, device_time=int(t + 1200 - 900)))
    assert scen.tap("cp-well", t + 1300 - 900, delivered_at=t + 1300, card="0499aabb")["clock_disagrees"] == {
        "offset_s": -900}
    scen.clock.set(t + 1400)
    mismatch = scen.svc.on_event(scen.mk.checkin(0x301, 103, WANG, device_time=int(t + 1400)))
    assert mismatch["checkpoint_mismatch"] == {"sent": "cp-well", "device_place": "cp-gate"}
    scen.svc.flush(scen.ctx)
    stored = scen.svc.checkins_between(0, 2e9)
    assert len(stored) == 7                                          # all kept
    flagged = [e for e in scen.ctx.emitted if e[0] == "patrol_checkin_flagged"]
    assert [sorted(e[1]["flags"]) for e in flagged] == [["too_fast"], ["unknown_card"], ["clock_ahead"],
                                                        ["clock_unknown"], ["clock_disagrees"],
                                                        ["checkpoint_mismatch"]]
    # the clock_ahead check-in is placed at the gateway's time, the one without a clock likewise
    assert sorted(c["time"] for c in stored if c["place"] == "cp-temple") == [t + 1000, t + 1100]


def test_a_late_delivered_checkin_can_flag_its_neighbour_as_too_fast(scen):
    t = START + 300
    scen.tap("cp-school", t + 30)                                    # arrives first (live)
    scen.tap("cp-gate", t, delivered_at=t + 3600)                    # the earlier one, from an outbox
    flagged = [e[1] for e in scen.ctx.emitted if e[0] == "patrol_checkin_flagged"]
    assert len(flagged) == 1 and flagged[0]["checkpoint"] == "cp-school" and "too_fast" in flagged[0]["flags"]


# -- which rounds were asked of anyone: first configuration vs later edits of the village file -------

def _walk_night_loop(svc, mk, clock, start, offline_until=None):
    """The four checkpoints, 10 min apart from `start`; delivered live, or all at `offline_until`."""
    taps = [(0x301, 101), (0x302, 102), (0x303, 103), (0x304, 104)]
    for i, (dev, no) in enumerate(taps):
        t = int(start + 60 + i * 600)
        if offline_until is None:
            clock.set(t)
            svc.on_event(mk.checkin(dev, no, "04a1b2c3"))
            svc.tick()
        else:
            clock.set(offline_until)
            svc.on_event(mk.checkin(dev, no, "04a1b2c3", device_time=t, received_at=clock.now()))


def test_an_edit_of_the_village_file_does_not_stop_re_evaluation_of_earlier_rounds(tmp_path):
    from gateway.village.config import parse_village
    from gateway.village.db import import_village
    from gateway.village.testing import sample_text

    d = datetime.date(2026, 3, 14)
    mid = rounds.local_midnight(d, 8 * 3600)
    clock = ManualClock(mid + 3600)
    db = sample_db(str(tmp_path / "g.db"))
    svc, mk = PatrolService(db, clock), EventMaker(clock)
    clock.set(mid + 3.5 * 3600)
    svc.tick()                                           # 03:30: the 02:00 round is over, nothing arrived
    key = "night-late/route-night/2026-03-14"
    assert db.execute("SELECT status FROM patrol_rounds WHERE round_key = ?", (key,)).fetchone() == ("not_started",)
    clock.set(mid + 8 * 3600)                            # 08:00: a phone number is corrected and re-imported
    import_village(db, parse_village(sample_text().replace("0000 0101", "0000 0199"), "v.toml"), "edit", clock.now())
    _walk_night_loop(svc, mk, clock, mid + 2 * 3600, offline_until=mid + 9 * 3600)   # 09:00: the sync
    queued = svc.tick()
    assert "patrol_round_reevaluated" in queued
    assert db.execute("SELECT status FROM patrol_rounds WHERE round_key = ?", (key,)).fetchone() == ("complete",)


def test_a_round_over_before_the_first_import_is_in_neither_the_live_evaluation_nor_the_report(tmp_path):
    from gateway.reports.build import patrol_report
    from gateway.village.config import parse_village
    from gateway.village.db import import_village, open_db
    from gateway.village.testing import sample_text

    d = datetime.date(2026, 3, 14)
    mid = rounds.local_midnight(d, 8 * 3600)
    clock = ManualClock(mid + 10 * 3600)
    db = open_db(str(tmp_path / "g.db"))
    import_village(db, parse_village(sample_text(), "v.toml"), "first", clock.now())   # first configured at 10:00
    svc, mk = PatrolService(db, clock), EventMaker(clock)
    _walk_night_loop(svc, mk, clock, mid + 21 * 3600)
    clock.set(mid + 23.5 * 3600)
    svc.tick()
    live = dict(db.execute("SELECT round_key, status FROM patrol_rounds").fetchall())
    assert live == {"night-early/route-night/2026-03-14": "complete"}
    rows, summaries = patrol_report(svc, svc.directory(), d, now=clock.now())
    assert [(r["schedule"], r["status"]) for r in rows] == [("night-early", "complete")]
    assert [(g["route"], g["compliance_pct"]) for g in summaries] == [("route-night", 100.0)]
