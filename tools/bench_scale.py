"""`fengqiao bench scale --devices 5000`: many devices' heartbeats, offline detection, the gateway's cost.

The township of `bench e2e` (tools/bench_e2e.BenchTownship: county broker + recorder, project
Mosquitto, `fengqiao gateway run` as its own process, sample village), without host boards, plus
`--devices` simulated devices: raw-socket MQTT 3.1.1 clients (gateway.bench.RawConn; thousands
in a few processes, a few KB each: their RSS is printed), each its own connection with its own
password, sending a signed heartbeat every `--heartbeat-s` (30 s) — gateway.bench's paced mode
round-robins over the devices, so each one reports once per interval, spread evenly.

`--silent` more devices send one heartbeat and disconnect: the time from their last stored
uplink to their stored `device_offline` event (both the gateway's clock) is the offline detection
time (goal <= 90 s; gateway/supervision.py: interval x offline_factor + check period). The
supervision settings are the gateway's defaults, except that with a short `--heartbeat-s` (the
test) the check period shrinks to heartbeat/6. Measured over the run: the gateway's CPU (share of
one core, %) and peak RSS, the broker's likewise, and any device reported offline that was not
silent (must be 0). The last line printed is one JSON object.
"""

import json
import os
import tempfile
import threading
import time

from tools.bench_e2e import FIRST_SIM, BenchTownship, _say, stats_ms
from tools.bench_flood import _rss_kb
from tools.testing.procs import wait_for

HELP = "N devices' 30 s heartbeats: offline detection time (goal <= 90 s), gateway CPU (percent of a core) and RSS"
GOAL_OFFLINE_S = 90.0


def add_arguments(parser):
    parser.add_argument("--devices", type=int, default=5000, help="simulated devices heartbeating (default 5000)")
    parser.add_argument("--silent", type=int, default=5, help="more devices that go silent (default 5)")
    parser.add_argument("--heartbeat-s", type=int, default=30, help="heartbeat interval, whole seconds (default 30)")
    parser.add_argument("--procs", type=int, default=2, help="simulator processes (default 2)")
    parser.add_argument("--json", action="store_true", help="only the JSON object (figures also on stderr)")


class PeakRss:
    """Peak VmRSS (KB) of some processes, sampled every interval_s in a thread until stop()."""

    def __init__(self, pids, interval_s=0.5):
        self.pids = dict(pids)
        self.peak = {k: 0 for k in self.pids}
        self._stop = threading.Event()
        self._interval_s = interval_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            for name, pids in self.pids.items():
                self.peak[name] = max(self.peak[name], sum(_rss_kb(p) for p in pids))
            self._stop.wait(self._interval_s)

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        return self.peak


def gateway_events(t, kind):
    """{device_id: received_at_us} of the first gateway event `kind` per device."""
    db = t._db()
    try:
        rows = db.execute("SELECT device_id, MIN(received_at_us) FROM events WHERE source = 'gateway' AND kind = ?"
                          " GROUP BY device_id", (kind,)).fetchall()
    finally:
        db.close()
    return dict(rows)


def last_uplink_us(t, device_ids):
    db = t._db()
    try:
        return {d: db.execute("SELECT MAX(received_at_us) FROM events WHERE source = 'device' AND device_id = ?",
                              (d,)).fetchone()[0] for d in device_ids}
    finally:
        db.close()


