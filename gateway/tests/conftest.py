"""Fixtures of the gateway core tests: a project-configured Mosquitto and small MQTT clients."""

import os
import queue
import threading

import paho.mqtt.client as mqtt
import pytest

from gateway.broker import ProjectBroker
from tools.testing.procs import wait_for


@pytest.fixture
def project_broker(tmp_path):
    broker = ProjectBroker(tmp_path / "broker").start()
    yield broker
    broker.stop()


class TestClient:
    """A paho 2.x client connected synchronously; received messages go to `.messages` (a Queue)."""

    __test__ = False

    def __init__(self, port, username, password, client_id=None, tls_ca=None, clean=True):
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason = None
        self.subacks = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "t-%s" % os.urandom(4).hex(),
                                  clean_session=clean)
        self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put([rc.value for rc in rcs])
        self.port = port

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        if not reason_code.is_failure:
            self.connected.set()
        else:
            self.disconnected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def connect(self, timeout_s=10):
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        wait_for(lambda: self.connected.is_set() or self.disconnected.is_set(), timeout_s, "CONNACK")
        return self.connected.is_set()

    def subscribe(self, topic, timeout_s=5):
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=timeout_s)

    def publish(self, topic, payload, timeout_s=5):
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)
        return info

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients():
    made = []

    def make(*args, **kwargs):
        c = TestClient(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
