"""`fengqiao simulate`: a village of host boards (alarm buttons and check-in points) on a broker.

    fengqiao simulate --alarms 3 --checkins 2 [--broker-dir DIR] [--seconds 60] [--ack]

Starts the project's Mosquitto (gateway.broker.ProjectBroker, TLS + per-device passwords + ACL)
unless --host/--port/--ca name a running one, provisions N host boards of each role into a work
directory, starts them (tools.hostboard.HostBoard, the real firmware image), and prints every
frame they send, decoded. With --ack (the default until the gateway runs), a small scripted
gateway acknowledges each frame (stage 0) so the boards' LEDs and beeps show "stored"; `make demo`
uses `Village` from here and shows the real gateway instead.

Also used by the firmware tests: `ScriptedGateway` (a paho-mqtt 2.x peer that decodes uplinks with
protocol.frame and sends acks, sirens and config downlinks) and `led_state` (what an LED shows).
"""

import json
import os
import shutil
import tempfile
import threading
import time

from tools.errors import CliError

HELP = "run host boards of each role against a broker and print the frames they send"

# LED colours of drivers/led.py PATTERNS -> the state names the firmware uses.
_COLOURS = {(1, 1, 0): "sending", (0, 0, 1): "stored", (0, 1, 0): "coming", (1, 0, 0): "failing"}
# What each state tells the person at the button (README, "The alarm button").
LED_MEANING = {"sending": "amber fast blink = sending", "stored": "blue slow blink = stored at the township",
               "coming": "steady green = someone is coming", "failing": "red double flash = not getting through",
               "idle": "off"}


def led_state(hb, window_s=2.2):
    """What the LED of host board `hb` has shown over the last window: "sending" (amber fast
    blink), "stored" (blue slow blink), "coming" (steady green), "failing" (red double flash),
    "idle" (off, no change), or "mixed:<colours>" while it changes state."""
    reply = hb.request("led", since=0)
    now = reply["now_ms"]
    recent = [(t, tuple(v)) for t, v in reply["history"] if now - t <= window_s * 1000]
    current = tuple(reply["rgb"])
    colours = set(v for _t, v in recent if any(v))
    if any(current):
        colours.add(current)
    if not colours:
        return "idle"
    if len(colours) == 1:
        return _COLOURS.get(colours.pop(), "other")
    return "mixed:" + ",".join(sorted(_COLOURS.get(c, str(c)) for c in colours))


