"""A whole township for the console's tests, screenshots and bench (never imported by the gateway).

    t = Township(workdir).start()      # county Mosquitto + recorder, project Mosquitto, the gateway
                                       # (upstream, cases, console), the sample village, 3 accounts
    t.url; t.console; t.app
    button = t.sim_button(0x102)       # a CPython device on the broker speaking protocol.frame
    button.alarm()                     # -> stored, a case opens, the board shows it
    t.stop()

Accounts made: officer `zhou` (person p-zhou-min, the township duty officer), viewer `guest`,
admin `admin`, all with the password PASSWORD.
"""

import os
import threading
import time

import paho.mqtt.client as mqtt

from protocol import frame as pframe

PASSWORD = "duty-demo-2026"
COUNTY_TOPIC = "fq/v1/county/qiaotou"
USERS = (("zhou", "officer", "p-zhou-min"), ("guest", "viewer", None), ("admin", "admin", None))
SAMPLE_BUTTONS = (0x101, 0x102, 0x103, 0x104, 0x201, 0x202, 0x203)
SAMPLE_CHECKPOINTS = (0x301, 0x302, 0x303, 0x304)


class SimButton:
    """A registered device publishing signed uplinks over plain MQTT (paho), acks collected."""

    def __init__(self, broker, device_id, key):
        self.device_id, self.key = device_id, key
        self.k_up, self.k_down = pframe.derive_keys(key)
        self.topic = pframe.uplink_topic(device_id)
        self.seq = 0
        self.acks = {}
        self.ack_times = {}     # acked seq -> {stage: monotonic time the ack arrived}
        self.sirens = []        # (monotonic time, siren body) of each siren downlink
        self.lock = threading.Lock()
        self.connected = threading.Event()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sim-%08x" % device_id)
        c.username_pw_set(*broker.device_credentials(device_id, key))
        c.on_connect = lambda *a: (c.subscribe(pframe.downlink_topic(device_id), qos=1), self.connected.set())
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port, keepalive=30)
        c.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("sim device %08x did not connect" % device_id)

    def _on_message(self, client, userdata, msg):
        f = pframe.decode(self.k_down, msg.topic, bytes(msg.payload), downlink=True)
        now = time.monotonic()
        with self.lock:
            if f.msg_type == pframe.DOWN_ACK:
                self.acks.setdefault(f.body[0], []).append(f.body[1])
                self.ack_times.setdefault(f.body[0], {}).setdefault(f.body[1], now)
            elif f.msg_type == pframe.DOWN_SIREN:
                self.sirens.append((now, list(f.body)))

    def send(self, msg_type, body):
        self.seq += 1
        data = pframe.encode(self.k_up, self.topic, msg_type, self.device_id, 1, self.seq, int(time.time()), list(body))
        self.client.publish(self.topic, data, qos=1).wait_for_publish(5)
        return self.seq

    def alarm(self, kind=0):
        return self.send(pframe.UP_ALARM, (kind,))

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


class Township:
    def __init__(self, work, county=True, console_port=0, devices=SAMPLE_BUTTONS + SAMPLE_CHECKPOINTS,
                 place_names=None, log_level="warning", pipeline=None, plugins=("gateway.cases", "gateway.console"),
                 sections=None):
        self.work = str(work)
        self.with_county = county
        self.console_port = console_port
        self.devices = devices
        self.place_names = place_names or {}
        self.log_level = log_level
        self.pipeline = pipeline or {}
        self.plugins = list(plugins)
        self.sections = sections or {}   # more config sections, e.g. {"quarantine": {...}}
        self.county = self.recorder = self.broker = self.app = None
        self.keys = {}
        self.sims = []

    def start(self):
        from gateway.broker import ProjectBroker
        from gateway.cli import GatewayApp
        from gateway.config import from_dict
        from gateway.console.accounts import Accounts
        from gateway.county import CountyRecorder
        from gateway.village.cli import sync_registry
        from gateway.village.config import parse_village
        from gateway.village.db import import_village, open_db
        from gateway.village.testing import sample_text
        from tools.testing.mosquitto import MosquittoProcess

        try:
            plugins = list(self.plugins)
            raw = {"gateway": {"data_dir": os.path.join(self.work, "gw"), "plugins": plugins},
                   "metrics": {"port": 0}, "log": {"level": self.log_level, "format": "text"},
                   "cases": {"tick_s": 0.2}, "console": {"port": self.console_port},
                   "supervision": {"check_interval_s": 1.0}, "pipeline": dict(self.pipeline)}
            for name, values in self.sections.items():
                raw.setdefault(name, {}).update(values)
            if self.with_county:
                self.county = MosquittoProcess(os.path.join(self.work, "county")).start()
                self.recorder = CountyRecorder("127.0.0.1", self.county.port, COUNTY_TOPIC,
                                               os.path.join(self.work, "county.jsonl")).start()
                plugins.insert(0, "gateway.upstream")
                raw["upstream"] = {"gateway_id": "qiaotou", "host": "127.0.0.1", "port": self.county.port,
                                   "topic": COUNTY_TOPIC}
            self.broker = ProjectBroker(os.path.join(self.work, "broker")).start()
            raw["broker"] = {"manage": False, "workdir": self.broker.workdir, "port": self.broker.port,
                             "tls_port": self.broker.tls_port}
            self.app = GatewayApp(from_dict(raw, os.path.join(self.work, "gateway.toml")))
            os.makedirs(self.app.data_dir, mode=0o700, exist_ok=True)
            db_path = os.path.join(self.app.data_dir, "gateway.db")
            text = sample_text()
            for old, new in self.place_names.items():
                text = text.replace('name = "%s"' % old, 'name = "%s"' % new)
            data = parse_village(text, "sample_village.toml")
            db = open_db(db_path)
            import_village(db, data, "sample")
            accounts = Accounts(db, self.app.clock)
            for name, role, person in USERS:
                accounts.add_user(name, PASSWORD, role, person)
            db.close()
            self.app.start()
            for dev in self.devices:
                self.register(dev, "checkpoint" if dev in SAMPLE_CHECKPOINTS else "alarm_button")
            sync_registry(self.app.registry, data)
            self.db_path = db_path
        except BaseException:
            self.stop()
            raise
        return self

    def register(self, device_id, role="alarm_button", place=None):
        """A new device (place: a place id of the village file, or None), its key on the broker."""
        key = os.urandom(32)
        self.app.registry.add_device(device_id, role, place, key=key)
        self.broker.add_device(device_id, key)
        self.keys[device_id] = key
        return key

    def sim_button(self, device_id):
        sim = SimButton(self.broker, device_id, self.keys[device_id])
        self.sims.append(sim)
        return sim

    @property
    def console(self):
        return self.app.console

    @property
    def url(self):
        return self.app.console.url.rstrip("/")

    @property
    def cases(self):
        return self.app.console.cases

    def stop(self):
        for s in self.sims:
            s.stop()
        if self.app is not None:
            self.app.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.county is not None:
            self.county.stop()
