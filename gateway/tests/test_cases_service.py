"""The case service over a real SQLite file, with a manual clock and a stub gateway context (unit level)."""

import pytest

from gateway.cases.service import (MAX_ATTEMPTS, CaseNotFound, CaseService, CaseStateError, UnknownPerson)
from gateway.clock import ManualClock
from gateway.store import EventStore
from gateway.village.db import open_db
from gateway.village.testing import EventMaker, StubContext, sample_db

EAST = [0x101, 0x102, 0x103, 0x104]
WEST = [0x201, 0x202, 0x203]
CHECKPOINTS = [0x301, 0x302, 0x303, 0x304]
FIRE, MEDICAL, EMERGENCY, INTRUSION = 1, 2, 0, 3


@pytest.fixture
def env(tmp_path):
    clock = ManualClock(1_773_500_000.0)
    db = sample_db(tmp_path / "g.db")
    store = EventStore(tmp_path / "g.db", clock)
    svc = CaseService(db, clock)
    ctx = StubContext(clock, store=store)
    yield svc, ctx, EventMaker(clock, start_id=10_000), clock, tmp_path
    store.close()


def press(svc, ctx, ev):
    case_id = svc.on_event(ev)
    svc.flush(ctx)
    return case_id


def test_alarm_sounds_its_group_and_the_patrol_points_and_nobody_else(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    case_id = press(svc, ctx, mk.alarm(0x102, INTRUSION))
    sirens = ctx.sirens()
    assert {d for d, b in sirens.items() if b[1] == 1} == {0x101, 0x103, 0x104}       # neighbours, not 0x102 itself
    assert {d for d, b in sirens.items() if b[1] == 2} == set(CHECKPOINTS)             # patrol pattern at check-in points
    assert not set(sirens) & set(WEST)
    assert all(b[0] is True and b[2] == 180 for b in sirens.values())
    assert all(at - t0 < 1.0 for *_, at in ctx.downlinks)                              # dispatched within a second
    assert ctx.acks == [(0x102, 1, 1, t0)]                                             # stage 1 dispatched
    case = svc.get(case_id)
    assert case["first_responder"] == "p-chen-li" and case["group_id"] == "jd-east" and case["level"] == 3
    assert [s["step"] for s in case["steps"]] == ["received", "dispatched"]
    assert ctx.kinds() == ["case_opened", "case_dispatched"]
    dispatched = ctx.emitted[1][1]
    assert dispatched["first_responder"] == "p-chen-li" and dispatched["case_id"] == case_id
    assert sorted(dispatched["sirens"]) == ["00000101", "00000103", "00000104"]
    assert case["pending_effects"] == 0


def test_level_one_does_not_alert_the_patrol(env, tmp_path):
    svc, ctx, mk, clock, _ = env
    svc.db.execute("UPDATE village_severity_levels SET patrol_alert = 0 WHERE level = 3")
    svc.db.execute("UPDATE village_meta SET value = '99' WHERE key = 'import_id'")     # as an import would
    press(svc, ctx, mk.alarm(0x201, EMERGENCY))
    assert set(ctx.sirens()) == {0x202, 0x203}


@pytest.mark.parametrize("device,kind,level", [
    (0x101, FIRE, 4),            # kind rule
    (0x203, FIRE, 5),            # place rule: the store with LPG bottles
    (0x102, MEDICAL, 4),         # place rule: elderly person living alone
    (0x101, MEDICAL, 3),         # kind rule
    (0x101, EMERGENCY, 3),       # no rule: default level
])
def test_severity_by_kind_and_place(env, device, kind, level):
    svc, ctx, mk, _, _ = env
    assert svc.get(press(svc, ctx, mk.alarm(device, kind)))["level"] == level


def test_escalation_fires_at_each_deadline_and_not_before(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE))          # level 4: village 180 s, township 600 s
    clock.set(t0 + 179.9)
    assert svc.check_deadlines() == []
    clock.set(t0 + 180)
    assert svc.check_deadlines() == [(case_id, "township")]
    assert svc.check_deadlines() == []
    clock.set(t0 + 599)
    assert svc.check_deadlines() == []
    clock.set(t0 + 600)
    assert svc.check_deadlines() == [(case_id, "county")]
    svc.flush(ctx)
    esc = [e for e in ctx.emitted if e[0] == "case_escalated"]
    assert [(e[1]["to"], e[1]["at"] - t0, e[1]["notify"]) for e in esc] == [
        ("township", 180, ["p-zhou-min"]), ("county", 600, ["p-sun-hao"])]
    clock.set(t0 + 10_000)
    assert svc.check_deadlines() == []


