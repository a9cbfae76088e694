"""Patrol round evaluation as plain functions (sample route: gate 0, school +10, well +20, hall +30 min;
the 21:00 round: start window 30 min, max duration 60 min, grace 10 min per checkpoint)."""

import datetime

import pytest

from gateway.patrol import rounds
from gateway.village.config import parse_village
from gateway.village.db import Directory
from gateway.village.testing import sample_text

DATE = datetime.date(2026, 3, 14)
CPS = ["cp-gate", "cp-school", "cp-well", "cp-temple"]
CARD = "04a1b2c3"


@pytest.fixture(scope="module")
def directory():
    return Directory.from_data(parse_village(sample_text(), "s"))


@pytest.fixture(scope="module")
def spec(directory):
    return next(s for s in rounds.planned_rounds(directory, DATE) if s["schedule"] == "night-early")


def walk(start, places_and_minutes, card=CARD):
    return [{"event_id": i + 1, "place": p, "time": start + m * 60, "card": card}
            for i, (p, m) in enumerate(places_and_minutes)]


def test_planned_rounds_use_local_time(directory, spec):
    specs = rounds.planned_rounds(directory, DATE)
    assert [s["schedule"] for s in specs] == ["night-late", "night-early"]     # 02:00 then 21:00 local
    # 21:00 at UTC+8 is 13:00 UTC
    assert spec["planned_start"] == datetime.datetime(2026, 3, 14, 13, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert spec["window_end"] - spec["planned_start"] == 1800 and spec["grace_s"] == 600
    assert rounds.planned_rounds(directory, DATE, village="vil-nowhere") == []


def test_complete(spec):
    r = rounds.evaluate(spec, walk(spec["planned_start"] + 300, zip(CPS, [0, 9, 21, 33])))
    assert r["status"] == "complete" and r["final"] and r["missed"] == []
    assert [c["status"] for c in r["checkpoints"]] == ["visited"] * 4


def test_late_start(spec):
    r = rounds.evaluate(spec, walk(spec["window_end"] + 60, zip(CPS, [0, 10, 20, 30])))
    assert r["status"] == "late" and r["late_start"]


def test_out_of_order(spec):
    r = rounds.evaluate(spec, walk(spec["planned_start"], [("cp-gate", 0), ("cp-well", 12), ("cp-school", 18),
                                                           ("cp-temple", 30)]))
    assert r["status"] == "out_of_order" and r["out_of_order"] and r["missed"] == []


def test_missed_checkpoint_and_a_late_visit_does_not_repair_it(spec):
    r = rounds.evaluate(spec, walk(spec["planned_start"], [("cp-gate", 0), ("cp-well", 20), ("cp-temple", 30),
                                                           ("cp-school", 45)]))
    assert r["status"] == "missed" and r["missed"] == ["cp-school"]
    school = r["checkpoints"][1]
    assert school["late_visit_at"] == spec["planned_start"] + 45 * 60 and school["visited_at"] is None


def test_not_started_and_pending(spec):
    assert rounds.evaluate(spec, [])["status"] == "not_started"
    live = rounds.evaluate(spec, [], now=spec["window_end"] - 1)
    assert live["status"] == "pending" and not live["final"]
    live = rounds.evaluate(spec, [], now=spec["window_end"])
    assert live["status"] == "not_started" and not live["final"]      # may still start late
    assert rounds.evaluate(spec, [], now=spec["latest_start"])["final"]
    # check-ins far outside the round do not start it
    assert rounds.evaluate(spec, walk(spec["planned_start"] - 3 * 3600, zip(CPS, [0, 10, 20, 30])))["status"] == "not_started"


def test_running_round_reports_missed_before_it_ends(spec):
    t0 = spec["planned_start"] + 120
    done = walk(t0, [("cp-gate", 0), ("cp-well", 19)])              # school skipped
    live = rounds.evaluate(spec, done, now=t0 + 20 * 60 + 1)          # school's deadline (10 + 10 min) has passed
    assert live["status"] == "missed" and live["missed"] == ["cp-school"] and not live["final"]
    assert [c["status"] for c in live["checkpoints"]] == ["visited", "missed", "visited", "pending"]
    assert live["ends_at"] == t0 + 3600
    early = rounds.evaluate(spec, done[:1], now=t0 + 5 * 60)
    assert early["status"] == "running" and early["missed"] == []


def test_round_begun_at_the_second_checkpoint_is_timed_from_there(spec):
    t0 = spec["planned_start"]
    r = rounds.evaluate(spec, walk(t0, [("cp-school", 10), ("cp-well", 20), ("cp-temple", 30)]))
    assert r["anchor"] == t0 and r["missed"] == ["cp-gate"] and r["status"] == "missed"


def test_evaluation_depends_on_device_times_not_arrival(spec):
    """The same walk delivered live or an hour later (different received_at, arrival order) evaluates the same."""
    live = walk(spec["planned_start"] + 60, zip(CPS, [0, 10, 20, 30]))
    for c in live:
        c["received_at"] = c["time"] + 0.2
    synced = [dict(c, received_at=c["time"] + 3600) for c in reversed(live)]
    assert rounds.evaluate(spec, live) == rounds.evaluate(spec, synced)


def test_speed_flags(directory):
    gate_school = directory.distance_m("cp-gate", "cp-school")           # about 350 m
    items = [{"event_id": 1, "place": "cp-gate", "time": 1000.0, "card": "a"},
             {"event_id": 2, "place": "cp-school", "time": 1030.0, "card": "a"},     # 350 m in 30 s
             {"event_id": 3, "place": "cp-school", "time": 1031.0, "card": "b"},     # another card: no pair
             {"event_id": 4, "place": "cp-well", "time": 1000.0 + 1800, "card": "a"}]
    flags = rounds.speed_flags(items, directory.distance_m, 8.0)
    assert set(flags) == {2}
    assert flags[2]["from"] == "cp-gate" and flags[2]["distance_m"] == round(gate_school)
    assert flags[2]["speed_kmh"] > 30
    same_instant = [dict(items[0]), dict(items[1], time=1000.0)]
    assert rounds.speed_flags(same_instant, directory.distance_m, 8.0)[2]["speed_kmh"] is None