class ScriptedGateway:
    """A CPython MQTT peer standing in for the gateway: decodes uplinks, optionally acks them."""

    def __init__(self, host, port, credentials, auto_ack=True, on_frame=None):
        import paho.mqtt.client as mqtt

        self.keys = {}  # device_id -> (k_up, k_down, key_id)
        self.frames = []  # (device_id, Frame) in arrival order
        self.errors = []
        self.auto_ack = auto_ack
        self.on_frame = on_frame
        self.down_seq = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        # A persistent session, as the real gateway has: what devices publish while this peer is
        # reconnecting (after a broker restart) is queued by the broker, not lost.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scripted-gateway-%d-%d" % (
            os.getpid(), id(self) & 0xFFFF), clean_session=False)
        self.client.username_pw_set(*credentials)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.2, 2)
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._connected.wait(20):
            self.client.loop_stop()
            raise RuntimeError("scripted gateway got no CONNACK from %s:%d in 20 s (is that port really "
                               "our broker? free_port() races with other processes)" % (host, port))

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe("fq/v1/+/up", qos=1)
        self._connected.set()

    def add_device(self, device_id, key, key_id=1):
        from protocol import frame

        k_up, k_down = frame.derive_keys(key)
        self.keys[device_id] = (k_up, k_down, key_id)

    def _on_message(self, client, userdata, msg):
        from protocol import frame

        try:
            dev = frame.parse_device_id(msg.topic.split("/")[2])
            k_up = self.keys[dev][0]
            f = frame.decode(k_up, msg.topic, msg.payload, downlink=False)
        except (ValueError, KeyError, IndexError) as exc:
            self.errors.append("%s: %r" % (msg.topic, exc))
            return
        with self._lock:
            self.frames.append((dev, f))
        if self.on_frame:
            self.on_frame(dev, f)
        if self.auto_ack:
            self.ack(dev, f.seq, 0)

    def send(self, device_id, msg_type, body):
        from protocol import frame

        _k_up, k_down, key_id = self.keys[device_id]
        with self._lock:
            seq = self.down_seq.get(device_id, 0) + 1
            self.down_seq[device_id] = seq
        topic = frame.downlink_topic(device_id)
        data = frame.encode(k_down, topic, msg_type, device_id, key_id, seq, int(time.time()), body)
        self.client.publish(topic, data, qos=1)

    def ack(self, device_id, seq, stage):
        from protocol import frame

        self.send(device_id, frame.DOWN_ACK, [seq, stage, int(time.time())])

    def of(self, device_id, name=None):
        with self._lock:
            return [f for d, f in self.frames if d == device_id and (name is None or f.name == name)]

    def wait_frame(self, device_id, name, timeout_s=10.0, count=1):
        from tools.testing.procs import wait_for

        wait_for(lambda: len(self.of(device_id, name)) >= count, timeout_s,
                 "%d %s frame(s) from %08x (got %r)" % (count, name, device_id,
                                                       [f.name for f in self.of(device_id)]))
        return self.of(device_id, name)[count - 1]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class Village:
    """N host boards of each role, provisioned against one broker (used by `make demo` too)."""

    def __init__(self, workdir, broker_host, broker_port, ca_pem=None, tls=False, alarms=3, checkins=2,
                 heap=None, first_id=0x100, settings=None, args=()):
        from tools.hostboard import HostBoard, provision_dir

        self.workdir = workdir
        self.boards = []  # (device_id, role, key, HostBoard)
        n = 0
        for role, count in (("alarm", alarms), ("checkin", checkins)):
            for i in range(count):
                dev = first_id + n
                n += 1
                key = os.urandom(32)
                flash = os.path.join(workdir, "%s-%08x" % (role, dev))
                cfg = {"device_id": dev, "key": key, "role": role, "broker_host": broker_host,
                       "broker_port": broker_port, "tls": tls, "ca_pem": ca_pem,
                       "settings": dict(settings or {})}
                if role == "checkin":
                    cfg["checkpoint_id"] = 1 + i
                provision_dir(flash, cfg)
                hb = HostBoard(flash, heap=heap, hwid="sim-%08x" % dev, args=list(args))
                self.boards.append((dev, role, key, hb))

    def start(self):
        for _dev, _role, _key, hb in self.boards:
            hb.start()
        return self

    def stop(self):
        for _dev, _role, _key, hb in self.boards:
            hb.stop()


def add_arguments(parser):
    parser.add_argument("--alarms", type=int, default=3, help="alarm-button boards (default 3)")
    parser.add_argument("--checkins", type=int, default=2, help="check-in point boards (default 2)")
    parser.add_argument("--seconds", type=float, default=30.0, help="run this long, pressing buttons and tapping cards")
    parser.add_argument("--workdir", help="where flash dirs and the broker live (default: a temp dir)")
    parser.add_argument("--heap", default=None, help="MicroPython heap per board (default 64k with code in ROMFS, else 256k)")
    parser.add_argument("--no-ack", action="store_true", help="do not run the scripted gateway's acks")


def run(args):
    from gateway.broker import ProjectBroker

    own = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="fq-simulate-")
    broker = ProjectBroker(os.path.join(workdir, "broker"))
    try:
        broker.start()
    except Exception as exc:  # noqa: BLE001 - report any start failure as a user-facing error
        raise CliError("could not start the broker: %s" % exc) from exc
    with open(broker.ca_path) as f:
        ca_pem = f.read()

    def show(dev, f):
        print(json.dumps({"device": "%08x" % dev, "type": f.name, "seq": f.seq, "time": f.device_time,
                          "body": [b.hex() if isinstance(b, bytes) else b for b in f.body]}), flush=True)

    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=not args.no_ack,
                         on_frame=show)
    village = Village(os.path.join(workdir, "boards"), "localhost", broker.tls_port, ca_pem, True,
                      args.alarms, args.checkins, heap=args.heap)
    for dev, _role, key, _hb in village.boards:
        broker.add_device(dev, key, reload=False)
        gw.add_device(dev, key)
    broker.reload()
    try:
        village.start()
        t_end = time.monotonic() + args.seconds
        k = 0
        while time.monotonic() < t_end:
            dev, role, _key, hb = village.boards[k % len(village.boards)]
            if role == "alarm":
                hb.hold(1200)
            else:
                hb.card(bytes([4, k & 255, 2, 3]))
                time.sleep(0.4)
                hb.remove_card()
            k += 1
            time.sleep(max(0.5, args.seconds / 10))
        time.sleep(2)
    finally:
        village.stop()
        gw.close()
        broker.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"boards": len(village.boards), "frames": len(gw.frames), "errors": len(gw.errors)}))
    return 0


