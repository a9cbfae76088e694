"""A patrol round with real firmware: check-in point host boards (MFRC522 simulated on the board, cards
presented through the control socket), the project's Mosquitto, the real gateway with the cases
plugin and an injected clock. The boards take the gateway's time from its acks (firmware/clock.py),
so moving the gateway's clock and sending an ack moves theirs: a 30-minute round runs in seconds.

Covers, from issue 5's Tests: a round with one missed checkpoint raises the event before the round
ends; the same round made offline (Wi-Fi down, broker session gone, check-ins kept in the boards'
flash outboxes) and synced an hour later gives the same evaluation as one walked online.
"""

import datetime
import os
import time

import pytest

from gateway.cli import GatewayApp
from gateway.clock import ManualClock
from gateway.config import from_dict
from gateway.patrol import rounds
from gateway.tests.conftest import gateway_config
from gateway.village.cli import sync_registry
from gateway.village.config import parse_village
from gateway.village.db import import_village, open_db
from gateway.village.testing import sample_text
from tools.hostboard import HostBoard, board_heap, provision_dir
from tools.testing.procs import wait_for

HEAP = board_heap()  # a board's 64 KB, code in ROMFS (firmware/LINK.md, Memory)
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000"]
GATE, WELL = 0x301, 0x303
CHECKPOINT_NO = {GATE: 101, WELL: 103}
DATE = datetime.date(2026, 3, 14)
START = rounds.local_midnight(DATE, 8 * 3600) + 21 * 3600


def gateway_events(app, kind):
    return [e for e in app.store.events_after(0, 100_000) if e.source == "gateway" and e.kind == kind]


class Patrol:
    """Gateway (injected clock) + one check-in point host board per device in `devices`."""

    def __init__(self, tmp_path, broker, clock, village_text, devices=(GATE, WELL)):
        self.clock, self.broker = clock, broker
        raw = gateway_config(tmp_path, broker, gateway={"plugins": ["gateway.cases"]}, cases={"tick_s": 0.1})
        self.app = GatewayApp(from_dict(raw), clock=clock)
        os.makedirs(self.app.data_dir, mode=0o700, exist_ok=True)
        data = parse_village(village_text, "village.toml")
        db = open_db(os.path.join(self.app.data_dir, "gateway.db"))
        import_village(db, data, "test")
        db.close()
        self.boards, self.keys, self.boot = {}, {}, {}
        self.app.start()
        for dev in devices:
            key = self.keys[dev] = os.urandom(32)
            self.app.registry.add_device(dev, "checkpoint", None, key=key)
            broker.add_device(dev, key)
            flash = tmp_path / ("cp-%x" % dev)
            provision_dir(str(flash), {"device_id": dev, "key": key, "role": "checkin", "broker_host": "127.0.0.1",
                                       "broker_port": broker.port, "checkpoint_id": CHECKPOINT_NO[dev]})
            self.boards[dev] = HostBoard(str(flash), heap=HEAP, args=FAST).start()
        sync_registry(self.app.registry, data)
        wait_for(lambda: self.boot.update({e.device_id: e.seq for e in self.app.store.events_after(0, 1000)
                                           if e.kind == "boot"}) or set(self.boot) == set(self.boards), 60,
                 "every board's boot frame stored")

    def walk_to(self, t):
        """Move the gateway's clock to t and give the boards the new time (an ack carries it).

        A chirp (siren pattern 3) follows each ack on the same topic; downlinks are handled in
        order, so once the board has chirped it has taken the new time."""
        self.clock.set(t)
        marks = {}
        for dev, seq in self.boot.items():
            if not self.boards[dev].state()["net"]:
                continue                          # offline: keeps the time it had
            marks[dev] = len(self.boards[dev].buzzer_history())
            self.app.ctx.send_ack(dev, seq, 0)
            self.app.ctx.send_downlink(dev, 0x82, [True, 3, 0])
        for dev, n in marks.items():
            wait_for(lambda: len(self.boards[dev].buzzer_history()) > n, 15, "board %08x to take the new time" % dev)

    def checkins(self, dev):
        return [e for e in self.app.store.events_after(0, 100_000) if e.kind == "checkin" and e.device_id == dev]

    def tap(self, dev, card, at=None):
        """Present a card; when online (`at` given) wait until it is stored with the board's time ~ at."""
        n = len(self.checkins(dev))
        self.boards[dev].card(card)
        if at is None:
            time.sleep(0.8)
            self.boards[dev].remove_card()
            return None
        wait_for(lambda: len(self.checkins(dev)) > n, 15, "check-in stored")
        self.boards[dev].remove_card()
        ev = self.checkins(dev)[-1]
        assert ev.body == [CHECKPOINT_NO[dev], bytes.fromhex(card)]
        assert at <= ev.device_time <= at + 10, "the board's clock follows the gateway's acks"
        return ev

    def offline(self, dev):
        self.boards[dev].network(False)           # Wi-Fi gone
        self.broker.revoke_device(dev)            # and the broker session with it

    def online(self, dev):
        self.broker.add_device(dev, self.keys[dev])
        self.boards[dev].network(True)

    def stop(self):
        for hb in self.boards.values():
            hb.stop()
        self.app.stop()


