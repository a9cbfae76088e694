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

    fengqiao demo [--workdir var/demo] [--no-story | --story-only] [--boards N]

The demo shortens deadlines (village 20 s, township 60 s) and the patrol route (minutes instead of
tens of minutes) so the story fits in about a minute and a half (STORY_S); everything else is the
shipped config.

Stopping: `fengqiao demo` runs the demo in a worker process under tools/supervisor.py. Ctrl-C,
SIGTERM, SIGHUP, SIGPIPE and a broken stdout (`fengqiao demo | head`) end the worker's story or
duty view and its `finally` stops every board, the gateway and both brokers; if the worker is
killed outright, the supervisor (its children's subreaper) stops what it left behind; if the
supervisor is killed outright, the worker gets SIGTERM (PR_SET_PDEATHSIG).
"""

import datetime
import os
import shutil
import signal
import sys
import threading
import time

from tools.errors import CliError
from tools.simulate import LED_MEANING

HELP = "run a simulated village against the real gateway and play the alarm and patrol story"

# How long the story takes, measured (2026-12-06, 2 shared cores: 80-95 s); said at its start.
STORY_S = 90
# The duty view is checked this often and printed when it changed, and at least every DUTY_EVERY_S.
DUTY_CHECK_S = 5.0
DUTY_EVERY_S = 60.0
# Services started after the gateway, before the boards: (name, start) with start(demo) returning
# an object with stop() (stopped first, in reverse order). The web console says its URL and login.


def _start_console(demo):
    from gateway.console import demo as console_demo   # imported here: Starlette only when used

    return console_demo.start(demo)


DEMO_SERVICES = [("web console", _start_console)]
_WORKER_ENV = "FENGQIAO_DEMO_WORKER"

_STAGES = {0: "stored", 1: "dispatched", 2: "someone is coming", 3: "closed", 4: "cancelled"}
# Host boards of the sample village: device id -> (firmware role, checkpoint id or None)
_ROLE = {"alarm_button": "alarm", "checkpoint": "checkin"}


class OutputClosed(BaseException):
    """The demo's stdout went away (its reader exited): stop as for Ctrl-C."""


class Narrator:
    """Prints numbered, timestamped lines so a newcomer can follow the data path.

    When the output breaks (a pipe whose reader exited), printing stops for good and the main
    thread is interrupted (OutputClosed there; from another thread, e.g. the store's subscriber,
    via a simulated SIGINT), so the demo stops and cleans up instead of running on unseen."""

    def __init__(self, out=sys.stdout):
        self.t0 = time.monotonic()
        self.out = out
        self.lock = threading.Lock()
        self.closed = False

    def _write(self, text):
        with self.lock:
            if self.closed:
                return
            try:
                self.out.write(text)
                self.out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.closed = True
        if self.closed:
            self._output_closed()

    def _output_closed(self):
        # Later writes (and the interpreter's final flush) must not fail again: fd 1 -> /dev/null.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.out.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        if threading.current_thread() is threading.main_thread():
            raise OutputClosed()
        import _thread

        _thread.interrupt_main(signal.SIGPIPE)

    def check(self):
        """Notice a reader that went away while nothing was printed (poll: POLLERR on a pipe
        with no reader left); stops the demo as a failed write does."""
        import select

        try:
            fd = self.out.fileno()
        except (AttributeError, ValueError, OSError):
            return
        p = select.poll()
        p.register(fd, select.POLLOUT)
        if any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in p.poll(0)) and not self.closed:
            self.closed = True
            self._output_closed()

    def say(self, text, indent=0):
        self._write("[%6.1fs] %s%s\n" % (time.monotonic() - self.t0, "    " * indent, text))

    def title(self, text):
        self._write("\n==== %s ====\n" % text)


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
        self.services = []  # (name, object with stop()) started from DEMO_SERVICES
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
        for name, start_service in DEMO_SERVICES:
            self.services.append((name, start_service(self)))

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
        n.say("ack (stage 0, stored) reached the button: LED %s" % LED_MEANING.get(state, state), indent=1)
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
        for name, service in self.services:
            if name == "web console":
                from gateway.console.demo import board_lists_case

                _wait(lambda: board_lists_case(service, case["case_id"]), 10, "the case on the console's board")
                n.say("the duty console's alarm board (%s, logged in over HTTP) lists case %s" % (service.url, case["case_id"]), indent=1)
        self.plugin_cases().acknowledge(case["case_id"], "p-zhou-min", "on the phone with her neighbour, ambulance called")
        _wait(lambda: _led(granny) == "coming", 15, "her LED to show someone is coming")
        n.say("her LED: %s" % LED_MEANING["coming"], indent=1)
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
    def duty_state(self):
        """What the duty officer needs: open cases and offline devices (no counters that grow
        with every heartbeat)."""
        open_cases = [c for c in self.plugin_cases().list_cases() if c["status"] not in ("closed", "cancelled")]
        offline = sorted(set(self.app.supervisor.offline)) if self.app.supervisor else []
        return ([(c["case_id"], c["place_id"], c["status"], c["escalated_to"]) for c in open_cases], offline)

    def duty_view(self, stop, check_s=DUTY_CHECK_S, every_s=DUTY_EVERY_S):
        """Checked every check_s; printed at once, whenever it changes, and at least every every_s."""
        last, last_at = None, 0.0
        while True:
            cases, offline = state = self.duty_state()
            if state != last or time.monotonic() - last_at >= every_s:
                last, last_at = state, time.monotonic()
                self.n.title("duty view  %s  (checked every %g s, printed when it changes and at least every %g s; "
                             "Ctrl-C ends the demo)" % (time.strftime("%H:%M:%S"), check_s, every_s))
                self.n.say("%d devices: %d online, %d offline | %d open case(s)"
                           % (len(self.boards), len(self.boards) - len(offline), len(offline), len(cases)))
                for case_id, place, status, escalated in cases:
                    self.n.say("case %s at %s: %s%s" % (case_id, place, status,
                                                         ", escalated to %s" % escalated if escalated else ""), 1)
                for d in offline:
                    self.n.say("offline: device %08x at %s" % (d, self.places.get(d, "?")), 1)
            if stop.wait(check_s):
                return
            self.n.check()

    def stop(self):
        for _name, service in reversed(self.services):
            service.stop()
        self.services = []
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