# --- a reconnect storm of raw-MQTT devices (`fengqiao bench storm`) --------------------------------

def storm_frames(device_id, key, count, now_s):
    """`count` signed heartbeats seq 1..count of one device: what its outbox holds after an outage."""
    from protocol import frame as pframe

    k_up, _ = pframe.derive_keys(key)
    topic = pframe.uplink_topic(device_id)
    return [(seq, pframe.encode(k_up, topic, pframe.UP_HEARTBEAT, device_id, 1, seq, now_s - count + seq,
                                [3700, seq, count - seq, None, 10203])) for seq in range(1, count + 1)]


def storm_run(devices, host, port, window_s, start_at, seed=1, deadline_s=1800.0):
    """Each (device_id, key, frames) connects at a random instant of [start_at, start_at + window_s]
    (wall clock) as a new raw MQTT connection (gateway.bench.RawConn), then sends its frames one in
    flight, the next when its ack arrives, as the firmware's outbox does. Returns the figures."""
    import random
    import selectors

    from gateway.bench import RawConn, _acked_seq, _pump

    rng = random.Random(seed)
    plan = sorted(((rng.uniform(0, window_s), d, k, fr) for d, k, fr in devices), key=lambda p: p[0])
    sel = selectors.DefaultSelector()
    waiting = []
    st = {"acked": 0, "done": 0, "unexpected": 0, "t_last_ack": None, "per_s": {}}

    def on_down(c, payload):
        seq = _acked_seq(payload)
        if c.inflight is None or seq != c.inflight[0]:
            st["unexpected"] += 1
            return
        now = time.time()
        st["acked"] += 1
        st["t_last_ack"] = now
        sec = int(now - start_at)
        st["per_s"][sec] = st["per_s"].get(sec, 0) + 1
        c.inflight = None
        if c.next_frame < len(c.frames):
            c.send_next(time.monotonic())
        else:
            st["done"] += 1

    t_connects, n_devices = [], len(plan)
    while time.time() < start_at:
        time.sleep(min(0.05, max(0.0, start_at - time.time())))
    while st["done"] < n_devices:
        rel = time.time() - start_at
        if rel > deadline_s:
            break
        while plan and plan[0][0] <= rel:
            _at, d, k, fr = plan.pop(0)
            c = RawConn(d, k, host, port)
            c.frames, c.seq = fr, len(fr)
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, c)
            waiting.append(c)
            t_connects.append(time.time())
        if waiting:
            ready = [c for c in waiting if c.connacked and c.subacked]
            for c in ready:
                c.send_next(time.monotonic())
            if ready:
                waiting = [c for c in waiting if c.inflight is None]
        _pump(sel, 0.002 if plan or waiting else 0.05, on_down)
    for key in list(sel.get_map().values()):
        key.data.sock.close()
    return {"devices": len(t_connects), "acked": st["acked"], "done": st["done"], "unexpected": st["unexpected"],
            "t_first_connect": min(t_connects) if t_connects else None,
            "t_last_connect": max(t_connects) if t_connects else None,
            "t_last_ack": st["t_last_ack"], "per_s": st["per_s"]}


def storm_main(conn, devices, host, port, per_device, window_s, seed):
    """A storm simulator process: builds every device's backlog, says ("ready", n), waits for
    ("go", start_at), runs storm_run and sends ("result", figures) (or ("error", text))."""
    try:
        now_s = int(time.time())
        prepared = [(d, k, storm_frames(d, k, per_device, now_s)) for d, k in devices]
        conn.send(("ready", len(prepared)))
        cmd = conn.recv()
        if cmd[0] != "go":
            return
        conn.send(("result", storm_run(prepared, host, port, window_s, cmd[1], seed)))
    except (OSError, ConnectionError, PermissionError, ValueError) as exc:
        conn.send(("error", "%s: %s" % (type(exc).__name__, exc)))
