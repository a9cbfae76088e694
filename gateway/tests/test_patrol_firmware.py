"""A patrol round with real firmware: check-in point host boards (MFRC522 simulated on the board, cards
presented through the control socket), the project's Mosquitto, the real gateway with the cases
plugin and an injected clock. The boards take the gateway's time from its acks (firmware/clock.py),
so moving the gateway's clock and sending an ack moves theirs: a 30-minute round runs in seconds.

Covers, from issue 5's Tests: a round with one missed checkpoint raises the event before the round
ends. (The offline-then-synced round is covered at frame level in test_cases_integration.py and
test_patrol_service.py: walking it on boards would need their clocks to move while offline.)
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
from tools.hostboard import HostBoard, provision_dir
from tools.testing.procs import wait_for

HEAP = "256k"
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000"]
GATE, WELL = 0x301, 0x303
CHECKPOINT_NO = {GATE: 101, WELL: 103}
DATE = datetime.date(2026, 3, 14)
START = rounds.local_midnight(DATE, 8 * 3600) + 21 * 3600


def gateway_events(app, kind):
    return [e for e in app.store.events_after(0, 100_000) if e.source == "gateway" and e.kind == kind]


@pytest.mark.timeout(240)
def test_missed_checkpoint_raised_while_the_round_runs_with_real_checkin_points(tmp_path, project_broker):
    clock = ManualClock(START - 120)
    raw = gateway_config(tmp_path, project_broker, gateway={"plugins": ["gateway.cases"]}, cases={"tick_s": 0.1})
    app = GatewayApp(from_dict(raw), clock=clock)
    os.makedirs(app.data_dir, mode=0o700, exist_ok=True)
    data = parse_village(sample_text(), "sample_village.toml")
    db = open_db(os.path.join(app.data_dir, "gateway.db"))
    import_village(db, data, "sample")
    db.close()
    boards = {}
    try:
        app.start()
        for dev in (GATE, WELL):
            key = os.urandom(32)
            app.registry.add_device(dev, "checkpoint", None, key=key)
            project_broker.add_device(dev, key)
            flash = tmp_path / ("cp-%x" % dev)
            provision_dir(str(flash), {"device_id": dev, "key": key, "role": "checkin", "broker_host": "127.0.0.1",
                                       "broker_port": project_broker.port, "checkpoint_id": CHECKPOINT_NO[dev]})
            boards[dev] = HostBoard(str(flash), heap=HEAP, args=FAST).start()
        sync_registry(app.registry, data)
        boot = {}
        wait_for(lambda: boot.update({e.device_id: e.seq for e in app.store.events_after(0, 1000) if e.kind == "boot"})
                 or set(boot) == set(boards), 60, "both boards' boot frames stored")

        def walk_to(t):
            """Move the gateway's clock to t and give the boards the new time (an ack carries it)."""
            clock.set(t)
            for dev, seq in boot.items():
                app.ctx.send_ack(dev, seq, 0)
            time.sleep(0.5)

        def tap(dev, card, at):
            n = len([e for e in app.store.events_after(0, 100_000) if e.kind == "checkin" and e.device_id == dev])
            boards[dev].card(card)
            wait_for(lambda: len([e for e in app.store.events_after(0, 100_000)
                                  if e.kind == "checkin" and e.device_id == dev]) > n, 15, "check-in stored")
            boards[dev].remove_card()
            ev = [e for e in app.store.events_after(0, 100_000) if e.kind == "checkin" and e.device_id == dev][-1]
            assert ev.body == [CHECKPOINT_NO[dev], bytes.fromhex(card)]
            assert at <= ev.device_time <= at + 10, "the board's clock follows the gateway's acks"
            return ev

        t0 = START + 120
        walk_to(t0)
        tap(GATE, "04a1b2c3", t0)
        walk_to(t0 + 19 * 60)
        tap(WELL, "04a1b2c3", t0 + 19 * 60)               # the school (no board here) was skipped
        assert gateway_events(app, "patrol_missed_checkpoint") == []
        walk_to(t0 + 20 * 60 + 1)                          # the school's deadline (10 min + 10 min grace) passed
        wait_for(lambda: gateway_events(app, "patrol_missed_checkpoint"), 10, "the missed-checkpoint event")
        (missed,) = gateway_events(app, "patrol_missed_checkpoint")
        assert missed.body["checkpoint"] == "cp-school" and missed.body["round"] == "night-early/route-night/2026-03-14"
        assert missed.received_at < t0 + 3600                                   # before the round ends
        walk_to(t0 + 3600 + 60)
        wait_for(lambda: [e for e in gateway_events(app, "patrol_round_evaluated")
                          if e.body["round"] == "night-early/route-night/2026-03-14"], 10, "the round's evaluation")
        (final,) = [e.body for e in gateway_events(app, "patrol_round_evaluated")
                    if e.body["round"] == "night-early/route-night/2026-03-14"]
        assert final["status"] == "missed" and final["missed"] == ["cp-school", "cp-temple"]
        assert [c["status"] for c in final["checkpoints"]] == ["visited", "missed", "visited", "missed"]
    finally:
        for hb in boards.values():
            hb.stop()
        app.stop()
