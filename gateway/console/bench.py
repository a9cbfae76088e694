"""`fengqiao bench console [--json]`: what the duty console costs and how fast it shows an alarm.

One township in this process, as `fengqiao gateway run` composes it (the project's Mosquitto,
the gateway with the cases plugin and the console, the sample village), devices simulated in
other processes (gateway.bench's raw-socket MQTT clients), sessions in another process:

  (1) store -> visible in the browser: Debian's chromium (Playwright) shows the board, devices
      outside any joint-defence group raise alarms (each opens its own case) at 1/s and at
      100/s; the page records, for each new row, its time minus the alarm's store time (same
      machine clock); p50/p99 per rate;
  (2) the gateway's rate (heartbeats, verified + stored + acked, as `bench gateway` (b) but in
      this process) with no console session open, then with N sessions (default 20) each
      holding the live stream and refetching the board on case events as the page does;
  (3) the console's cost with N sessions: resident memory of the process before/after opening
      them, and CPU of the process over an idle window with and without them.

The last line printed is one JSON object.
"""

import http.client
import json
import multiprocessing
import os
import re
import selectors
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

HELP = "duty console: store -> visible in the browser p50/p99 at 1 and 100 alarms/s; gateway rate with 20 sessions"


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="only the JSON object (figures also on stderr)")
    parser.add_argument("--sessions", type=int, default=20, help="console sessions for (2) and (3) (default 20)")
    parser.add_argument("--devices", type=int, default=200, help="heartbeat devices for (2) (default 200)")
    parser.add_argument("--events", type=int, default=10_000, help="heartbeats per rate run (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="rate runs per condition, alternated; the best is kept")
    parser.add_argument("--slow-alarms", type=int, default=15, help="alarms at 1/s (default 15)")
    parser.add_argument("--fast-alarms", type=int, default=300, help="alarms at 100/s (default 300)")


def _say(args, text):
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _q(values):
    v = sorted(values)
    if len(v) < 2:
        return (v[0], v[0]) if v else (None, None)
    q = statistics.quantiles(v, n=100, method="inclusive")
    return q[49], q[98]


# -- alarm senders (another process) ---------------------------------------------------------------

def alarm_main(conn, devices, host, port):
    """One alarm per device, in order, at `rate` per second; acks are read and dropped."""
    from gateway.bench import RawConn, _pump
    from protocol import frame as pframe

    sel = selectors.DefaultSelector()
    conns = [RawConn(d, k, host, port) for d, k in devices]
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    deadline = time.monotonic() + 30
    while not all(c.connacked and c.subacked for c in conns):
        if time.monotonic() > deadline:
            conn.send(("error", "alarm devices not connected within 30 s"))
            return
        _pump(sel, 0.1, None)
    conn.send(("ready", len(conns)))
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            return
        _, start, count, rate = cmd
        now_s = int(time.time())
        t0 = time.monotonic()
        for i, c in enumerate(conns[start:start + count]):
            while time.monotonic() < t0 + i / rate:
                _pump(sel, min(0.005, max(0.0, t0 + i / rate - time.monotonic())), None)
            c.seq += 1
            data = pframe.encode(c.k_up, c.up_topic.decode(), pframe.UP_ALARM, c.device_id, 1, c.seq, now_s, [0])
            c.frames, c.next_frame = [(c.seq, data)], 0
            c.send_next(time.monotonic())
            _pump(sel, 0, None)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            _pump(sel, 0.05, None)
        conn.send(("sent", count))


# -- console sessions (another process) --------------------------------------------------------------

def sessions_main(url, n, user, password, conn):
    """n logged-in sessions; on "open" each holds /events and refetches /board/rows on case events
    (as the page does); on "close" the streams are closed."""
    u = urllib.parse.urlparse(url)

    def login():
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        c.request("GET", "/login")
        r = c.getresponse()
        page = r.read().decode()
        cookie = r.getheader("set-cookie").split(";")[0]
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({"csrf": token, "username": user, "password": password, "next": "/"})
        c.request("POST", "/login", body=body, headers={"Cookie": cookie,
                                                          "Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        session = [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and "fq_session" in v][0]
        c.close()
        return session

    def follow(cookie, stop, conns):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conns.append(c)
        c.request("GET", "/events", headers={"Cookie": cookie, "Accept": "text/event-stream"})
        r = c.getresponse()
        side = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            while not stop.is_set():
                line = r.fp.readline()
                if not line:
                    break
                if line.startswith(b"data: ") and b'"kind": "case_' in line:
                    side.request("GET", "/board/rows", headers={"Cookie": cookie})
                    side.getresponse().read()
        except (OSError, ValueError, AttributeError):   # closed by "close"
            pass

    cookies = [login() for _ in range(n)]
    conn.send(("ready", n))
    stop, conns = None, []
    while True:
        cmd = conn.recv()
        if cmd == "open":
            stop, conns = threading.Event(), []
            for c in cookies:
                threading.Thread(target=follow, args=(c, stop, conns), daemon=True).start()
            conn.send("opened")
        elif cmd == "close":
            stop.set()
            for c in conns:
                if c.sock is not None:
                    c.sock.shutdown(2)
                c.close()
            conn.send("closed")
        else:
            return


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_self():
    t = os.times()
    return t.user + t.system


def run(args):
    from gateway.bench import Sims, _rate
    from gateway.console.testing import PASSWORD, Township
    from tools.errors import CliError

    ctx = multiprocessing.get_context("spawn")
    result = {"bench": "console", "cores": os.cpu_count(), "sessions": args.sessions}
    with tempfile.TemporaryDirectory(prefix="fq-bench-console-") as work:
        t = Township(work, county=False, devices=(),
                     pipeline={"device_rate_per_s": 100000.0, "device_burst": 100000}).start()
        procs = []
        try:
            # (1) store -> visible
            n_alarm = args.slow_alarms + args.fast_alarms
            alarm_devs = [(0x30000 + i, os.urandom(32)) for i in range(n_alarm)]
            for d, k in alarm_devs:
                t.app.registry.add_device(d, "alarm_button", None, key=k)
            t.broker.add_devices(alarm_devs)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=alarm_main, args=(child, alarm_devs, "127.0.0.1", t.broker.port), daemon=True)
            p.start()
            procs.append((p, parent))
            if parent.recv()[0] != "ready":
                raise CliError("alarm devices did not connect")
            result.update(_visible(args, t, parent, PASSWORD))

            # (2) + (3): rates and cost, without and with sessions
            hb_devs = [(0x40000 + i, os.urandom(32)) for i in range(args.devices)]
            for d, k in hb_devs:
                t.app.registry.add_device(d, "alarm_button", None, key=k)
            t.broker.add_devices(hb_devs)
            sims = Sims(ctx, hb_devs, 2, "127.0.0.1", t.broker.port)
            per_device = max(1, args.events // args.devices)

            def rates(label):
                runs = []
                for i in range(args.repeat):
                    c0 = _cpu_self()
                    total, rate = _rate(sims.run(("max", per_device)))
                    runs.append((rate, (_cpu_self() - c0) / total * 1e6))
                    _say(args, "(2) gateway %s, run %d: %.0f events/s, %.0f us CPU/event (this process)"
                         % (label, i + 1, rate, runs[-1][1]))
                return max(runs)

            def idle_cpu(seconds=5.0):
                c0, w0 = _cpu_self(), time.monotonic()
                time.sleep(seconds)
                return (_cpu_self() - c0) / (time.monotonic() - w0)

            sparent, schild = ctx.Pipe()
            sp = ctx.Process(target=sessions_main, args=(t.url, args.sessions, "zhou", PASSWORD, schild), daemon=True)
            sp.start()
            procs.append((sp, sparent))
            if sparent.recv()[0] != "ready":
                raise CliError("sessions did not log in")

            def streams(n):
                deadline = time.monotonic() + 15
                while t.console.hub.followers != n and time.monotonic() < deadline:
                    time.sleep(0.05)
                return t.console.hub.followers

            # alternate the conditions, so that a change in the machine's load hits both alike
            without, with_ = [], []
            idle0, rss0 = idle_cpu(), _rss_kb()
            for i in range(args.repeat):
                without.append(rates("without sessions"))
                sparent.send("open")
                sparent.recv()
                opened = streams(args.sessions)
                if i == 0:
                    idle1, rss1 = idle_cpu(), _rss_kb()
                with_.append(rates("with %d sessions" % args.sessions))
                sparent.send("close")
                sparent.recv()
                streams(0)
            (rate0, us0), (rate1, us1) = max(without), max(with_)
            result.update(
                gateway_events_per_s_without=round(rate0), gateway_events_per_s_with_sessions=round(rate1),
                gateway_runs_without=[round(r) for r, _ in without], gateway_runs_with=[round(r) for r, _ in with_],
                gateway_rate_change_pct=round(100.0 * (rate1 - rate0) / rate0, 1),
                # the median of the alternated runs: less at the mercy of one lucky run than the best
                gateway_rate_change_median_pct=round(100.0 * (statistics.median(r for r, _ in with_) -
                                                              statistics.median(r for r, _ in without))
                                                     / statistics.median(r for r, _ in without), 1),
                # each pair ran back to back (without, then with): the change within each pair, and
                # its median, is the least affected by the machine's load drifting over the bench
                gateway_rate_change_paired_pct=[round(100.0 * (w[0] - o[0]) / o[0], 1) for o, w in zip(without, with_)],
                gateway_rate_change_paired_median_pct=round(statistics.median(
                    100.0 * (w[0] - o[0]) / o[0] for o, w in zip(without, with_)), 1),
                cpu_us_per_event_without=round(min(u for _, u in without)),
                cpu_us_per_event_with_sessions=round(min(u for _, u in with_)),
                streams_open=opened,
                console_sessions_rss_kb=rss1 - rss0, process_rss_kb=rss1,
                idle_cpu_cores_without=round(idle0, 4), idle_cpu_cores_with_sessions=round(idle1, 4))
            _say(args, "(3) %d sessions: +%d kB resident, idle CPU %.3f -> %.3f cores"
                 % (args.sessions, rss1 - rss0, idle0, idle1))
            sims.stop()
        finally:
            for p, pipe in procs:
                try:
                    pipe.send(("stop",))
                except OSError:
                    pass
                p.join(5)
                if p.is_alive():
                    p.kill()
            t.stop()
    result["goal"] = {"visible_p99_s": 1.0, "gateway_rate_drop_pct_max": 10}
    if not args.json:
        for k in sorted(result):
            print("%-36s %s" % (k, result[k]))
    print(json.dumps(result, sort_keys=True))
    return 0


def _visible(args, t, alarms, password):
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(t.url + "/login")
            page.fill("input[name=username]", "zhou")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_function("() => window.__fq && window.__fq.connected")
            start = 0
            for label, count, rate in (("1_per_s", args.slow_alarms, 1.0), ("100_per_s", args.fast_alarms, 100.0)):
                before = len(page.evaluate("Object.keys(window.__fq.visible)"))
                _say(args, "(1) %d alarms at %.0f/s ..." % (count, rate))
                alarms.send(("go", start, count, rate))
                alarms.recv()
                page.wait_for_function("n => Object.keys(window.__fq.visible).length >= n", arg=before + count,
                                       timeout=120_000)
                vis = page.evaluate("window.__fq.visible")
                ids = sorted(int(k) for k in vis)[before:before + count]
                lat = [vis[str(i)] for i in ids]
                p50, p99 = _q(lat)
                out["visible_%s_p50_ms" % label] = round(p50 * 1000, 1)
                out["visible_%s_p99_ms" % label] = round(p99 * 1000, 1)
                out["visible_%s_max_ms" % label] = round(max(lat) * 1000, 1)
                _say(args, "    store -> visible p50 %.0f ms, p99 %.0f ms, max %.0f ms"
                     % (p50 * 1000, p99 * 1000, max(lat) * 1000))
                start += count
        finally:
            browser.close()
    return out