def run(args):
    from gateway.bench import CpuMeter
    from tools.errors import CliError

    if args.devices < args.procs or args.silent < 1 or args.heartbeat_s <= 0:
        raise CliError("need --devices >= --procs, --silent >= 1 and --heartbeat-s > 0")
    factor = 2.5                                        # gateway/config.py supervision default
    check_s = min(5.0, args.heartbeat_s / 6)
    work = tempfile.TemporaryDirectory(prefix="fq-bench-scale-")
    t = BenchTownship(work.name, buttons=(), sims=args.devices + args.silent, watch=(),
                      sections={"supervision": {"default_heartbeat_interval_s": args.heartbeat_s,
                                                "check_interval_s": check_s}})
    live = list(range(FIRST_SIM, FIRST_SIM + args.devices))
    silent = list(range(FIRST_SIM + args.devices, FIRST_SIM + args.devices + args.silent))
    result = {"bench": "scale", "devices": args.devices, "silent": args.silent, "heartbeat_s": args.heartbeat_s,
              "offline_factor": factor, "check_interval_s": round(check_s, 3), "cores": os.cpu_count(),
              "goal_offline_s": GOAL_OFFLINE_S}
    sims = quiet = rss = None
    try:
        _say(args, "registering %d devices, starting the township ..." % (args.devices + args.silent))
        t.start()
        result["setup_s"] = t.setup_s
        t0 = time.monotonic()
        sims = t.sims(args.procs, live)
        quiet = t.sims(1, silent)
        result["connect_s"] = round(time.monotonic() - t0, 1)
        _say(args, "  %d device connections up in %.1f s" % (args.devices + args.silent, result["connect_s"]))
        rss = PeakRss({"gateway": [t.gateway.pid], "broker": [t.broker.pid], "simulators": sims.pids})
        meter = CpuMeter({"gateway": [t.gateway.pid], "broker": [t.broker.pid], "simulators": sims.pids})
        duration_s = args.heartbeat_s * (1 + factor) + 2 * check_s + max(3.0, args.heartbeat_s / 2)
        _say(args, "heartbeats: %d devices every %.0f s for %.0f s; %d go silent now ..."
             % (args.devices, args.heartbeat_s, duration_s, args.silent))
        load = {}
        thread = threading.Thread(target=lambda: load.update(
            r=sims.run(("paced", args.devices / args.heartbeat_s / args.procs, duration_s))), daemon=True)
        thread.start()
        quiet.run(("max", 1))      # one heartbeat each, acked ...
        quiet.stop()               # ... then gone (connections closed, as a dead unit's would be)
        quiet = None
        deadline_s = args.heartbeat_s * factor + 2 * check_s + 30
        try:
            wait_for(lambda: set(silent) <= set(gateway_events(t, "device_offline")), deadline_s,
                     "device_offline for the %d silent devices" % len(silent), interval_s=0.5)
        except AssertionError:
            pass   # reported: the missing ones have no detection time
        thread.join(duration_s + 120)
        shares = meter.shares()
        peaks = rss.stop()
        rss = None
        res = load.get("r") or []
        offline = gateway_events(t, "device_offline")
        last = last_uplink_us(t, silent)
        detect = [(offline[d] - last[d]) / 1e6 if d in offline and last[d] else None for d in silent]
        lat = [x for r in res for x in r["latencies"]]
        sent = sum(r["sent"] for r in res)
        result.update(
            heartbeats_sent=sent, heartbeats_acked=len(lat), lost=sum(r["lost"] for r in res),
            achieved_events_per_s=round(sent / max([r["elapsed"] for r in res] + [1e-9]), 1),
            offered_events_per_s=round(args.devices / args.heartbeat_s, 1),
            ack_ms=stats_ms(lat),
            offline_detect_s=[round(x, 2) if x is not None else None for x in detect],
            offline_detect_max_s=round(max(x for x in detect if x is not None), 2) if any(detect) else None,
            false_offline=len([d for d in offline if d in set(live)]),   # the sample village's units never connect here
            gateway_cpu_us_per_event=round(meter.seconds("gateway") / max(sent, 1) * 1e6),
            gateway_cpu_pct=round(shares["gateway"] * 100, 1), broker_cpu_pct=round(shares["broker"] * 100, 1),
            simulators_cpu_pct=round(shares["simulators"] * 100, 1),
            gateway_peak_rss_kb=peaks["gateway"], broker_peak_rss_kb=peaks["broker"],
            simulators_peak_rss_kb=peaks["simulators"])
        result["goal_met"] = (result["offline_detect_max_s"] is not None and None not in detect
                              and result["offline_detect_max_s"] <= GOAL_OFFLINE_S and result["false_offline"] == 0)
        _say(args, "  heartbeats: %d sent, %d acked (%.1f/s), ack p50 %s ms p99 %s ms"
             % (sent, len(lat), result["achieved_events_per_s"], result["ack_ms"].get("p50"),
                result["ack_ms"].get("p99")))
        _say(args, "  offline detection: %s s (goal <= %.0f s); false offline: %d"
             % (result["offline_detect_s"], GOAL_OFFLINE_S, result["false_offline"]))
        _say(args, "  gateway: %.1f%% of a core, peak RSS %d KB; broker %.1f%%, %d KB; simulators %.1f%%, %d KB"
             % (result["gateway_cpu_pct"], peaks["gateway"], result["broker_cpu_pct"], peaks["broker"],
                result["simulators_cpu_pct"], peaks["simulators"]))
    finally:
        if rss is not None:
            rss.stop()
        for s in (quiet, sims):
            if s is not None:
                s.stop()
        t.close()
        work.cleanup()
    print(json.dumps(result, sort_keys=True))
    return 0
