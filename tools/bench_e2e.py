"""`fengqiao bench e2e`: a press on a real alarm button until the person and the neighbours see it.

All real parts, each its own process where it is in production: the county's Mosquitto and
`gateway.county.CountyRecorder` (here), the project's Mosquitto (gateway/broker.py: TLS, a
password per device, ACL), `fengqiao gateway run` (plugins upstream + cases, the sample village),
four host boards (the east-lane joint-defence group of the sample village, the real firmware on
the MicroPython VM, TLS to the broker) and, for the loaded phase, simulated raw-MQTT devices
(gateway.bench.Sims: heartbeats, one uplink in flight each, at a fixed offered rate).

Each round one of the four buttons is held (1.3 s, timed by the board). Measured per round:
- press -> "stored": from the instant the unit TAKES the alarm (its first amber blink, after the
  ~1 s hold that guards against a child's tap) to its first blue blink (the stage-0 ack arrived);
- press -> county: to the moment the county recorder received the alarm's signed envelope;
- press -> sirens: to the first buzzer change of the LAST of the three neighbours' boards.
Board times come from the boards' LED/buzzer histories (board ms), mapped onto this process's
monotonic clock with a control round trip (error <= half the round trip, printed). The case is
then closed (as `fengqiao case close` does) and the next round waits for the LED off and the
sirens quiet. Two phases: idle, then with `--load` events/s of background heartbeats.

`BenchTownship` (here) is shared by `bench scale` and `bench storm`. The last line printed is one
JSON object.
"""

import json
import os
import statistics
import tempfile
import threading
import time

from tools.testing.procs import wait_for
from tools.testing.township import FaultTownship, _toml

HELP = "press -> stored LED / county envelope / neighbours' sirens, p50/p99, idle and under background load"

EAST_GROUP = (0x101, 0x102, 0x103, 0x104)   # sample village: one joint-defence group (hh-e01..e04)
COUNTY_TOPIC = "fq/v1/county/bench"
BLUE, AMBER = (0, 0, 1), (1, 1, 0)
FIRST_SIM = 0x20000


def add_arguments(parser):
    parser.add_argument("--rounds", type=int, default=50, help="alarms timed per phase (default 50: p99 of fewer is the max)")
    parser.add_argument("--load", type=float, default=1000.0, help="background events/s in the loaded phase")
    parser.add_argument("--bg-devices", type=int, default=200, help="simulated background devices (default 200)")
    parser.add_argument("--bg-procs", type=int, default=1, help="simulator processes for the load (default 1)")
    parser.add_argument("--json", action="store_true", help="only the JSON object (figures also on stderr)")