def test_acknowledgement_stops_escalation(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE))
    clock.set(t0 + 100)
    svc.acknowledge(case_id, "p-chen-li", "on my way")
    clock.set(t0 + 5000)
    assert svc.check_deadlines() == []
    assert svc.get(case_id)["escalated_to"] == "village"


def test_late_timer_escalates_both_steps_at_once(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE))
    clock.set(t0 + 3600)
    assert svc.check_deadlines() == [(case_id, "township"), (case_id, "county")]


def test_highest_level_goes_straight_to_the_township(env):
    svc, ctx, mk, clock, _ = env
    case_id = press(svc, ctx, mk.alarm(0x203, FIRE))
    case = svc.get(case_id)
    assert case["level"] == 5 and case["escalated_to"] == "township" and case["village_deadline"] is None
    assert ctx.kinds() == ["case_opened", "case_dispatched", "case_escalated"]
    assert ctx.emitted[2][1]["reason"] == "severity" and ctx.emitted[2][1]["notify"] == ["p-zhou-min"]
    clock.advance(299)
    assert svc.check_deadlines() == []
    clock.advance(1)
    assert svc.check_deadlines() == [(case_id, "county")]


def test_five_steps_ack_feedback_close(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE))
    clock.set(t0 + 42)
    svc.acknowledge(case_id, "p-chen-li", "on my way")
    assert ctx.acks[-1][2] == 1                    # nothing sent before the flush ...
    svc.flush(ctx)
    assert ctx.acks[-1] == (0x101, 1, 2, t0 + 42)  # ... then the button: someone is coming
    clock.set(t0 + 900)
    svc.close(case_id, "p-chen-li", "pan fire put out, nobody hurt")
    svc.flush(ctx)
    assert ctx.acks[-1] == (0x101, 1, 3, t0 + 900)
    assert all(b[0] is False for b in ctx.sirens().values()) and len(ctx.sirens()) == 7
    case = svc.get(case_id)
    steps = [(s["step"], s["at"] - t0, s["actor"]) for s in case["steps"]]
    assert steps == [("received", 0, "system"), ("dispatched", 0, "system"), ("acknowledged", 42, "p-chen-li"),
                     ("feedback", 42, "system"), ("closed", 900, "p-chen-li")]
    assert case["status"] == "closed" and case["close_note"] == "pan fire put out, nobody hurt"
    assert ctx.kinds() == ["case_opened", "case_dispatched", "case_acknowledged", "case_feedback", "case_closed"]
    closed = ctx.emitted[-1]
    assert closed[4] == "p-chen-li" and closed[1]["note"] == "pan fire put out, nobody hurt"
    assert ctx.store.verify_chain() == 5           # every step is a chained gateway event with its actor
    assert [ctx.store.get(i).actor for i in range(1, 6)] == ["system", "system", "p-chen-li", "system", "p-chen-li"]


def test_actions_are_refused_when_they_do_not_apply(env):
    svc, ctx, mk, _, _ = env
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE))
    with pytest.raises(UnknownPerson):
        svc.acknowledge(case_id, "p-nobody")
    with pytest.raises(CaseNotFound):
        svc.acknowledge(999, "p-chen-li")
    with pytest.raises(CaseStateError):
        svc.close(case_id, "p-chen-li", "   ")
    svc.acknowledge(case_id, "p-chen-li")
    with pytest.raises(CaseStateError, match="already acknowledged"):
        svc.acknowledge(case_id, "p-wu-fang")
    svc.close(case_id, "p-zhou-min", "false alarm: child pressed it")
    with pytest.raises(CaseStateError, match="closed"):
        svc.close(case_id, "p-zhou-min", "again")
    with pytest.raises(CaseStateError):
        svc.dispatch(case_id, "p-zhou-min", "p-wu-fang")


def test_close_without_ack_records_an_implicit_acknowledgement(env):
    svc, ctx, mk, _, _ = env
    case_id = press(svc, ctx, mk.alarm(0x201, EMERGENCY))
    svc.close(case_id, "p-wu-fang", "checked in person: all fine")
    svc.flush(ctx)
    steps = svc.get(case_id)["steps"]
    # the button hears "coming" when the acks go out, after the close was recorded (same instant)
    assert [s["step"] for s in steps][-3:] == ["acknowledged", "closed", "feedback"]
    assert steps[-3]["detail"]["implicit"] and steps[-1]["at"] == steps[-2]["at"]
    assert [a[2] for a in ctx.acks] == [1, 2, 3]


