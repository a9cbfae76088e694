"""`fengqiao demo` (what `make demo` runs): a whole village on this machine, and its story.

It starts, all for real and all on loopback:
  - the county's broker and a county recorder (what the county platform receives),
  - the township gateway (its own Mosquitto with TLS, per-device passwords and ACL; verify ->
    store -> ack; cases and patrols; signed forwarding to the county),
  - the sample village (gateway/sample_village.toml): seven households with alarm buttons in two
    joint-defence groups and four patrol check-in points, each a host board running the real
    firmware on the MicroPython VM with a 64 KB heap,
then plays a story a newcomer can follow — an 81-year-old neighbour holds her button; the frame,
its verification, the store, the ack and the upstream envelope; her neighbours' sirens; the
escalation when nobody answers; the duty officer's acknowledgement turning her button green; a
patrol round that skips a checkpoint — and then shows the duty view until Ctrl-C.

    fengqiao demo [--workdir var/demo] [--no-story] [--exit-after-story] [--boards N]

The demo shortens deadlines (village 20 s, township 60 s) and the patrol route (minutes instead of
tens of minutes) so the story fits in about three minutes; everything else is the shipped config.
"""

import datetime
import os
import shutil
import signal
import sys
import threading
import time

from tools.errors import CliError

HELP = "run a simulated village against the real gateway and play the alarm and patrol story"

_STAGES = {0: "stored", 1: "dispatched", 2: "someone is coming", 3: "closed", 4: "cancelled"}
_LED_MEANING = {"sending": "amber fast blink = sending", "stored": "blue slow blink = stored at the township",
                "coming": "steady green = someone is coming", "failing": "red double flash = not getting through",
                "idle": "off"}
# Host boards of the sample village: device id -> (firmware role, checkpoint id or None)
_ROLE = {"alarm_button": "alarm", "checkpoint": "checkin"}


class Narrator:
    """Prints numbered, timestamped lines so a newcomer can follow the data path."""

    def __init__(self, out=sys.stdout):
        self.t0 = time.monotonic()
        self.out = out
        self.lock = threading.Lock()

    def say(self, text, indent=0):
        with self.lock:
            self.out.write("[%6.1fs] %s%s\n" % (time.monotonic() - self.t0, "    " * indent, text))
            self.out.flush()

    def title(self, text):
        with self.lock:
            self.out.write("\n==== %s ====\n" % text)
            self.out.flush()


def _demo_village_text(sample_text, now_local):
    """The sample village with demo-sized deadlines and a patrol schedule starting now."""
    text = sample_text
    for old, new in (("village_deadline_s = 300", "village_deadline_s = 20"),
                     ("township_deadline_s = 1200", "township_deadline_s = 60"),
                     ("village_deadline_s = 180", "village_deadline_s = 20"),
                     ("township_deadline_s = 600", "township_deadline_s = 60"),
                     ("expected_min = [0, 10, 20, 30]", "expected_min = [0, 1, 1, 2]"),
                     ('start = "21:00"', 'start = "%s"' % now_local.strftime("%H:%M")),
                     ("grace_min = 10                       # each checkpoint", "grace_min = 0   # each checkpoint")):
        if old not in text:
            raise CliError("the sample village changed; the demo cannot adapt %r" % old)
        text = text.replace(old, new, 1)
    return text


