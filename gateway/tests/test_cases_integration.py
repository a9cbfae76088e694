"""Cases and patrols in the real gateway: real Mosquitto with the project's configuration, the real
gateway service with the `gateway.cases` plugin, real SQLite, and CPython device simulators that
speak protocol.frame (the HIL tests with real firmware on host boards come later).
"""

import datetime
import os
import subprocess
import sys
import time

import pytest

from gateway.cli import GatewayApp
from gateway.clock import ManualClock
from gateway.config import from_dict
from gateway.patrol import rounds
from gateway.tests.conftest import SimDevice, gateway_config
from gateway.village.cli import sync_registry
from gateway.village.config import parse_village
from gateway.village.db import import_village, open_db
from gateway.village.testing import sample_text
from protocol import frame
from tools.testing.procs import REPO_ROOT, wait_for

EAST = [0x101, 0x102, 0x103, 0x104]
WEST = [0x201, 0x202, 0x203]
CHECKPOINTS = {0x301: 101, 0x302: 102, 0x303: 103, 0x304: 104}
ALL = EAST + WEST + list(CHECKPOINTS)


def key_of(device_id):
    return bytes((device_id + i) % 256 for i in range(32))


class Village:
    """A started gateway with the sample village imported and every sample device online."""

    def __init__(self, tmp_path, broker, clients, clock=None):
        raw = gateway_config(tmp_path, broker, gateway={"plugins": ["gateway.cases"]}, cases={"tick_s": 0.05})
        self.app = GatewayApp(from_dict(raw), clock=clock)
        data_dir = self.app.data_dir
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self.db_path = os.path.join(data_dir, "gateway.db")
        self.data = parse_village(sample_text(), "sample_village.toml")
        db = open_db(self.db_path)
        import_village(db, self.data, "sample")
        db.close()
        self.app.start()
        self.plugin = self.app._plugins[-1]
        for device_id in ALL:
            role = "checkpoint" if device_id in CHECKPOINTS else "alarm_button"
            self.app.registry.add_device(device_id, role, None, key=key_of(device_id))
            broker.add_device(device_id, key_of(device_id))
        sync_registry(self.app.registry, self.data)
        self.devices = {d: SimDevice(broker, d, key_of(d), clients).start() for d in ALL}
        self.plugin.cases._directory.invalidate()
        self.plugin.patrol._directory.invalidate()
        wait_for(lambda: all(self.plugin.cases.directory().devices[d]["status"] == "active" for d in ALL), 5,
                 "the plugin to see every device registered")

    def gateway_events(self, kind):
        return [e for e in self.app.store.events_after(0, 100_000) if e.source == "gateway" and e.kind == kind]

    def sirens(self, device_id):
        dev = self.devices[device_id]
        with dev.lock:
            return [f.body for f in dev.downlinks if f.msg_type == frame.DOWN_SIREN]

    def stop(self):
        self.app.stop()


@pytest.fixture
def village_factory(tmp_path, project_broker, clients):
    made = []

    def make(clock=None):
        v = Village(tmp_path, project_broker, clients, clock)
        made.append(v)
        return v

    yield make
    for v in made:
        v.stop()


def fengqiao(*args):
    """The CLI in its own process, as the duty officer runs it."""
    return subprocess.run([sys.executable, "-m", "tools.cli"] + list(args), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(120)
def test_alarm_sounds_the_group_then_a_cli_ack_lights_the_button(village_factory):
    v = village_factory()
    button = v.devices[0x102]
    pressed = time.monotonic()
    button.send(1, frame.UP_ALARM, [3], t=int(time.time()))
    wait_for(lambda: button.acks.get(1) == [0, 1], 10, "the button's acks: stored, then dispatched")
    neighbours = [0x101, 0x103, 0x104]
    wait_for(lambda: all(v.sirens(d) for d in neighbours + list(CHECKPOINTS)), 10, "sirens in the group and patrol points")
    heard = time.monotonic() - pressed
    time.sleep(0.5)                                         # anything wrongly sent would have arrived by now
    assert all(v.sirens(d) == [[True, 1, 180]] for d in neighbours)
    assert all(v.sirens(d) == [[True, 2, 180]] for d in CHECKPOINTS)
    assert all(v.sirens(d) == [] for d in WEST + [0x102])   # nobody else, not the pressing button itself
    (case,) = v.plugin.cases.list_cases()
    print("press -> last siren received: %.3f s; gateway dispatch step after storing: %.3f s"
          % (heard, case["dispatched_at"] - case["opened_at"]))
    assert case["first_responder"] == "p-chen-li"

    result = fengqiao("case", "ack", str(case["case_id"]), "--by", "p-chen-li", "--note", "coming", "--db", v.db_path)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: button.acks.get(1) == [0, 1, 2], 10, "the button's ack: someone is coming")
    result = fengqiao("case", "close", str(case["case_id"]), "--by", "p-chen-li", "--note", "a cat", "--db", v.db_path)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: button.acks.get(1) == [0, 1, 2, 3], 10, "the button's ack: closed")
    wait_for(lambda: all(v.sirens(d)[-1] == [False, 1, 0] for d in neighbours), 10, "sirens off")
    kinds = [e.kind for e in v.app.store.events_after(0, 1000) if e.source == "gateway" and e.kind.startswith("case_")]
    assert kinds == ["case_opened", "case_dispatched", "case_acknowledged", "case_feedback", "case_closed"]
    ack = v.gateway_events("case_acknowledged")[0]
    assert ack.actor == "p-chen-li" and ack.body["case_id"] == case["case_id"] and ack.place_id == "hh-e02"
    assert v.app.store.verify_chain() == len(v.app.store.events_after(0, 100_000))