class BenchTownship(FaultTownship):
    """The sample village's township: county broker + recorder, project broker, gateway process
    (upstream + cases), alarm-button host boards `buttons`, and `sims` registered simulated devices
    (ids FIRST_SIM...) for raw-MQTT load. `arrivals` holds (monotonic, envelope) for envelopes of
    the kinds in `watch`, as the county recorder got them."""

    def __init__(self, work, buttons=EAST_GROUP, sims=0, sections=None, watch=("alarm", "case_dispatched")):
        super().__init__(work, boards=0)
        self.buttons = tuple(buttons)
        self.sim_keys = {FIRST_SIM + i: os.urandom(32) for i in range(sims)}
        self.sections = sections or {}
        self.watch = set(watch)
        self._needles = ['"kind":"%s"' % k for k in watch]
        self.arrivals = []
        self.last_arrival_wall = None   # time.time() of the latest envelope the county got
        self.village = None

    def start(self):
        t0 = time.monotonic()
        self._start()
        self.setup_s = round(time.monotonic() - t0, 1)   # registering, brokers, gateway, boards booted
        return self

    def _start(self):
        from gateway.broker import ProjectBroker
        from gateway.county import CountyRecorder
        from gateway.village.config import parse_village
        from gateway.village.db import import_village, open_db
        from gateway.village.testing import sample_text
        from tools.testing.mosquitto import MosquittoProcess
        from tools.testing.procs import free_port
        from tools.testing.township import COUNTY_CONF

        self.county = MosquittoProcess(os.path.join(self.work, "county"), COUNTY_CONF).start()
        self.recorder = CountyRecorder("127.0.0.1", self.county.port, COUNTY_TOPIC, self.county_path,
                                       client_id="fq-county-bench-%d" % os.getpid(),
                                       on_envelope=self._on_envelope).start()
        self.broker = ProjectBroker(os.path.join(self.work, "broker"), port=free_port(), tls_port=free_port(),
                                    bind="127.0.0.1")
        self.broker.setup()
        self.raw = {
            "gateway": {"data_dir": self.data_dir, "plugins": ["gateway.upstream", "gateway.cases"]},
            "broker": {"manage": False, "workdir": self.broker.workdir, "host": "127.0.0.1",
                       "port": self.broker.port, "tls_port": self.broker.tls_port, "bind": "127.0.0.1"},
            "metrics": {"enabled": False},
            "log": {"level": "info", "format": "text"},  # "gateway running" is info
            "cases": {"tick_s": 0.1},
            "upstream": {"gateway_id": "bench", "host": "127.0.0.1", "port": self.county.port,
                         "topic": COUNTY_TOPIC, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        }
        for name, values in self.sections.items():
            self.raw.setdefault(name, {}).update(values)
        with open(self.config_path, "w") as f:
            f.write(_toml(self.raw))
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.village = parse_village(sample_text(), "sample_village.toml")
        db = open_db(self.db_path)
        import_village(db, self.village, "bench")
        db.close()
        self._register_devices()
        self.broker.start()
        self.start_gateway(timeout_s=120)
        self._write_verify_inputs()
        for device_id in self.buttons:
            self._start_button(device_id)

    def _register_devices(self):
        from gateway.bench import _register
        from gateway.cli import GatewayApp
        from gateway.config import load_config
        from gateway.village.cli import sync_registry

        reg = GatewayApp(load_config(self.config_path)).open_registry()
        try:
            for d in self.village["devices"]:
                self.keys[d["id"]] = reg.add_device(d["id"], d["role"], None, heartbeat_interval_s=30)
            sync_registry(reg, self.village)
        finally:
            reg.close()
        _register(self.raw, sorted(self.sim_keys.items()))
        self.broker.add_devices(list(self.keys.items()) + sorted(self.sim_keys.items()), reload=False)
        with open(os.path.join(self.work, "device-keys.json"), "w") as f:
            json.dump({"%08x" % d: k.hex() for d, k in list(self.keys.items()) + list(self.sim_keys.items())}, f)

    def _start_button(self, device_id):
        self.boot_board(device_id, "button", {"role": "alarm", "broker_port": self.broker.tls_port})

    def _on_envelope(self, line):
        self.last_arrival_wall = time.time()
        if any(n in line for n in self._needles):
            env = json.loads(line)
            if env.get("kind") in self.watch:
                self.arrivals.append((time.monotonic(), env))

    def county_envelope(self, kind, device_id, after):
        """(monotonic arrival, envelope) of the first `kind` envelope of device_id the county got
        after `after`, or None."""
        for t, env in list(self.arrivals):
            if t >= after and env["kind"] == kind and env["device_id"] == device_id:
                return t, env
        return None

    def county_arrival(self, kind, device_id, after):
        got = self.county_envelope(kind, device_id, after)
        return got[0] if got else None

    def sims(self, procs=1, ids=None):
        """gateway.bench.Sims over the simulated devices (all, or `ids`), on the plain port."""
        import multiprocessing

        from gateway.bench import Sims

        devices = [(d, self.sim_keys[d]) for d in (ids if ids is not None else sorted(self.sim_keys))]
        return Sims(multiprocessing.get_context("spawn"), devices, procs, "127.0.0.1", self.broker.port)

    def case_service(self):
        from gateway.cases.service import CaseService
        from gateway.clock import SystemClock
        from gateway.village.db import open_db

        return CaseService(open_db(self.db_path), SystemClock())


class BoardTap:
    """A host board's LED and buzzer histories, polled into lists of (monotonic, value): the
    board's rings hold 64 LED / 256 buzzer changes, so a slow ack would wrap them; polling keeps
    every change. Board ms are mapped onto time.monotonic() by the best of a few round trips."""

    def __init__(self, hb):
        self.hb = hb
        self.offset_s, self.rtt_s = self._offset()
        self.led, self.buzzer = [], []
        self._n = {"led": None, "buzzer": None}

    def _offset(self, tries=5):
        best = None
        for _ in range(tries):
            t0 = time.monotonic()
            now_ms = self.hb.request("ping")["now_ms"]
            t1 = time.monotonic()
            if best is None or t1 - t0 < best[1]:
                best = ((t0 + t1) / 2 - now_ms / 1000.0, t1 - t0)
        return best

    def mark(self):
        """Forget what was seen; from now on only new changes are collected."""
        self.led, self.buzzer = [], []
        for op in ("led", "buzzer"):
            self._n[op] = self.hb.request(op, since=1 << 30)["count"]

    def poll(self):
        for op, out in (("led", self.led), ("buzzer", self.buzzer)):
            r = self.hb.request(op, since=self._n[op])
            self._n[op] = r["count"]
            out.extend((t / 1000.0 + self.offset_s, tuple(v) if isinstance(v, list) else v) for t, v in r["history"])

    def first_led(self, rgb, after=0.0):
        return next((t for t, v in self.led if v == rgb and t >= after), None)

    def first_buzz(self, after=0.0):
        return next((t for t, v in self.buzzer if v and t >= after), None)

    def quiet(self, for_s=0.6):
        """LED off and buzzer off, with no buzzer change in the last for_s seconds."""
        r = self.hb.request("buzzer", since=1 << 30)
        n = r["count"]
        last = self.hb.request("buzzer", since=max(0, n - 1))["history"]
        recent = last and r["now_ms"] - last[-1][0] < for_s * 1000
        return not r["on"] and not recent and not any(self.hb.led())


def press_round(t, taps, presser, cases, timeout_s=15.0, settle=True):
    """Hold `presser`'s button; wait until stored (LED), the county envelope and every neighbour's
    siren; close the case and wait for quiet. Returns {"stored", "county", "sirens"} in seconds
    (None where it did not happen within timeout_s) from the instant the unit took the alarm."""
    neighbours = [d for d in taps if d != presser]
    for tap in taps.values():
        tap.mark()
    t_hold = time.monotonic()
    t.boards[presser].hold(1300)
    p = taps[presser]

    def done():
        for tap in taps.values():
            tap.poll()
        taken = p.first_led(AMBER)
        return (taken is not None and p.first_led(BLUE, taken) is not None
                and t.county_arrival("alarm", presser, t_hold) is not None
                and t.county_arrival("case_dispatched", presser, t_hold) is not None
                and all(taps[n].first_buzz(taken) for n in neighbours))
    try:
        wait_for(done, timeout_s, "alarm of %08x stored, at the county and sirens" % presser, interval_s=0.02)
    except AssertionError:
        pass  # reported as None below: a round that misses its goal is a figure, not a crash
    taken = p.first_led(AMBER)
    out = {"stored": None, "county": None, "sirens": None, "at_gateway": None, "dispatched": None}
    wall_minus_mono = time.time() - time.monotonic()   # envelopes carry gateway (wall) times, same machine
    if taken is not None:
        alarm = t.county_envelope("alarm", presser, t_hold)
        disp = t.county_envelope("case_dispatched", presser, t_hold)
        if alarm:
            out["at_gateway"] = alarm[1]["received_at_us"] / 1e6 - wall_minus_mono - taken
        if disp:
            out["dispatched"] = json.loads(disp[1]["body_json"])["at"] - wall_minus_mono - taken
        stored, county = p.first_led(BLUE, taken), t.county_arrival("alarm", presser, t_hold)
        sirens = [taps[n].first_buzz(taken) for n in neighbours]
        out["stored"] = stored - taken if stored else None
        out["county"] = county - taken if county else None
        out["sirens"] = max(sirens) - taken if all(sirens) else None
    for case in cases.list_cases(status="open"):
        cases.close(case["case_id"], "p-zhou-min", "bench")
    if settle:
        wait_for(lambda: all(tap.quiet() for tap in taps.values()), 30, "LED off and sirens quiet after the close",
                 interval_s=0.1)
    return out


class BackgroundLoad:
    """`rate` events/s of heartbeats from gateway.bench.Sims (paced runs of chunk_s, in a thread),
    until stop(); stop() returns the figures of the load (achieved rate, ack latency)."""

    def __init__(self, sims, procs, rate, chunk_s=3.0):
        self.sims, self.rate, self.chunk_s, self.procs = sims, rate, chunk_s, procs
        self.results, self.errors = [], []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                self.results += self.sims.run(("paced", self.rate / self.procs, self.chunk_s))
        except (OSError, EOFError, RuntimeError) as exc:
            self.errors.append(exc)

    def stop(self):
        self._stop.set()
        self.thread.join(self.chunk_s + 30)
        lat = sorted(x for r in self.results for x in r["latencies"])
        sent = sum(r["sent"] for r in self.results)
        elapsed = sum(r["elapsed"] for r in self.results) / max(1, self.procs)
        out = {"offered_events_per_s": self.rate, "events": sent, "acked": len(lat),
               "achieved_events_per_s": round(sent / elapsed) if elapsed else 0,
               "errors": [repr(e) for e in self.errors]}
        if lat:
            out["ack_ms"] = stats_ms(lat)
        return out


def stats_ms(values_s):
    """{"n", "p50", "p99", "max"} in ms of a list of seconds (None entries counted as missed)."""
    from gateway.cases.bench import _stats

    got = [v for v in values_s if v is not None]
    out = {"n": len(got), "missed": len(values_s) - len(got)}
    if got:
        out.update(_stats(got))
    return out


def _say(args, text):
    from gateway.bench import _say as say

    say(args, text)


def _phase(args, t, taps, cases, name):
    rows = []
    for i in range(args.rounds):
        presser = EAST_GROUP[i % len(EAST_GROUP)]
        rows.append(press_round(t, taps, presser, cases))
    out = {k: stats_ms([r[k] for r in rows]) for k in ("stored", "county", "sirens", "at_gateway", "dispatched")}
    for k in ("at_gateway", "dispatched", "stored", "county", "sirens"):
        s = out[k]
        _say(args, "  %-7s press -> %-10s p50 %s ms  p99 %s ms  max %s ms  (%d rounds, %d missed)"
             % (name, k, s.get("p50"), s.get("p99"), s.get("max"), s["n"], s["missed"]))
    return out


def run(args):
    from tools.errors import CliError

    if args.rounds < 1 or args.bg_devices < args.bg_procs:
        raise CliError("need --rounds >= 1 and --bg-devices >= --bg-procs")
    work = tempfile.TemporaryDirectory(prefix="fq-bench-e2e-")
    t = BenchTownship(work.name, sims=args.bg_devices)
    result = {"bench": "e2e", "rounds": args.rounds, "buttons": len(EAST_GROUP), "cores": os.cpu_count()}
    sims = load = None
    try:
        _say(args, "starting the township (county, broker, gateway process, %d host boards) ..." % len(EAST_GROUP))
        t.start()
        taps = {d: BoardTap(t.boards[d]) for d in EAST_GROUP}
        result["clock_map_error_ms"] = round(max(tap.rtt_s for tap in taps.values()) / 2 * 1000, 2)
        cases = t.case_service()
        _say(args, "idle: %d rounds ..." % args.rounds)
        result["idle"] = _phase(args, t, taps, cases, "idle")
        _say(args, "load: %d simulated devices, %.0f events/s of heartbeats, %d rounds ..."
             % (args.bg_devices, args.load, args.rounds))
        sims = t.sims(args.bg_procs)
        load = BackgroundLoad(sims, args.bg_procs, args.load)
        time.sleep(1.0)  # the load running before the first press
        result["load"] = _phase(args, t, taps, cases, "load")
        result["load"]["background"] = load.stop()
        load = None
        bg = result["load"]["background"]
        _say(args, "  background: %s events/s achieved of %.0f offered, ack p50 %s ms p99 %s ms"
             % (bg["achieved_events_per_s"], args.load, bg.get("ack_ms", {}).get("p50"),
                bg.get("ack_ms", {}).get("p99")))
        cases.db.close()
    finally:
        if load is not None:
            load.stop()
        if sims is not None:
            sims.stop()
        t.close()
        work.cleanup()
    print(json.dumps(result, sort_keys=True))
    return 0
