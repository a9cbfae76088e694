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
        self.session_present = None
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
        self.session_present = flags.session_present
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


# -- a running gateway and simulated devices ----------------------------------------------------

from gateway.cli import GatewayApp  # noqa: E402
from gateway.config import from_dict, write_config  # noqa: E402,F401  (write_config: re-exported for tests)
from protocol import frame as pframe  # noqa: E402


def gateway_config(tmp_path, broker, **sections):
    """A config dict for a gateway using `broker` (not managed by the gateway), metrics on a free port."""
    raw = {
        "gateway": {"data_dir": str(tmp_path / "gw"), "plugins": []},
        "broker": {"manage": False, "workdir": broker.workdir, "port": broker.port, "tls_port": broker.tls_port},
        "metrics": {"port": 0},
        "log": {"format": "text"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


class SimDevice:
    """A device on the broker: publishes signed uplinks, collects (and verifies) its acks."""

    def __init__(self, broker, device_id, key, clients, key_id=1):
        self.device_id, self.key, self.key_id = device_id, key, key_id
        self.k_up, self.k_down = pframe.derive_keys(key)
        self.topic = pframe.uplink_topic(device_id)
        self.mqtt = clients(broker.port, *broker.device_credentials(device_id, key))
        self.acks = {}          # acked seq -> list of stages
        self.downlinks = []
        self.mqtt.client.on_message = self._on_message
        self.lock = threading.Lock()

    def _on_message(self, client, userdata, msg):
        f = pframe.decode(self.k_down, msg.topic, bytes(msg.payload), downlink=True)
        with self.lock:
            self.downlinks.append(f)
            if f.msg_type == pframe.DOWN_ACK:
                self.acks.setdefault(f.body[0], []).append(f.body[1])

    def start(self):
        assert self.mqtt.connect()
        assert self.mqtt.subscribe(pframe.downlink_topic(self.device_id)) == [1]
        return self

    def frame(self, seq, msg_type=pframe.UP_ALARM, body=(0,), t=0):
        return pframe.encode(self.k_up, self.topic, msg_type, self.device_id, self.key_id, seq, t, list(body))

    def send(self, seq, msg_type=pframe.UP_ALARM, body=(0,), t=0, wait=True):
        info = self.mqtt.client.publish(self.topic, self.frame(seq, msg_type, body, t), qos=1)
        if wait:
            info.wait_for_publish(5)
        return info

    def send_raw(self, payload, topic=None):
        self.mqtt.client.publish(topic or self.topic, payload, qos=1).wait_for_publish(5)

    def acked(self):
        with self.lock:
            return set(self.acks)


@pytest.fixture
def running_gateway(tmp_path, project_broker):
    """start(**sections) -> a started GatewayApp on project_broker (stopped at teardown)."""
    apps = []

    def start(**sections):
        raw = gateway_config(tmp_path, project_broker)
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        app = GatewayApp(from_dict(raw))
        apps.append(app)
        try:
            return app.start()
        except Exception:
            app.stop()
            raise

    yield start
    for app in apps:
        app.stop()