@pytest.mark.timeout(120)
def test_cancel_closes_the_case_and_silences_the_sirens(village_factory):
    v = village_factory()
    button = v.devices[0x201]
    now = int(time.time())
    button.send(7, frame.UP_ALARM, [0], t=now)
    wait_for(lambda: all(v.sirens(d) for d in (0x202, 0x203)), 10, "the west group's sirens")
    button.send(8, frame.UP_ALARM_CANCEL, [7], t=now + 3)
    wait_for(lambda: button.acks.get(7) == [0, 1, 4], 10, "the alarm acknowledged as cancelled")
    wait_for(lambda: all(v.sirens(d)[-1][0] is False for d in [0x202, 0x203] + list(CHECKPOINTS)), 10, "sirens off")
    assert all(v.sirens(d) == [] for d in EAST)
    (case,) = v.plugin.cases.list_cases(status="cancelled")
    assert case["closed_by"] == "person@00000201"
    assert [s["step"] for s in v.plugin.cases.get(case["case_id"])["steps"]] == ["received", "dispatched", "cancelled"]
    # the button resends the alarm after a lost ack: re-acknowledged with the case's stage, not a new case
    button.send(7, frame.UP_ALARM, [0], t=now)
    wait_for(lambda: button.acks.get(7) == [0, 1, 4, 4], 10, "re-ack of the resent alarm at stage 4")
    assert len(v.plugin.cases.list_cases(status=None)) == 1


@pytest.mark.timeout(120)
def test_escalation_follows_the_injected_clock(village_factory):
    clock = ManualClock(1_773_490_000.0)
    v = village_factory(clock)
    t0 = clock.now()
    v.devices[0x101].send(1, frame.UP_ALARM, [1], t=int(t0))              # fire: level 4, 180 s / 600 s
    wait_for(lambda: v.gateway_events("case_dispatched"), 10, "dispatch")
    clock.set(t0 + 179)
    time.sleep(0.3)                                                          # several timer ticks
    assert v.gateway_events("case_escalated") == []
    clock.set(t0 + 180)
    wait_for(lambda: v.gateway_events("case_escalated"), 10, "escalation to the township")
    clock.set(t0 + 600)
    wait_for(lambda: len(v.gateway_events("case_escalated")) == 2, 10, "escalation to the county")
    esc = v.gateway_events("case_escalated")
    assert [(e.body["to"], e.body["at"] - t0, e.body["notify"]) for e in esc] == [
        ("township", 180, ["p-zhou-min"]), ("county", 600, ["p-sun-hao"])]