class Demo:
    def __init__(self, workdir, narrator=None):
        self.workdir = os.path.abspath(workdir)
        self.n = narrator or Narrator()
        self.app = self.county = self.recorder = None
        self.boards = {}  # device id -> HostBoard
        self.places = {}  # device id -> place id
        self._seen_envelopes = 0

    # -- set-up ---------------------------------------------------------------------------------
    def start(self, max_boards=None, heap=None):
        from gateway.cli import GatewayApp, sync_broker_credentials
        from gateway.config import from_dict
        from gateway.county import CountyRecorder
        from gateway.village.cli import sync_registry
        from gateway.village.config import parse_village
        from gateway.village.db import import_village, open_db
        from tools.testing.mosquitto import MosquittoProcess
        from tools.testing.procs import free_port

        if os.path.exists(self.workdir):
            shutil.rmtree(self.workdir)
        os.makedirs(self.workdir)
        n = self.n
        n.title("Setting up the village (all processes are real, all on 127.0.0.1)")

        self.county = MosquittoProcess(os.path.join(self.workdir, "county-broker")).start()
        county_topic = "fq/v1/county/qiaotou"
        self.recorder = CountyRecorder("127.0.0.1", self.county.port, county_topic,
                                       os.path.join(self.workdir, "county-envelopes.jsonl"))
        self.recorder.start()
        n.say("county broker on port %d; the county recorder keeps every envelope it receives" % self.county.port)

        raw = {
            "gateway": {"data_dir": os.path.join(self.workdir, "gateway")},
            "broker": {"port": free_port(), "tls_port": free_port(), "bind": "127.0.0.1"},
            "metrics": {"port": free_port()},
            "log": {"level": "warning", "format": "text"},
            "upstream": {"gateway_id": "qiaotou", "host": "127.0.0.1", "port": self.county.port,
                         "topic": county_topic},
            "cases": {"tick_s": 0.5},
        }
        cfg = from_dict(raw, os.path.join(self.workdir, "gateway.toml"))
        self.app = GatewayApp(cfg)

        sample = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway",
                              "sample_village.toml")
        with open(sample, encoding="utf-8") as f:
            sample_text = f.read()
        data = parse_village(sample_text, "sample_village.toml")
        offset = _utc_offset(data)
        village_text = _demo_village_text(sample_text, datetime.datetime.now(offset))
        data = parse_village(village_text, "demo_village.toml")
        with open(os.path.join(self.workdir, "demo_village.toml"), "w", encoding="utf-8") as f:
            f.write(village_text)

        registry = self.app.open_registry()
        keys = {}
        devices = data["devices"][:max_boards] if max_boards else data["devices"]
        try:
            for p in sorted(data["places"], key=lambda p: _ORDER.index(p["kind"])):
                registry.add_place(p["id"], p["kind"], p["name"] or p["id"], p["parent"])
            for d in devices:
                keys[d["id"]] = registry.add_device(d["id"], d["role"], d["place"], heartbeat_interval_s=30)
                self.places[d["id"]] = d["place"]
            sync_registry(registry, data)
        finally:
            registry.close()
        db = open_db(cfg.path_of(cfg["gateway"]["database"]))
        try:
            import_village(db, data, "demo_village.toml", time.time())
        finally:
            db.close()
        n.say("imported the sample village: %d places, %d joint-defence groups, %d people, %d devices"
              % (len(data["places"]), len(data["groups"]), len(data["people"]), len(devices)))

        self.app.start()
        broker = self.app.broker
        sync_broker_credentials(self.app.registry, broker)
        n.say("gateway running: Mosquitto TLS on port %d (CA %s), metrics http://127.0.0.1:%d/metrics"
              % (broker.tls_port, os.path.relpath(broker.ca_path), self.app.metrics_port))
        self.app.store.subscribe(self._on_stored)

        with open(broker.ca_path) as f:
            ca_pem = f.read()
        checkpoint_of = {p["id"]: p.get("checkpoint") for p in data["places"]}
        from tools.hostboard import HostBoard, provision_dir

        boards_dir = os.path.join(self.workdir, "boards")
        for d in devices:
            flash = os.path.join(boards_dir, "%08x" % d["id"])
            provision_dir(flash, {
                "device_id": d["id"], "key": keys[d["id"]], "role": _ROLE[d["role"]],
                "broker_host": "127.0.0.1", "broker_port": broker.tls_port, "tls": True, "ca_pem": ca_pem,
                "checkpoint_id": checkpoint_of.get(d["place"]),
                "settings": {"heartbeat_interval_s": 30, "checkin_repeat_s": 60},
            })
            hb = HostBoard(flash, hwid="demo-%08x" % d["id"], heap=heap)
            hb.start()
            self.boards[d["id"]] = hb
        n.say("%d host boards started (firmware on the MicroPython VM, %s heap each); waiting for them to "
              "connect" % (len(self.boards), hb.heap))
        _wait(lambda: self._connected_count() >= len(self.boards), 60, "all boards to connect to the gateway's broker")
        n.say("all %d boards connected and sent their boot frame" % len(self.boards))

    def _connected_count(self):
        return len(self.app.store.last_device_events())

    # -- what the gateway stores, as it happens --------------------------------------------------
    def _on_stored(self, events):
        for ev in events:
            if ev.kind in ("heartbeat", "boot") and ev.source == "device":
                continue
            who = ("device %08x at %s" % (ev.device_id, self.places.get(ev.device_id, "?"))
                   if ev.device_id is not None else ev.actor or "gateway")
            detail = ""
            if ev.source == "gateway" and isinstance(ev.body, dict):
                detail = " " + ", ".join("%s=%s" % (k, _show_value(v)) for k, v in sorted(ev.body.items())
                                         if k not in ("case_id", "at") and not isinstance(v, (dict, list)))[:120]
            self.n.say("gateway stored event #%d %-26s %s%s" % (ev.event_id, ev.kind, who, detail), indent=1)

    # -- the story ------------------------------------------------------------------------------
    def story(self):
        from protocol import frame as fr

        n = self.n
        by_place = {p: d for d, p in self.places.items()}
        granny = self.boards.get(by_place.get("hh-e02"))
        if granny is None:
            raise CliError("the story needs the alarm button at hh-e02 (use more --boards)")

        n.title("1. Li Xiuying (81, lives alone, hh-e02) holds her alarm button for 1.2 s")
        head = self.app.store.head()[0]
        granny.hold(1200)
        ev = _wait(lambda: _first(self.app.store.events_after(head), "alarm"), 10, "the alarm to be stored")
        f = fr.peek(ev.frame)
        n.say("frame on %s (%d bytes): %s" % (ev.topic, len(ev.frame), ev.frame.hex()))
        n.say("version %d, type alarm, device %08x, key %d, seq %d, device time %s, body %r, MAC %s"
              % (f.version, f.device_id, f.key_id, f.seq, ev.device_time or "unknown", ev.body, ev.frame[-16:].hex()),
              indent=1)
        n.say("gateway verified: device known and active, topic matches, MAC ok, seq %d new -> stored as event "
              "#%d, chain hash %s" % (ev.seq, ev.event_id, ev.hash.hex()[:16]), indent=1)
        state = _wait(lambda: _led(granny) in ("stored", "coming") and _led(granny), 10, "her LED to show stored")
        n.say("ack (stage 0, stored) reached the button: LED %s" % _LED_MEANING.get(state, state), indent=1)
        env = _wait(lambda: self._envelope_for(ev.event_id), 15, "the signed envelope at the county")
        from gateway import envelope

        n.say("county received envelope %s:" % env["id"], indent=1)
        for line in envelope.render(env).splitlines():
            n.say(line, indent=2)

        n.title("2. One household alarms, every household helps: sirens on the east-lane neighbours")
        group = [d for d, p in self.places.items() if p in ("hh-e01", "hh-e03", "hh-e04") and d in self.boards]
        others = [d for d, p in self.places.items() if p.startswith("hh-w") and d in self.boards]
        for d in group:
            _wait(lambda: self.boards[d].buzzer() or any(on for _t, on in self.boards[d].buzzer_history()), 10,
                  "the siren at %s" % self.places[d])
            n.say("siren sounding at %s (device %08x)" % (self.places[d], d), indent=1)
        quiet = [self.places[d] for d in others if not any(on for _t, on in self.boards[d].buzzer_history())]
        n.say("west-lane households stay quiet: %s" % ", ".join(quiet), indent=1)

        n.title("3. Nobody in the village answers within 20 s: escalation to the township duty officer")
        _wait(lambda: _first(self.app.store.events_after(ev.event_id), "case_escalated"), 40,
              "the escalation event")
        n.say("the case was escalated (stored and forwarded upstream like every event)", indent=1)

        n.title("4. Duty officer Zhou Min acknowledges the case; the button turns green")
        case = self._case_for(ev)
        self.plugin_cases().acknowledge(case["case_id"], "p-zhou-min", "on the phone with her neighbour, ambulance called")
        _wait(lambda: _led(granny) == "coming", 15, "her LED to show someone is coming")
        n.say("her LED: %s" % _LED_MEANING["coming"], indent=1)
        self.plugin_cases().close(case["case_id"], "p-zhou-min", "fell in the kitchen; taken to the township clinic")
        n.say("case %s closed with a note; its steps:" % case["case_id"], indent=1)
        for step in self.plugin_cases().get(case["case_id"])["steps"]:
            n.say("%s  %-14s by %s" % (time.strftime("%H:%M:%S", time.localtime(step["at"])), step["step"],
                                       step["actor"]), indent=2)

        n.title("5. The night patrol taps cards at the gate and the school, then skips the old well")
        cards = self._patrol_card()
        gate, school, temple = (self.boards.get(by_place.get(p)) for p in ("cp-gate", "cp-school", "cp-temple"))
        for hb, name in ((gate, "village gate"), (school, "primary school")):
            if hb is None:
                continue
            hb.card(cards)
            time.sleep(0.6)
            hb.remove_card()
            n.say("card %s tapped at the %s" % (cards, name), indent=1)
            time.sleep(15)
        n.say("waiting for the round's deadline at the old well (about a minute)...", indent=1)
        head = self.app.store.head()[0]
        _wait(lambda: _first(self.app.store.events_after(head), "patrol_missed_checkpoint"), 150,
              "the missed-checkpoint event while the round runs")
        if temple is not None:
            temple.card(cards)
            time.sleep(0.6)
            temple.remove_card()
            n.say("card tapped at the ancestral hall; the round goes on", indent=1)

        n.title("6. The county checks what it received with only the gateway's public key")
        self._verify_county()

    def plugin_cases(self):
        for p in self.app._plugins:
            if p is not None and hasattr(p, "cases"):
                return p.cases
        raise CliError("the cases plugin is not running")

    def _case_for(self, ev):
        cases = self.plugin_cases().list_cases()
        for c in cases:
            if c["device_id"] == ev.device_id:
                return c
        raise CliError("no case was opened for the alarm")

    def _patrol_card(self):
        return "04a1b2c3"

    def _envelope_for(self, event_id):
        from gateway import envelope

        with open(self.recorder.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    env = envelope.loads(line)
                    if env["event_id"] == event_id:
                        return env
        return None

    def _verify_county(self):
        from gateway import envelope
        from gateway.keys import SigningKey, load_public_key

        key_path = self.app.config.path_of("upstream_signing_key.pem")
        public = load_public_key(SigningKey.load_or_create(key_path).public_pem())
        with open(self.recorder.path, encoding="utf-8") as f:
            report = envelope.verify_envelopes(f.readlines(), public, first_event=1)
        if report.problems:
            self.n.say("verify found %d problem(s): %s" % (len(report.problems), report.problems[:3]), indent=1)
        else:
            self.n.say("fengqiao verify: %s" % report.summary(), indent=1)
        self.n.say("(the same check from a shell: fengqiao verify %s --pubkey <gateway public key>)"
                   % os.path.relpath(self.recorder.path), indent=1)

    # -- the duty view ----------------------------------------------------------------------------
    def duty_view(self, stop, every_s=60.0):
        """A summary whenever something changed (checked every 5 s), and at least every minute."""
        last, last_at = None, 0.0
        while not stop.wait(5.0):
            cases = self.plugin_cases().list_cases()
            open_cases = [c for c in cases if c["status"] not in ("closed", "cancelled")]
            now_state = (self.app.store.count(), len(open_cases), self.recorder.count())
            if now_state == last and time.monotonic() - last_at < every_s:
                continue
            last, last_at = now_state, time.monotonic()
            self.n.title("duty view  %s" % time.strftime("%H:%M:%S"))
            self.n.say("boards %d | events stored %d | open cases %d | envelopes at county %d"
                       % (len(self.boards), self.app.store.count(), len(open_cases), self.recorder.count()))
            for c in open_cases[:10]:
                self.n.say("case %s at %s: %s, escalated to %s" % (c["case_id"], c["place_id"], c["status"],
                                                                   c["escalated_to"]), 1)

    def stop(self):
        for hb in self.boards.values():
            try:
                hb.stop()
            except OSError:
                pass
        if self.app:
            self.app.stop()
        if self.recorder:
            self.recorder.stop()
        if self.county:
            self.county.stop()


_ORDER = ("county", "township", "village", "grid", "household", "checkpoint")


def _utc_offset(data):
    off = data.get("utc_offset") or "+08:00"
    if isinstance(off, datetime.timedelta):
        return datetime.timezone(off)
    sign = -1 if str(off).startswith("-") else 1
    hh, mm = str(off).lstrip("+-").split(":")
    return datetime.timezone(sign * datetime.timedelta(hours=int(hh), minutes=int(mm)))


def _show_value(v):
    """Unix times as local clock times; everything else as it is."""
    if isinstance(v, float) and v > 1e9:
        return time.strftime("%H:%M:%S", time.localtime(v))
    return v


def _first(events, kind):
    for ev in events:
        if ev.kind == kind:
            return ev
    return None


def _led(hb):
    from tools.simulate import led_state

    return led_state(hb)


def _wait(pred, timeout_s, what):
    from tools.testing.procs import WaitTimeout, wait_for

    try:
        return wait_for(pred, timeout_s, what, interval_s=0.1)
    except WaitTimeout as exc:
        raise CliError(str(exc)) from exc


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def add_arguments(parser):
    parser.add_argument("--workdir", default="var/demo", help="where the demo keeps its files (wiped at start)")
    parser.add_argument("--no-story", action="store_true", help="only start the village and show the duty view")
    parser.add_argument("--exit-after-story", action="store_true", help="stop after the story (for tests)")
    parser.add_argument("--boards", type=int, default=None, help="start only the first N devices of the village")
    parser.add_argument("--heap", default=None, help="MicroPython heap per host board (default 64k with code in ROMFS, else "
                        "256k; see `fengqiao bench firmware`)")


def run(args):
    demo = Demo(args.workdir)
    stop = threading.Event()
    # Ctrl-C and SIGTERM both end the duty view; installed explicitly because a shell that starts
    # us in the background leaves SIGINT ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo.start(args.boards, args.heap)
        if not args.no_story:
            demo.story()
        if args.exit_after_story:
            demo.n.title("story complete")
            return 0
        demo.n.title("The village keeps running. Ctrl-C stops everything cleanly.")
        demo.duty_view(stop)
        return 0
    except KeyboardInterrupt:
        demo.n.title("interrupted")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        demo.n.say("stopping boards, gateway and brokers")
        demo.stop()
