"""`fengqiao bench cases`: how fast an alarm becomes sirens (the issue's goal: dispatch within 1 s).

One run, all real parts: the project's Mosquitto, the gateway (in this process) with the cases
plugin and the sample village, and one paho client per sample device speaking protocol.frame.
Each round a household button sends an alarm; we time, on the devices' side, the press until the
button's `dispatched` ack (stage 1) and until the last siren of its joint-defence group and of the
village's check-in points arrived. The case is then closed (as `fengqiao case close` would) and
the next round starts once the sirens are off. The last line printed is one JSON object.
"""

import json
import os
import random
import statistics
import tempfile
import threading
import time

HELP = "press-to-siren latency through broker + gateway + cases plugin (goal: dispatch within 1 s)"
GOAL_S = 1.0


def add_arguments(parser):
    parser.add_argument("--rounds", type=int, default=30, help="alarms to time (default 30)")
    parser.add_argument("--json", action="store_true", help="only the JSON object")


class _Device:
    def __init__(self, broker, device_id, key):
        import paho.mqtt.client as mqtt

        from protocol import frame

        self.frame = frame
        self.device_id, self.key = device_id, key
        self.k_up, self.k_down = frame.derive_keys(key)
        self.topic = frame.uplink_topic(device_id)
        self.events = []                  # (monotonic, msg_type, body)
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-%08x" % device_id)
        self.client.username_pw_set(*broker.device_credentials(device_id, key))
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, 30)
        self.client.loop_start()
        self.client.subscribe(frame.downlink_topic(device_id), qos=1)

    def _on_message(self, client, userdata, msg):
        f = self.frame.decode(self.k_down, msg.topic, bytes(msg.payload), downlink=True)
        with self.lock:
            self.events.append((time.monotonic(), f.msg_type, list(f.body)))

    def send(self, seq, msg_type, body):
        data = self.frame.encode(self.k_up, self.topic, msg_type, self.device_id, 1, seq, int(time.time()), body)
        self.client.publish(self.topic, data, qos=1)

    def first(self, pred, after):
        with self.lock:
            for t, msg_type, body in self.events:
                if t >= after and pred(msg_type, body):
                    return t
        return None

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def run(args):
    from gateway.broker import ProjectBroker
    from gateway.cases.service import CaseService
    from gateway.cli import GatewayApp
    from gateway.clock import SystemClock
    from gateway.config import from_dict
    from gateway.village.cli import sync_registry
    from gateway.village.config import parse_village
    from gateway.village.db import import_village, open_db
    from gateway.village.testing import sample_text
    from tools.testing.procs import wait_for

    work = tempfile.mkdtemp(prefix="fengqiao-bench-cases-")
    broker = ProjectBroker(os.path.join(work, "broker")).start()
    app = devices = None
    try:
        data_dir = os.path.join(work, "gw")
        os.makedirs(data_dir, mode=0o700)
        data = parse_village(sample_text(), "sample_village.toml")
        db = open_db(os.path.join(data_dir, "gateway.db"))
        import_village(db, data, "bench")
        db.close()
        raw = {"gateway": {"data_dir": data_dir, "plugins": ["gateway.cases"]},
               "broker": {"manage": False, "workdir": broker.workdir, "port": broker.port, "tls_port": broker.tls_port},
               "metrics": {"enabled": False}, "log": {"format": "text", "level": "warning"},
               "cases": {"tick_s": 0.1}}
        app = GatewayApp(from_dict(raw), clock=SystemClock()).start()
        devices = {}
        for d in data["devices"]:
            key = os.urandom(32)
            app.registry.add_device(d["id"], d["role"], None, key=key)
            broker.add_device(d["id"], key)
            devices[d["id"]] = (key, d)
        sync_registry(app.registry, data)
        sims = {dev_id: _Device(broker, dev_id, key) for dev_id, (key, _) in devices.items()}
        plugin = app._plugins[-1]
        plugin.cases._directory.invalidate()
        wait_for(lambda: all(plugin.cases.directory().devices[d]["status"] == "active" for d in sims), 10,
                 "devices registered")
        cases = CaseService(open_db(os.path.join(data_dir, "gateway.db")), SystemClock())
        buttons = [d["id"] for _, d in devices.values() if d["role"] == "alarm_button"]
        seqs = {d: 0 for d in buttons}
        to_ack, to_sirens = [], []
        rng = random.Random(1)
        time.sleep(0.5)
        for _ in range(args.rounds):
            button = rng.choice(buttons)
            seqs[button] += 1
            directory = plugin.cases.directory()
            group = directory.group_of_household.get(directory.devices[button]["place"])
            targets = [x for x in directory.devices_in(directory.groups[group]["households"]) if x != button]
            targets += directory.devices_under("vil-dongshan", role="checkpoint")
            t0 = time.monotonic()
            sims[button].send(seqs[button], sims[button].frame.UP_ALARM, [0])
            seq = seqs[button]
            wait_for(lambda: sims[button].first(lambda m, b: m == 0x81 and b[:2] == [seq, 1], t0), 10, "stage 1 ack")
            wait_for(lambda: all(sims[x].first(lambda m, b: m == 0x82 and b[0], t0) for x in targets), 10, "sirens")
            to_ack.append(sims[button].first(lambda m, b: m == 0x81 and b[:2] == [seq, 1], t0) - t0)
            to_sirens.append(max(sims[x].first(lambda m, b: m == 0x82 and b[0], t0) for x in targets) - t0)
            (case,) = cases.list_cases(status="open")
            t1 = time.monotonic()
            cases.close(case["case_id"], "p-zhou-min", "bench")
            wait_for(lambda: all(sims[x].first(lambda m, b: m == 0x82 and not b[0], t1) for x in targets), 10,
                     "sirens off")
        cases.db.close()
        for s in sims.values():
            s.close()
    finally:
        if app is not None:
            app.stop()
        broker.stop()
    result = {"bench": "cases", "rounds": args.rounds,
              "press_to_dispatched_ack_ms": _stats(to_ack), "press_to_last_siren_ms": _stats(to_sirens),
              "goal_s": GOAL_S, "goal_met": max(to_sirens) <= GOAL_S}
    if not args.json:
        print("press -> dispatched ack: p50 %(p50).1f ms, p99 %(p99).1f ms, max %(max).1f ms"
              % result["press_to_dispatched_ack_ms"])
        print("press -> last siren (group + patrol points): p50 %(p50).1f ms, p99 %(p99).1f ms, max %(max).1f ms"
              % result["press_to_last_siren_ms"])
    print(json.dumps(result, sort_keys=True))
    return 0


def _stats(values_s):
    ms = sorted(v * 1000 for v in values_s)
    return {"p50": round(statistics.median(ms), 1), "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
            "max": round(ms[-1], 1)}