@pytest.mark.timeout(120)
def test_patrol_missed_checkpoint_live_and_offline_round_synced_later(village_factory):
    date = datetime.date(2026, 3, 14)
    start = rounds.local_midnight(date, 8 * 3600) + 21 * 3600
    clock = ManualClock(start - 60)
    v = village_factory(clock)

    def tap(device_id, seq, at, card="04a1b2c3"):
        v.devices[device_id].send(seq, frame.UP_CHECKIN, [CHECKPOINTS[device_id], bytes.fromhex(card)], t=int(at))
        wait_for(lambda: seq in v.devices[device_id].acked(), 10, "check-in %d acknowledged" % seq)

    def set_clock(t):
        clock.set(t)
        time.sleep(0.25)                                                     # let the timer tick a few times

    t0 = start + 120
    set_clock(t0)
    tap(0x301, 1, t0)                                                        # gate
    set_clock(t0 + 19 * 60)
    tap(0x303, 1, t0 + 19 * 60)                                              # well (the school was skipped)
    assert v.gateway_events("patrol_missed_checkpoint") == []
    set_clock(t0 + 20 * 60 + 1)                                              # the school's deadline has passed
    wait_for(lambda: v.gateway_events("patrol_missed_checkpoint"), 10, "the missed-checkpoint event")
    (missed,) = v.gateway_events("patrol_missed_checkpoint")
    assert missed.body["checkpoint"] == "cp-school" and missed.received_at < t0 + 3600    # before the round ends
    tap(0x304, 1, t0 + 30 * 60)
    set_clock(start + 2 * 3600)
    wait_for(lambda: v.gateway_events("patrol_round_evaluated"), 10, "the round's evaluation")
    first = [e.body for e in v.gateway_events("patrol_round_evaluated") if e.body["round"].endswith("2026-03-14")
             and e.body["schedule"] == "night-early"]
    assert first[0]["status"] == "missed" and first[0]["missed"] == ["cp-school"]

    # the 02:00 round of the next day, walked while the village's network was down, delivered an hour late
    late_start = rounds.local_midnight(date + datetime.timedelta(days=1), 8 * 3600) + 2 * 3600
    set_clock(late_start + 2 * 3600)
    wait_for(lambda: any(e.body["schedule"] == "night-late" and e.body["date"] == "2026-03-15"
                         for e in v.gateway_events("patrol_round_evaluated")), 10, "the unwalked round evaluated")
    walked = [(0x301, late_start + 300), (0x302, late_start + 900), (0x303, late_start + 1500),
              (0x304, late_start + 2100)]
    for i, (device_id, at) in enumerate(walked):
        tap(device_id, 2 + i, at, card="0499aabb")
    tap(0x303, 2 + 2, walked[2][1], card="0499aabb")                         # a resend: a duplicate, ignored
    # the timer may re-evaluate while the batch is still arriving; the last word is "complete"
    wait_for(lambda: any(e.body["status"] == "complete" for e in v.gateway_events("patrol_round_reevaluated")), 10,
             "re-evaluation after the sync")
    time.sleep(0.3)
    reevaluated = v.gateway_events("patrol_round_reevaluated")
    assert {e.body["round"] for e in reevaluated} == {"night-late/route-night/2026-03-15"}
    assert reevaluated[0].body["previous_status"] == "not_started" and reevaluated[-1].body["status"] == "complete"
    assert len(v.plugin.patrol.checkins_between(late_start - 3600, late_start + 3 * 3600)) == 4
    # the report, from the same database, in its own process: figures match the scenario
    out = os.path.join(os.path.dirname(v.db_path), "reports")
    result = fengqiao("report", "patrol", "--date", "2026-03-14", "--out", out, "--db", v.db_path)
    assert result.returncode == 0, result.stderr
    assert "2 rounds, 0 complete, 0 late, 0 out of order, 1 missed, 1 not started; compliance 37.5%" in result.stdout
    result = fengqiao("report", "patrol", "--date", "2026-03-15", "--out", out, "--db", v.db_path)
    assert "2 rounds, 1 complete, 0 late, 0 out of order, 0 missed, 1 not started; compliance 50.0%" in result.stdout
    with open(os.path.join(out, "patrol-2026-03-15.csv")) as f:
        rows = f.read().splitlines()
    assert rows[1].startswith("2026-03-15,vil-dongshan,route-night,team-dongshan,night-late,02:00,02:05:00,complete,4,4,")


@pytest.mark.timeout(120)
def test_the_timer_leaves_live_events_to_the_handler(village_factory):
    """Issue 14, in the real service: once the live handler runs, the timer's catch-up offers none
    of the events it handles (heartbeats from every device, an alarm and its case events written
    by other threads), and its cursor still reaches the log's head."""
    v = village_factory()
    store, plugin = v.app.store, v.plugin
    wait_for(lambda: plugin.cases.cursor("events") == store.head()[0], 10, "the catch-up at the head")
    offered = plugin.rows_offered
    for seq in range(1, 6):
        for d, dev in v.devices.items():
            dev.send(seq, frame.UP_HEARTBEAT, [3700, seq, 0, None, 10203], t=int(time.time()))
    v.devices[0x102].send(6, frame.UP_ALARM, [3], t=int(time.time()))
    wait_for(lambda: len(plugin.cases.list_cases()) == 1 and v.gateway_events("case_dispatched"), 10, "the case")
    wait_for(lambda: plugin.cases.cursor("events") == store.head()[0], 10, "the cursor at the head")
    assert plugin.rows_offered == offered
    assert len([e for e in store.events_after(0, 100_000) if e.kind == "heartbeat"]) >= 5 * len(ALL)
