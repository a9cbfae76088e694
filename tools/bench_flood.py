"""`fengqiao bench flood`: another device's alarm while one or ten devices flood the broker (issue 13).

Helpers shared with the tests: flood(broker, device_id, key) starts a raw flooder (mosquitto_pub,
QoS 0 at full loopback speed, its password passed in a 0600 file, never on the command line).
"""

import os
import shutil
import subprocess
import tempfile

HELP = "victim alarm ack/siren latency before, during and after a flood of 1 and 10 devices; time to quarantine"

FLOOD_PAYLOAD = "f" * 48     # about the size of a real frame; not a frame: it never gets that far


class Flooder:
    """mosquitto_pub --repeat at QoS 0 (or `qos`), repeat-delay 0: as fast as the C client and
    loopback go. It exits after `count` messages, or when the broker drops its connection."""

    def __init__(self, port, username, password, topic, count=100_000_000, qos=0):
        exe = shutil.which("mosquitto_pub")
        if exe is None:
            raise FileNotFoundError("mosquitto_pub not found (apt-get install mosquitto-clients)")
        self._dir = tempfile.TemporaryDirectory(prefix="fq-flood-")
        # mosquitto_pub reads its options from $XDG_CONFIG_HOME/mosquitto_pub too: the password
        # stays out of the process list.
        fd = os.open(os.path.join(self._dir.name, "mosquitto_pub"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("-h 127.0.0.1\n-p %d\n-u %s\n-P %s\n" % (port, username, password))
        env = dict(os.environ, XDG_CONFIG_HOME=self._dir.name)
        self.proc = subprocess.Popen([exe, "-t", topic, "-q", str(qos), "-m", FLOOD_PAYLOAD, "--repeat", str(count),
                                      "--repeat-delay", "0", "--quiet"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._dir.cleanup()


def add_arguments(parser):
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each flood (default 60)")
    parser.add_argument("--floods", default="1,10", help="numbers of flooding devices, comma-separated (default 1,10)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0,
                        help="QoS of the flood (default 0, the issue's; 1: every message needs a PUBACK)")
    parser.add_argument("--json", action="store_true", help="only the JSON object")


def _pcts(xs):
    import statistics

    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    p = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1)  # noqa: E731
    return {"n": len(xs), "p50_ms": p(0.5), "p99_ms": p(0.99), "max_ms": round(xs[-1] * 1000, 1),
            "mean_ms": round(statistics.mean(xs) * 1000, 1)}


def _rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _on(n):
    return [at for at, body in list(n.sirens) if body[0]]


def _off(n):
    return [at for at, body in list(n.sirens) if not body[0]]


def _phase(t, cases, victim, neighbours, seconds, rss, interval_s=0.1, watch=None, trace=None):
    """Alarms from the victim for `seconds`; each case is closed (sirens off) before the next.
    watch(): called while waiting (the flooders' exits); trace: list of (sent, ack_s or None)."""
    import time

    acks, sirens = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        before = [len(_on(n)) for n in neighbours]
        t0 = time.monotonic()
        seq = victim.alarm()
        while time.monotonic() - t0 < 5 and (0 not in victim.ack_times.get(seq, {})
                                             or any(len(_on(n)) == b for n, b in zip(neighbours, before))):
            rss[0] = max(rss[0], _rss_kb(t.broker.pid))
            if watch is not None:
                watch()
            time.sleep(0.001)
        if 0 in victim.ack_times.get(seq, {}):
            acks.append(victim.ack_times[seq][0] - t0)
        if trace is not None:
            trace.append((t0, victim.ack_times[seq][0] - t0 if 0 in victim.ack_times.get(seq, {}) else None))
        got = [_on(n)[b] for n, b in zip(neighbours, before) if len(_on(n)) > b]
        if len(got) == len(neighbours):
            sirens.append(max(got) - t0)
        offs = [len(_off(n)) for n in neighbours]
        for case in cases.list_cases(status="open"):
            cases.close(case["case_id"], "p-zhou-min", "bench")
        t1 = time.monotonic()
        while time.monotonic() - t1 < 5 and any(len(_off(n)) == b for n, b in zip(neighbours, offs)):
            if watch is not None:
                watch()
            time.sleep(0.002)
        time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    return {"ack": _pcts(acks), "siren": _pcts(sirens), "alarms": len(acks)}


def run(args):
    import json
    import tempfile
    import time

    import os

    from gateway.cases.service import CaseService
    from gateway.clock import SystemClock
    from gateway.console.testing import Township
    from gateway.village.db import open_db
    from gateway.quarantine import Quarantine
    from protocol import frame as pframe

    floods = [int(x) for x in args.floods.split(",") if x.strip()]
    work = tempfile.TemporaryDirectory(prefix="fq-bench-flood-")
    flooder_ids = [0x900 + i for i in range(max(floods))]
    t = Township(work.name, county=False, plugins=("gateway.cases", "gateway.quarantine"),
                 devices=(0x101, 0x102, 0x103, 0x104) + tuple(flooder_ids),
                 sections={"quarantine": {"cooldown_s": 3600.0}, "cases": {"tick_s": 0.05}})
    result = {"bench": "flood", "seconds": args.seconds, "qos": getattr(args, "qos", 0), "runs": []}
    t.start()
    try:
        q = next(p for p in t.app._plugins if isinstance(p, Quarantine))
        cases = CaseService(open_db(os.path.join(t.app.data_dir, "gateway.db")), SystemClock())
        victim = t.sim_button(0x102)
        neighbours = [t.sim_button(d) for d in (0x101, 0x103, 0x104)]
        # Warm-up, not counted: right after the start (measured: 0.3 s after the buttons connected;
        # fine after 2 s) the first alarm's sirens reached only one of the three neighbours, and
        # that alarm waited 10 s in the first "before" phase. Figures start from a township whose
        # alarm sounds every neighbour.
        for _ in range(5):
            if _phase(t, cases, victim, neighbours, 0.01, [0])["siren"]["n"]:
                break
        result["warm_up_alarms"] = _ + 1
        for n in floods:
            rss = [0]
            run_ = {"flooders": n, "before": _phase(t, cases, victim, neighbours, min(5.0, args.seconds), rss)}
            ids = flooder_ids[:n]
            t.broker.release_devices(ids)
            for d in ids:
                t.app.service.release(d)
                q.quarantined_at.pop(d, None)
            # until the quarantine's own round has seen them released (else a new hold of one of
            # them, made before that round, was taken for an operator's release and undone)
            deadline = time.monotonic() + 5
            while set(ids) & q._at_broker and time.monotonic() < deadline:
                time.sleep(0.05)
            reasons = ("WrongQoS", "Quarantined", "Throttled", "UnsupportedVersion")
            counted = lambda: {r: t.app.metrics.counter("fengqiao_rejections_total", {"reason": r})  # noqa: E731
                               for r in reasons}
            seen_before, events_before = counted(), t.app.store.head()[0]
            t0 = time.monotonic()
            fl = [Flooder(t.broker.port, *t.broker.device_credentials(d, t.keys[d]), pframe.uplink_topic(d),
                          qos=getattr(args, "qos", 0)) for d in ids]
            exited = {}

            def watch():
                for d, f in zip(ids, fl):
                    if d not in exited and not f.running():
                        exited[d] = time.monotonic()
            trace = []
            try:
                run_["during"] = _phase(t, cases, victim, neighbours, args.seconds, rss, watch=watch, trace=trace)
            finally:
                for f in fl:
                    f.stop()
            # a short flood (the test's 2-3 s) can end before the reload that refuses the last
            # flooders back has finished: wait for it, so that "refused" is a figure, not None
            deadline = time.monotonic() + 10
            while any(d in q.quarantined_at and d not in q.refused_at for d in ids) and time.monotonic() < deadline:
                time.sleep(0.01)
            cut = [q.quarantined_at[d] - t0 for d in ids if d in q.quarantined_at]
            run_["quarantined"] = len(cut)
            run_["time_to_quarantine_s"] = {"max": round(max(cut), 3) if cut else None,
                                            "min": round(min(cut), 3) if cut else None}
            rel = lambda m, d: round(m[d] - t0, 3) if d in m else None  # noqa: E731
            # per flooder: named by the gateway's flood guard, cut off at the broker (reload
            # confirmed), and its connection gone (mosquitto_pub exited)
            # the rate the flood guard saw when it named each one (its device_quarantined event)
            rate = {e.device_id: e.body.get("msgs_per_s") for e in t.app.store.gateway_events(
                ("device_quarantined",), after=events_before)}
            run_["flooders_s"] = [{"device": "%08x" % d, "detected": rel(q.detected_at, d), "cut_off": rel(q.quarantined_at, d),
                                   "refused": rel(q.refused_at, d), "disconnected": rel(exited, d),
                                   "msgs_per_s_seen": rate.get(d)} for d in ids]
            # how many flood messages reached the gateway, by what dropped them: QoS 0 (cut out of
            # the read buffer, WrongQoS, or Quarantined once held), or (a QoS 1 flood) not a frame
            # / over the device's rate
            now_seen = counted()
            run_["flood_msgs_at_gateway"] = {r: now_seen[r] - seen_before[r] for r in reasons}
            slow = [(round(s0 - t0, 3), None if a is None else round(a * 1000, 1)) for s0, a in trace
                    if a is None or a > 0.1]
            run_["during_slow_acks"] = slow[:20]
            run_["after"] = _phase(t, cases, victim, neighbours, min(5.0, args.seconds), rss)
            run_["broker_peak_rss_kb"] = rss[0]
            result["runs"].append(run_)
            if not args.json:
                print("flood of %d: %s" % (n, json.dumps(run_)))
    finally:
        t.stop()
        work.cleanup()
    print(json.dumps(result))
    return 0
