"""What the console's pages show, without a browser: the real case and patrol services over the
sample village with a manual clock (unit level). Board order and row fields, devices with their
states and filters, history filters and step times, patrol today (missed, flagged check-ins), a
dispatch to a whole team, and the patrol page rendered from these values."""

import datetime
import types

import pytest

from gateway.cases.service import OUTCOMES, CaseService, CaseStateError
from gateway.clock import ManualClock
from gateway.console import Console, i18n
from gateway.console.views import Views
from gateway.patrol import rounds
from gateway.patrol.service import PatrolService
from gateway.registry import Device
from gateway.village.testing import EventMaker, StubContext, sample_db

FIRE, EMERGENCY = 1, 0
DATE = datetime.date(2026, 3, 14)
START = rounds.local_midnight(DATE, 8 * 3600) + 21 * 3600          # the 21:00 round, local UTC+8
POINTS = {"cp-gate": (0x301, 101), "cp-school": (0x302, 102), "cp-well": (0x303, 103), "cp-temple": (0x304, 104)}
WANG = "04a1b2c3"


@pytest.fixture
def env(tmp_path):
    clock = ManualClock(START - 3 * 3600)
    db = sample_db(tmp_path / "g.db")
    cases, patrol = CaseService(db, clock), PatrolService(db, clock)
    sup = types.SimpleNamespace(offline=set(), battery_low=set(), tamper_open=set(), last_seen={})
    devices = []
    env = types.SimpleNamespace(clock=clock, cases=cases, patrol=patrol, ctx=StubContext(clock), mk=EventMaker(clock),
                                sup=sup, devices=devices, views=Views(cases, patrol, lambda: list(devices), sup, clock))
    yield env
    db.close()


def press(env, device_id, kind, at):
    env.clock.set(at)
    case_id = env.cases.on_event(env.mk.alarm(device_id, kind))
    env.cases.flush(env.ctx)
    return case_id


def test_board_unacknowledged_first_then_level_then_oldest(env):
    t0 = env.clock.now()
    c1 = press(env, 0x9001, EMERGENCY, t0)          # no place, no group: each alarm its own case, level 3
    c2 = press(env, 0x9002, FIRE, t0 + 10)          # fire: level 4
    c3 = press(env, 0x203, FIRE, t0 + 20)           # the LPG store: level 5
    c4 = press(env, 0x9003, EMERGENCY, t0 + 30)
    c5 = press(env, 0x9004, FIRE, t0 + 40)
    env.cases.acknowledge(c3, "p-zhou-min", "on my way")
    rows = env.views.board()
    assert [r["case_id"] for r in rows] == [c2, c5, c1, c4, c3]
    by_id = {r["case_id"]: r for r in rows}
    store = by_id[c3]
    assert store["level"] == 5 and store["step"] == "acknowledged" and store["acknowledged_by"] == "Zhou Min"
    assert store["place"].startswith("Dongshan general store") and store["village"] == "Dongshan Village"
    assert store["deadline"] is None                               # acknowledged: no countdown
    c = env.cases.get(c1)
    assert by_id[c1]["deadline"] == c["village_deadline"] and by_id[c1]["turn"] == "village"
    assert by_id[c1]["step"] == "dispatched" and by_id[c1]["device"] == "00009001"
    env.clock.set(c["village_deadline"])
    env.cases.check_deadlines()
    row = {r["case_id"]: r for r in env.views.board()}[c1]
    assert row["turn"] == "township" and row["deadline"] == c["township_deadline"]


def test_board_after_a_case_has_only_the_newer_ones_in_board_order(env):
    t0 = env.clock.now()
    c1 = press(env, 0x9001, EMERGENCY, t0)
    c2 = press(env, 0x9002, EMERGENCY, t0 + 10)
    c3 = press(env, 0x9003, FIRE, t0 + 20)
    c4 = press(env, 0x9004, EMERGENCY, t0 + 30)
    env.cases.close(c2, "p-zhou-min", "closed", outcome="test")
    assert [r["case_id"] for r in env.views.board(after=c1)] == [c3, c4]     # open only, level 4 first
    assert env.views.board(after=c4) == []
    assert env.views.board(after=0) == env.views.board() and len(env.views.board()) == 3