def test_manual_dispatch_is_recorded_with_who(env):
    svc, ctx, mk, _, _ = env
    case_id = press(svc, ctx, mk.alarm(0x101, EMERGENCY))
    svc.dispatch(case_id, "p-zhou-min", "p-wu-fang", "Chen Li is away")
    svc.flush(ctx)
    assert svc.get(case_id)["assigned_to"] == "p-wu-fang"
    kind, body, _, _, actor = ctx.emitted[-1]
    assert kind == "case_dispatched" and actor == "p-zhou-min" and body["to"] == "p-wu-fang" and body["manual"]


def test_cancel_within_grace_closes_as_cancelled_and_silences_sirens(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    alarm = mk.alarm(0x103, EMERGENCY)
    case_id = press(svc, ctx, alarm)
    clock.set(t0 + 12)
    assert press(svc, ctx, mk.cancel(0x103, alarm.seq)) == case_id
    case = svc.get(case_id)
    assert case["status"] == "cancelled" and case["closed_by"] == "person@00000103"
    assert {d: b[0] for d, b in ctx.sirens().items()} == {d: False for d in [0x101, 0x102, 0x104] + CHECKPOINTS}
    assert ctx.acks[-1] == (0x103, alarm.seq, 4, t0 + 12)
    assert [i["role"] for i in case["inputs"]] == ["first", "cancel"]          # the record stays
    assert [s["step"] for s in case["steps"]] == ["received", "dispatched", "cancelled"]
    assert ctx.kinds()[-1] == "case_cancelled"
    clock.set(t0 + 10_000)
    assert svc.check_deadlines() == []


def test_cancel_after_grace_is_refused_and_the_case_stays_open(env):
    svc, ctx, mk, clock, _ = env
    alarm = mk.alarm(0x103, EMERGENCY)
    case_id = press(svc, ctx, alarm)
    clock.advance(31)
    press(svc, ctx, mk.cancel(0x103, alarm.seq))
    case = svc.get(case_id)
    assert case["status"] == "open"
    assert case["steps"][-1]["step"] == "cancel_refused" and "grace period" in case["steps"][-1]["detail"]["reason"]
    assert all(b[0] for b in ctx.sirens().values())
    assert ctx.kinds()[-1] == "case_cancel_refused"


def test_cancel_grace_is_measured_by_device_time_for_late_delivery(env):
    svc, ctx, mk, clock, _ = env
    t0 = clock.now()
    alarm = mk.alarm(0x103, EMERGENCY)
    case_id = press(svc, ctx, alarm)
    clock.set(t0 + 600)                      # the cancel frame sat in the outbox for ten minutes
    press(svc, ctx, mk.cancel(0x103, alarm.seq, device_time=int(t0) + 10))
    assert svc.get(case_id)["status"] == "cancelled"


def test_cancel_does_not_undo_a_neighbours_alarm(env):
    svc, ctx, mk, clock, _ = env
    alarm = mk.alarm(0x101, INTRUSION)
    case_id = press(svc, ctx, alarm)
    clock.advance(5)
    assert press(svc, ctx, mk.alarm(0x102, INTRUSION)) == case_id
    clock.advance(5)
    press(svc, ctx, mk.cancel(0x101, alarm.seq))
    case = svc.get(case_id)
    assert case["status"] == "open" and "other households" in case["steps"][-1]["detail"]["reason"]


def test_unmatched_cancel_is_recorded_not_dropped(env):
    svc, ctx, mk, _, _ = env
    assert press(svc, ctx, mk.cancel(0x101, 77)) is None
    assert ctx.kinds() == ["case_cancel_unmatched"] and ctx.emitted[0][1]["alarm_seq"] == 77


def test_repeated_presses_join_the_open_case(env):
    svc, ctx, mk, clock, _ = env
    case_id = press(svc, ctx, mk.alarm(0x101, EMERGENCY))
    n_sirens = len(ctx.downlinks)
    clock.advance(600)                        # long after the correlation window: same device still joins
    assert press(svc, ctx, mk.alarm(0x101, EMERGENCY)) == case_id
    assert len(ctx.downlinks) == n_sirens     # no second round of sirens
    assert ctx.acks[-1][1:3] == (2, 1)        # the second press is acknowledged with the case's stage
    svc.acknowledge(case_id, "p-chen-li")
    assert press(svc, ctx, mk.alarm(0x101, EMERGENCY)) == case_id
    assert ctx.acks[-1][1:3] == (3, 2)
    svc.flush(ctx)
    assert sorted(a[1] for a in ctx.acks if a[2] == 2) == [1, 2, 3]    # every press of the case sees "coming"
    assert [i["role"] for i in svc.get(case_id)["inputs"]] == ["first", "repeat", "repeat"]
    assert svc.current_stage(0x101, 1, 2) == 2


def test_group_alarms_within_the_window_are_one_incident(env):
    svc, ctx, mk, clock, _ = env
    first = press(svc, ctx, mk.alarm(0x101, INTRUSION))
    clock.advance(60)
    assert press(svc, ctx, mk.alarm(0x104, FIRE)) == first            # same group, within 120 s
    case = svc.get(first)
    assert [i["role"] for i in case["inputs"]] == ["first", "joined"]
    assert case["level"] == 4 and case["steps"][-1]["step"] == "level_raised"
    assert press(svc, ctx, mk.alarm(0x201, INTRUSION)) != first       # other group: its own case
    clock.advance(61)
    assert press(svc, ctx, mk.alarm(0x102, INTRUSION)) not in (first, None)   # outside the window: new case


def test_joined_level_five_escalates_at_once(env):
    svc, ctx, mk, _, _ = env
    case_id = press(svc, ctx, mk.alarm(0x201, INTRUSION))
    assert press(svc, ctx, mk.alarm(0x203, FIRE)) == case_id
    assert svc.get(case_id)["escalated_to"] == "township"


def test_the_same_event_twice_makes_one_case(env):
    svc, ctx, mk, _, _ = env
    ev = mk.alarm(0x101, FIRE)
    assert press(svc, ctx, ev) == press(svc, ctx, ev)
    assert len(svc.list_cases()) == 1 and ctx.kinds().count("case_opened") == 1


def test_an_ack_from_another_process_reaches_the_button_on_the_next_flush(env):
    svc, ctx, mk, clock, tmp_path = env
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE))
    cli_side = CaseService(open_db(tmp_path / "g.db"), clock)     # what `fengqiao case ack` does
    cli_side.acknowledge(case_id, "p-chen-li", "coming")
    assert svc.get(case_id)["pending_effects"] == 2      # the upstream event and the button's ack
    assert svc.flush(ctx) == 2
    assert ctx.acks[-1][:3] == (0x101, 1, 2)
    assert ctx.kinds()[-2:] == ["case_acknowledged", "case_feedback"]
    assert svc.flush(ctx) == 0