@pytest.fixture
def patrol_factory(tmp_path, project_broker):
    made = []

    def make(clock, text):
        made.append(Patrol(tmp_path, project_broker, clock, text))
        return made[-1]

    yield make
    for p in made:
        p.stop()


@pytest.mark.timeout(240)
def test_missed_checkpoint_raised_while_the_round_runs_with_real_checkin_points(patrol_factory):
    clock = ManualClock(START - 120)
    p = patrol_factory(clock, sample_text())
    app = p.app
    t0 = START + 120
    p.walk_to(t0)
    p.tap(GATE, "04a1b2c3", t0)
    p.walk_to(t0 + 19 * 60)
    p.tap(WELL, "04a1b2c3", t0 + 19 * 60)               # the school (no board here) was skipped
    assert gateway_events(app, "patrol_missed_checkpoint") == []
    p.walk_to(t0 + 20 * 60 + 1)                          # the school's deadline (10 min + 10 min grace) passed
    wait_for(lambda: gateway_events(app, "patrol_missed_checkpoint"), 10, "the missed-checkpoint event")
    (missed,) = gateway_events(app, "patrol_missed_checkpoint")
    assert missed.body["checkpoint"] == "cp-school" and missed.body["round"] == "night-early/route-night/2026-03-14"
    assert missed.received_at < t0 + 3600                                   # before the round ends
    p.walk_to(t0 + 3600 + 60)
    key = "night-early/route-night/2026-03-14"
    wait_for(lambda: [e for e in gateway_events(app, "patrol_round_evaluated") if e.body["round"] == key], 10,
             "the round's evaluation")
    (final,) = [e.body for e in gateway_events(app, "patrol_round_evaluated") if e.body["round"] == key]
    assert final["status"] == "missed" and final["missed"] == ["cp-school", "cp-temple"]
    assert [c["status"] for c in final["checkpoints"]] == ["visited", "missed", "visited", "missed"]


@pytest.mark.timeout(240)
def test_round_walked_offline_and_synced_an_hour_later_evaluates_like_the_live_one(patrol_factory):
    # a two-checkpoint route (gate, then the well 20 minutes later) so that two boards walk all of it
    text = sample_text().replace('checkpoints = ["cp-gate", "cp-school", "cp-well", "cp-temple"]',
                                 'checkpoints = ["cp-gate", "cp-well"]').replace(
        "expected_min = [0, 10, 20, 30]", "expected_min = [0, 20]")
    clock = ManualClock(START - 120)
    p = patrol_factory(clock, text)
    app = p.app
    live_key, offline_key = "night-early/route-night/2026-03-14", "night-early/route-night/2026-03-15"

    t0 = START + 300                                           # 14 March: walked with the network up
    p.walk_to(t0)
    p.tap(GATE, "04a1b2c3", t0)
    p.walk_to(t0 + 18 * 60)
    p.tap(WELL, "04a1b2c3", t0 + 18 * 60)
    p.walk_to(t0 + 2 * 3600)
    wait_for(lambda: [e for e in gateway_events(app, "patrol_round_evaluated") if e.body["round"] == live_key], 10,
             "the live round's evaluation")

    t1 = START + 86400 + 300                                   # 15 March: the village's network is down
    p.walk_to(t1)                                              # (the boards' clocks were set before the outage)
    for dev in (GATE, WELL):
        p.offline(dev)
    time.sleep(1.0)
    n_before = len(p.checkins(GATE)) + len(p.checkins(WELL))
    p.tap(GATE, "0499aabb")
    time.sleep(1.0)
    p.tap(WELL, "0499aabb")
    p.walk_to(t1 + 3600 + 60)                                  # round over: nothing arrived
    wait_for(lambda: [e for e in gateway_events(app, "patrol_round_evaluated") if e.body["round"] == offline_key], 10,
             "the offline round evaluated without its check-ins")
    assert len(p.checkins(GATE)) + len(p.checkins(WELL)) == n_before
    p.walk_to(t1 + 3600 + 3600)                                # an hour later the network is back
    for dev in (GATE, WELL):
        p.online(dev)
    wait_for(lambda: len(p.checkins(GATE)) + len(p.checkins(WELL)) == n_before + 2, 30,
             "the outboxes delivered the two check-ins")
    for dev in (GATE, WELL):
        ev = p.checkins(dev)[-1]
        assert t1 <= ev.device_time <= t1 + 30 and ev.received_at >= t1 + 7200     # placed by device time
    wait_for(lambda: [e for e in gateway_events(app, "patrol_round_reevaluated") if e.body["round"] == offline_key
                      and e.body["status"] == "complete"], 10, "re-evaluation after the sync")

    def verdict(key):
        spec = next(s for s in rounds.planned_rounds(p.app._plugins[-1].patrol.directory(),
                                                     datetime.date.fromisoformat(key.split("/")[-1]))
                    if s["key"] == key)
        r = p.app._plugins[-1].patrol.evaluate(spec)
        return (r["status"], r["missed"], r["out_of_order"], r["late_start"], [c["status"] for c in r["checkpoints"]])

    assert verdict(live_key) == verdict(offline_key) == ("complete", [], False, False, ["visited", "visited"])
    live = [e.body for e in gateway_events(app, "patrol_round_evaluated") if e.body["round"] == live_key]
    assert [b["status"] for b in live] == ["complete"]