def test_dispatch_to_a_whole_team_dispatches_each_member(env):
    case_id = press(env, 0x101, EMERGENCY, env.clock.now())
    teams = env.views.teams()
    assert teams == [{"id": "team-dongshan", "name": "Dongshan red-armband patrol",
                      "members": ["p-huang-bo", "p-wang-qiang", "p-zhao-lei"]}]
    console = types.SimpleNamespace(cases=env.cases, views=env.views, _flush=None,
                                    metrics=types.SimpleNamespace(inc=lambda *a, **k: None))
    Console.act(console, "dispatch", case_id, "p-zhou-min", {"to": "team:team-dongshan", "note": "check the lane"})
    steps = [s for s in env.views.case(case_id)["steps"] if s["step"] == "dispatched" and s["actor"] == "p-zhou-min"]
    assert sorted(s["to"] for s in steps) == ["Huang Bo (village police officer)", "Wang Qiang", "Zhao Lei"]
    assert all(s["note"] == "Dongshan red-armband patrol: check the lane" for s in steps)
    with pytest.raises(CaseStateError):
        Console.act(console, "dispatch", case_id, "p-zhou-min", {"to": "team:team-nobody"})
    Console.act(console, "dispatch", case_id, "p-zhou-min", {"to": "p-wu-fang"})
    assert env.views.board()[0]["assigned_to"] == "Wu Fang"


def test_close_from_the_console_needs_an_outcome(env):
    case_id = press(env, 0x101, EMERGENCY, env.clock.now())
    console = types.SimpleNamespace(cases=env.cases, views=env.views, _flush=None,
                                    metrics=types.SimpleNamespace(inc=lambda *a, **k: None))
    for form in ({"note": "done"}, {"note": "done", "outcome": ""}, {"note": "done", "outcome": "maybe"}):
        with pytest.raises(CaseStateError):
            Console.act(console, "close", case_id, "p-zhou-min", form)    # a bare POST, not the page's form
    assert env.cases.get(case_id)["status"] == "open"
    Console.act(console, "close", case_id, "p-zhou-min", {"note": "done", "outcome": "test"})
    assert env.cases.get(case_id)["steps"][-1]["detail"] == {"note": "done", "outcome": "test"}


def _device(device_id, role="alarm_button", status="active", place=None):
    return Device(device_id, role, place, 1, status, None, "battery", 0.0)


def test_devices_states_filters_and_offline_first(env):
    env.devices += [_device(0x101), _device(0x102), _device(0x103), _device(0x201), _device(0x301, "checkpoint"),
                    _device(0x104, status="revoked")]
    now = env.clock.now()
    env.sup.offline.add(0x201)
    env.sup.battery_low.add(0x103)
    env.sup.tamper_open.add(0x301)
    env.sup.last_seen.update({0x101: now - 5, 0x201: now - 3600})
    rows = env.views.devices()
    assert [r["device"] for r in rows][:3] == ["00000201", "00000103", "00000301"]   # offline, then battery/tamper
    by = {r["device"]: r for r in rows}
    assert by["00000201"]["offline"] and not by["00000201"]["online"] and by["00000201"]["last_seen"] == now - 3600
    assert by["00000103"]["battery_low"] and by["00000301"]["tamper"] and by["00000104"]["revoked"]
    assert not by["00000104"]["online"] and by["00000101"]["online"]
    assert by["00000102"]["place"].startswith("Li Xiuying") and by["00000102"]["grid"] == "East lane grid"
    assert [r["device"] for r in env.views.devices(state="offline")] == ["00000201"]
    assert [r["device"] for r in env.views.devices(state="revoked")] == ["00000104"]
    assert [r["device"] for r in env.views.devices(role="checkpoint")] == ["00000301"]
    assert {r["device"] for r in env.views.devices(grid="grid-west")} == {"00000201"}
    assert len(env.views.devices(village="vil-dongshan")) == 6
    assert env.views.devices(village="vil-elsewhere") == []


def test_a_device_quarantined_for_flooding_is_a_fault_on_the_device_page(env):
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from gateway.console.app import HERE

    held = set()
    views = Views(env.cases, env.patrol, lambda: list(env.devices), env.sup, env.clock, held=lambda: set(held))
    env.devices += [_device(0x101), _device(0x102), _device(0x103)]
    assert not any(r["quarantined"] for r in views.devices())
    held.add(0x103)     # the flood guard cut it off at the broker (gateway/quarantine.py)
    rows = views.devices()
    assert rows[0]["device"] == "00000103" and rows[0]["quarantined"]        # with the faults, first
    assert [r["device"] for r in views.devices(state="quarantined")] == ["00000103"]
    html = Environment(loader=FileSystemLoader(HERE + "/templates"), autoescape=select_autoescape(["html"])) \
        .get_template("devices_rows.html").render(t=lambda k, *a: i18n.t("zh", k, *a), rows=rows)
    assert html.count(i18n.t("zh", "quarantined")) == 1 and "已隔离" in html
    held.clear()        # released (cool-down or `fengqiao device release`)
    assert views.devices(state="quarantined") == []