def test_a_failing_downlink_is_retried_then_given_up_without_blocking_others(env):
    svc, _, mk, clock, _ = env
    ctx = StubContext(clock, fail_downlinks_to={0x103})
    svc.on_event(mk.alarm(0x101, EMERGENCY))
    svc.flush(ctx)
    assert 0x102 in ctx.sirens() and 0x104 in ctx.sirens() and 0x103 not in ctx.sirens()
    assert ctx.kinds() == ["case_opened", "case_dispatched"]
    for _ in range(MAX_ATTEMPTS - 1):
        svc.flush(ctx)
    assert svc.effect_failures == MAX_ATTEMPTS
    assert svc.flush(ctx) == 0
    err = svc.db.execute("SELECT attempts, error FROM case_effects WHERE error IS NOT NULL").fetchall()
    assert err == [(MAX_ATTEMPTS, "ConnectionError: device 00000103 unreachable")]


def test_without_configuration_a_case_is_still_opened(tmp_path):
    clock = ManualClock()
    svc = CaseService(open_db(tmp_path / "empty.db"), clock)
    ctx = StubContext(clock)
    case_id = press(svc, ctx, EventMaker(clock).alarm(0x42, FIRE))
    assert ctx.downlinks == [] and ctx.acks[0][2] == 1
    assert "no village configuration" in svc.get(case_id)["steps"][1]["detail"]["note"]


def test_an_alarm_from_an_outbox_is_dispatched_and_marked_late(env):
    svc, ctx, mk, clock, _ = env
    case_id = press(svc, ctx, mk.alarm(0x101, FIRE, device_time=int(clock.now()) - 1800))
    received = svc.get(case_id)["steps"][0]
    assert received["detail"]["delivered_late_s"] == 1800 and ctx.sirens()