class Stopped(BaseException):
    """A signal asked the demo to stop (SIGINT, SIGTERM, SIGHUP, SIGPIPE)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stopping = []


def _interrupt(signum, frame):
    if not _stopping:  # once: a second signal (Ctrl-C pressed twice) must not cut the clean-up short
        _stopping.append(signum)
        raise Stopped(signum)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


def add_arguments(parser):
    parser.add_argument("--workdir", default="var/demo", help="where the demo keeps its files (wiped at start)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--no-story", action="store_true", help="only start the village and show the duty view")
    how.add_argument("--story-only", "--exit-after-story", dest="story_only", action="store_true",
                     help="stop after the story (status 0), without the duty view")
    parser.add_argument("--boards", type=int, default=None, help="start only the first N devices of the village")
    parser.add_argument("--heap", default=None, help="MicroPython heap per host board (default 64k with code in ROMFS, else "
                        "256k; see `fengqiao bench firmware`)")


def _worker_argv(args):
    argv = [sys.executable, "-m", "tools.cli", "demo", "--workdir", os.path.abspath(args.workdir)]
    if args.no_story:
        argv.append("--no-story")
    if args.story_only:
        argv.append("--story-only")
    if args.boards is not None:
        argv += ["--boards", str(args.boards)]
    if args.heap:
        argv += ["--heap", args.heap]
    return argv


def run(args):
    if os.environ.get(_WORKER_ENV) != "1" and sys.platform.startswith("linux"):
        from tools.supervisor import supervise

        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, **{_WORKER_ENV: "1"})
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return supervise(_worker_argv(args), env)
    return run_worker(args)


def run_worker(args):
    demo = Demo(args.workdir)
    stop = threading.Event()
    status = 0
    # Installed explicitly for every stop signal: a shell that starts us in the background leaves
    # SIGINT ignored, and Python ignores SIGPIPE (a broken stdout is handled by the Narrator).
    previous = {sig: signal.signal(sig, _interrupt) for sig in _STOP_SIGNALS}
    try:
        if not args.no_story:
            demo.n.title("Fengqiao demo: set-up takes about 20 s, the story about %d s; Ctrl-C ends the demo "
                         "at any time and stops everything it started" % STORY_S)
        demo.start(args.boards, args.heap)
        if not args.no_story:
            t0 = time.monotonic()
            demo.story()
            demo.n.say("the story took %.0f s" % (time.monotonic() - t0))
        if args.story_only:
            demo.n.title("story complete")
            return 0
        demo.n.title("The village keeps running; the duty view follows. Ctrl-C stops everything cleanly.")
        demo.duty_view(stop)
        return 0
    except Stopped as exc:
        status = {signal.SIGINT: 0, signal.SIGTERM: 0}.get(exc.signum, 128 + exc.signum)
        try:
            demo.n.title("stopping (%s)" % exc)
        except OutputClosed:
            pass
        return status
    except OutputClosed:
        return 128 + signal.SIGPIPE
    finally:
        # Nothing may interrupt the clean-up; the supervisor stops whatever it leaves behind.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            demo.n.say("stopping boards, gateway and brokers")
            demo.stop()
        except OutputClosed:
            demo.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