def test_history_filters_and_step_times(env):
    t0 = env.clock.now()
    east = press(env, 0x101, EMERGENCY, t0)
    store = press(env, 0x203, FIRE, t0 + 5)
    loose = press(env, 0x9001, EMERGENCY, t0 + 10)
    env.clock.set(t0 + 65)
    env.cases.acknowledge(east, "p-zhou-min")
    env.clock.set(t0 + 125)
    env.cases.close(east, "p-zhou-min", "burnt pan", "false")
    env.cases.close(store, "p-zhou-min", "a real fire, put out", "real")
    day = datetime.datetime.fromtimestamp(t0 + 8 * 3600, tz=datetime.timezone.utc).date()
    rows, summary = env.views.history(day, day)
    assert {r["case_id"] for r in rows} == {east, store, loose}
    by = {r["case_id"]: r for r in rows}
    assert by[east]["times"]["acknowledged_at"] == 65.0 and by[east]["times"]["closed_at"] == 125.0
    assert by[east]["outcome"] == "false" and by[loose]["outcome"] is None
    assert summary["closed_at"]["count"] == 2 and summary["closed_at"]["max"] == 125.0
    assert [r["case_id"] for r in env.views.history(day, day, outcome="real")[0]] == [store]
    assert [r["case_id"] for r in env.views.history(day, day, level=5)[0]] == [store]
    assert {r["case_id"] for r in env.views.history(day, day, village="vil-dongshan")[0]} == {east, store}
    assert [r["case_id"] for r in env.views.history(day, day, status="open")[0]] == [loose]
    before = day - datetime.timedelta(days=3)
    assert env.views.history(before, before)[0] == []


def _tap(env, place, at, card=WANG):
    dev, number = POINTS[place]
    env.clock.set(at)
    flags = env.patrol.on_event(env.mk.checkin(dev, number, card, device_time=int(at)))
    env.patrol.flush(env.ctx)
    return flags


def test_patrol_today_progress_missed_and_flagged(env):
    t = START + 300
    _tap(env, "cp-gate", t)
    _tap(env, "cp-school", t + 30)                         # 350 m in 30 s: too fast
    _tap(env, "cp-well", t + 900, card="deadbeef")         # nobody's card
    env.clock.set(START + 3 * 3600)                        # the round is over; the temple was never visited
    env.patrol.tick()
    date, out, _ = env.views.patrol_today(date=DATE)
    rnd = next(r for r in out if r["schedule"] == "night-early")
    assert rnd["route"].startswith("Night loop") and rnd["team"] == "Dongshan red-armband patrol"
    assert (rnd["visited"], rnd["checkpoints"]) == (3, 4)
    points = {p["place"]: p["status"] for p in rnd["points"]}
    assert points["Ancestral hall"] == "missed" and points["Village gate"] == "visited"
    flags = {(f["place"], tuple(f["flags"])) for f in rnd["flags"]}
    assert ("Primary school", ("too_fast",)) in flags and ("Old well square", ("unknown_card",)) in flags
    assert next(f for f in rnd["flags"] if f["place"] == "Primary school")["who"] == "Wang Qiang"

    # the page shows it, escaped (the template the console renders)
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from gateway.console.app import HERE

    page = Environment(loader=FileSystemLoader(HERE + "/templates"), autoescape=select_autoescape(["html"])) \
        .get_template("patrol.html").render(
            t=lambda k, *a: i18n.t("en", k, *a), lang="en", session=None, flash=None, path="/patrol", query="",
            hhmm=lambda v: rounds.local_hhmm(v, 8 * 3600), when=str, outcomes=OUTCOMES, secure=False, page="patrol",
            date=date, rounds=out, summaries=[], village=None, areas=[], head=1)
    assert "missed" in page and "Flagged check-ins" in page and "too fast" in page and "unknown card" in page
    assert "3/4" in page and 'id="report-csv"' in page


def test_standard_level_names_are_translated_and_a_villages_own_names_kept():
    assert i18n.level("zh", "critical") == "特急" and i18n.level("zh", "red") == "红色"
    assert i18n.level("en", "critical") == "critical"
    assert i18n.level("zh", "Stufe X") == "Stufe X"  # a village file's own name, as it is spelled
