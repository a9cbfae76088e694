"""Issue 14 (broker part) and issue 13 item 3: the gateway's persistent session across a broker
kill -9 (autosave_interval 1), a lost session (re-subscribed, counted), and retained uplinks
(dropped and counted by the gateway even if a broker delivered them). Real Mosquitto and gateway."""

import os
import time

import pytest

from gateway.broker import ProjectBroker
from gateway.cli import GatewayApp
from gateway.config import from_dict
from gateway.tests.conftest import SimDevice, gateway_config
from protocol import frame
from tools.testing.procs import wait_for

KEY_A = bytes(range(32))
A = 0x2A


def _kill9(broker):
    """What a power cut or OOM kill does to Mosquitto: no final save."""
    broker._proc.proc.kill()
    broker._proc.proc.wait(10)
    broker._proc.stop()
    broker._proc = None


def _reconnected(app, broker):
    wait_for(lambda: not app.service.connected, 10, "the gateway to notice the broker died")
    broker.start()
    app.service.wait_connected(20)


@pytest.mark.timeout(120)
def test_session_survives_kill9_and_a_lost_one_is_resubscribed(running_gateway, project_broker, clients):
    app = running_gateway()
    app.registry.add_device(A, "alarm_button", None, key=KEY_A)
    project_broker.add_device(A, KEY_A)
    lost = lambda: app.metrics.counter("fengqiao_broker_session_lost_total")  # noqa: E731
    db = os.path.join(project_broker.workdir, "mosquitto.db")
    subscribed_ns = time.time_ns()
    wait_for(lambda: os.path.exists(db) and os.stat(db).st_mtime_ns > subscribed_ns, 10,
             "an autosave (autosave_interval 1) with the gateway's session in it")
    _kill9(project_broker)
    # The broker comes back with the gateway's session: what a device sends before the gateway
    # is back is queued for it, not dropped (the issue-14 loss).
    project_broker.start()
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    dev.send(1)
    wait_for(lambda: app.service.connected, 20, "the gateway to reconnect")
    wait_for(lambda: 1 in dev.acked(), 20, "seq 1 (sent before the gateway was back) to be acked")
    assert lost() == 0
    # A broker that lost its state (database gone): the gateway subscribes again and says so.
    _kill9(project_broker)
    os.unlink(db)
    _reconnected(app, project_broker)
    assert lost() == 1
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    dev.send(2, frame.UP_HEARTBEAT, (3700, 1, 0, None, 10000))
    wait_for(lambda: 2 in dev.acked(), 20, "seq 2 after the re-subscribe")


@pytest.mark.timeout(60)
def test_gateway_drops_and_counts_a_retained_uplink(tmp_path, clients):
    # Our broker refuses retained messages (test_broker); this one allows them, to prove the
    # gateway's own check: a retained frame is never stored, whoever let it through.
    broker = ProjectBroker(tmp_path / "rb", retain_available=True).start()
    app = None
    try:
        broker.add_device(A, KEY_A)
        dev = SimDevice(broker, A, KEY_A, clients).start()
        dev.mqtt.client.publish(dev.topic, dev.frame(1), qos=1, retain=True).wait_for_publish(5)
        app = GatewayApp(from_dict(gateway_config(tmp_path, broker))).start()
        app.registry.add_device(A, "alarm_button", None, key=KEY_A)
        wait_for(lambda: app.metrics.counter("fengqiao_rejections_total", {"reason": "Retained"}) == 1, 10,
                 "the gateway to drop the retained uplink it got on subscribing")
        dev.send(2)
        wait_for(lambda: 2 in dev.acked(), 10, "a normal uplink still acked")
        assert 1 not in dev.acked() and app.store.find_device_event(A, 1, 1) is None
    finally:
        if app is not None:
            app.stop()
        broker.stop()
