"""A technician's bench for deploy tests and `fengqiao bench deploy` (no tests here): N host boards (firmware
main.py, console on a real pty each), a project Mosquitto, a gateway config and database with the
sample village's places, and a directory of port symlinks that `fengqiao deploy --port auto
--port-glob DIR/*` watches (a symlink appearing = a board plugged in).

    rig = DeployRig(work, boards=3).start()
    rig.plug(i)                 # board i's port appears
    rig.write_plan(rows)        # CSV plan file
    rig.close()

outbox_seqs(flash_dir): the seqs waiting in a board's outbox file. Cable and power faults for
tests: CutAt (a NullModem `cable` hook that pulls the cable at a chosen
byte of the console dialogue) and PowerOn (powers a host board on again after its reset).
"""

import os
import threading

from tools.hostboard import HostBoard, NullModem, board_heap

PLACES = [("county-anji", "county", None), ("tsp-qiaotou", "township", "county-anji"),
          ("vil-dongshan", "village", "tsp-qiaotou"), ("grid-east", "grid", "vil-dongshan")]
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000", "--failing-s", "20"]


def plan_rows(n, checkins=0):
    """n plan rows: households hh-d001.. (alarm) then checkpoints cp-d001.. (checkin)."""
    rows = []
    for i in range(n):
        if i < n - checkins:
            rows.append({"role": "alarm", "village": "东山村", "place": "hh-d%03d" % (i + 1),
                         "name": "王家 %d 号" % (i + 1), "group": "east-%d" % (i // 10 + 1), "power": "mains",
                         "checkpoint_id": ""})
        else:
            rows.append({"role": "checkin", "village": "东山村", "place": "cp-d%03d" % (i + 1), "name": "村口",
                         "group": "", "power": "mains", "checkpoint_id": str(100 + i)})
    return rows


CUT_MODES = ("reply", "request", "mid-request", "mid-reply")


class CutAt:
    """NullModem.cable hook: the cable goes dead at a chosen byte; `mend()` plugs it back. Modes
    (arm(mode, k)): "reply" after the board's k-th reply line; "request" once the k+1-th request
    reached the board, before its reply; "mid-request" half way through the k+1-th request line;
    "mid-reply" 12 bytes into the k+1-th reply line (tools/tests/test_deploy_resume.py)."""

    def __init__(self):
        self.cut_at = None          # (mode, k) or None: no cut
        self.dead = threading.Event()
        self._replies = self._requests = 0
        self._rx = self._tx = 0     # bytes into the current line, from / to the board

    def arm(self, mode, k):
        if mode not in CUT_MODES:
            raise ValueError(mode)
        self._replies = self._requests = self._rx = self._tx = 0
        self.cut_at = (mode, k)
        self.dead.clear()
        if mode == "reply" and k == 0:
            self.dead.set()

    def mend(self):
        self.cut_at = None
        self.dead.clear()

    def _cut(self, data, at):
        self.dead.set()
        return data[:at]

    def __call__(self, data, from_board):
        if self.dead.is_set():
            return b""                  # the cable is out: bytes go nowhere
        if self.cut_at is None:
            return data
        mode, k = self.cut_at
        for i, b in enumerate(data):
            if from_board:
                if self._rx == 0 and mode == "request" and self._requests > k:
                    return self._cut(data, i)
                self._rx += 1
                if mode == "mid-reply" and self._replies == k and self._rx == 12:
                    return self._cut(data, i + 1)
                if b == 10:
                    self._replies += 1
                    self._rx = 0
                    if mode == "reply" and self._replies >= k:
                        return self._cut(data, i + 1)   # this reply still gets through; nothing after it
            else:
                if self._tx == 0 and b != 10:        # a request line starts (blank lines are no request)
                    self._requests += 1
                    if mode == "mid-request" and self._requests == k + 1:
                        nl = data.find(b"\n", i)
                        return self._cut(data, i + ((nl if nl >= 0 else len(data)) - i) // 2)
                self._tx = 0 if b == 10 else self._tx + 1
        return data


class PowerOn:
    """A board resets itself after `reboot` (on a host board the process exits with status 3): this
    powers it on again, as a real board's reset does."""

    def __init__(self, hb):
        self.hb = hb
        self.resets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            proc = self.hb.proc
            if proc is not None and proc.poll() == 3:
                self.resets += 1
                self.hb.restart()
            self._stop.wait(0.05)   # polling the process: no exit notification to wait on

    def close(self):
        self._stop.set()
        self._thread.join(5)


def other_firmware(code):
    """A host board's code directory holding this tool's image under another firmware hash (what
    a board flashed with an earlier release looks like to deploy); returns the directory."""
    import shutil

    from tools import flash

    shutil.copytree(flash.build_image("host"), code)
    with open(os.path.join(code, flash.FW_HASH_FILE), "w", encoding="ascii") as f:
        f.write("0123456789abcdef\n")
    return code


def outbox_seqs(flash):
    """Seqs of the event records in a unit's outbox file (outbox.py record layout), in file order."""
    import struct

    with open(os.path.join(str(flash), "data", "outbox.log"), "rb") as f:
        raw = f.read()
    out, removed, i = [], set(), 0
    while i + 8 <= len(raw):
        magic, kind, n = struct.unpack(">BBH", raw[i:i + 4])
        if magic != 0xFA:
            break
        payload = raw[i + 4:i + 4 + n]
        if kind == 0x45:
            out.append(struct.unpack(">I", payload[:4])[0])
        elif kind == 0x41:
            removed.add(struct.unpack(">I", payload[:4])[0])
        i += 8 + n
    return [s for s in out if s not in removed]


class DeployRig:
    def __init__(self, work, boards=3, checkins=0, other_firmware=False):
        self.work = str(work)
        self.n = boards
        # other_firmware: every board's code is a directory holding an image with another hash,
        # so that deploy flashes each one (hash read-back, reset) before keying it
        self.other_firmware = other_firmware
        self.powers = []
        self.rows = plan_rows(boards, checkins)
        self.ports_dir = os.path.join(self.work, "ports")
        self.broker = None
        self.modems = []
        self.boards = []

    def start(self):
        from gateway.broker import ProjectBroker
        from gateway.config import write_config
        from gateway.registry import Registry

        os.makedirs(self.ports_dir, exist_ok=True)
        self.broker = ProjectBroker(os.path.join(self.work, "broker")).start()
        self.config_path = write_config(os.path.join(self.work, "gateway.toml"), {
            "gateway": {"data_dir": os.path.join(self.work, "gw"), "plugins": []},
            "broker": {"manage": False, "workdir": self.broker.workdir, "port": self.broker.port,
                       "tls_port": self.broker.tls_port, "hostnames": ["localhost"]},
            "metrics": {"port": 0}, "log": {"format": "text"}})
        os.makedirs(os.path.join(self.work, "gw"), mode=0o700, exist_ok=True)
        self.db_path = os.path.join(self.work, "gw", "gateway.db")
        self.master_key = os.path.join(self.work, "gw", "master.key")
        reg = Registry(self.db_path, self.master_key)
        try:
            for pid, level, parent in PLACES:
                reg.add_place(pid, level, pid, parent)
            for r in self.rows:
                reg.add_place(r["place"], "household" if r["role"] == "alarm" else "checkpoint", r["name"], "grid-east")
        finally:
            reg.close()
        for i in range(self.n):
            nm = NullModem()
            self.modems.append(nm)
            name = os.path.join(self.work, "board%02d" % i)
            if self.other_firmware:
                code = other_firmware(name + "-code")
                hb = HostBoard(name, console=nm.board_fd, hwid="hb-%s-%02d" % (os.path.basename(self.work)[-6:], i),
                               args=FAST, image=code)
            else:
                hb = HostBoard(name, heap=board_heap(), console=nm.board_fd,
                               hwid="hb-%s-%02d" % (os.path.basename(self.work)[-6:], i), args=FAST)
            self.boards.append(hb)
        for hb in self.boards:
            hb.start()
            if self.other_firmware:
                self.powers.append(PowerOn(hb))     # the flash ends in a reset
        return self

    def plug(self, i):
        link = self.link(i)
        if not os.path.lexists(link):
            os.symlink(self.modems[i].port, link)
        return link

    def unplug(self, i):
        if os.path.lexists(self.link(i)):
            os.unlink(self.link(i))

    def link(self, i):
        return os.path.join(self.ports_dir, "ttyFQ%02d" % i)

    def write_plan(self, rows=None, name="plan.csv"):
        import csv

        from tools.deploy import COLUMNS

        path = os.path.join(self.work, name)
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows or self.rows)
        return path

    def deploy_args(self, plan, *extra):
        return ["deploy", plan, "--port", "auto", "--port-glob", os.path.join(self.ports_dir, "*"),
                "--gateway-config", self.config_path, "--wait-s", "0"] + list(extra)

    def close(self):
        for power in self.powers:
            power.close()
        for hb in self.boards:
            try:
                hb.stop()
            except Exception:  # noqa: BLE001 - teardown goes on to the others
                pass
        for nm in self.modems:
            nm.close()
        if self.broker is not None:
            self.broker.stop()


# -- `fengqiao bench deploy` ---------------------------------------------------------------------
HELP = "seconds per board of `fengqiao deploy` over N host boards on ptys (identify, self-test, key, register)"


def add_arguments(p):
    p.add_argument("--boards", type=int, action="append", help="boards in one plan (repeatable; default 10 and 50)")
    p.add_argument("--labels", action="store_true", help="also draw the labels (PNG/SVG, A4 sheet) at the end")
    p.add_argument("--flash", action="store_true", help="every board starts with other firmware (another hash), so "
                                                        "deploy flashes it too (code directory, hash read-back, reset)")
    p.add_argument("--online", action="store_true", help="then start the gateway, boot every board and press every "
                                                         "alarm button: all must come online and be accepted")


def run(args):
    import contextlib
    import io
    import json
    import statistics
    import tempfile
    import time

    from tools.cli import main

    results = {}
    for n in args.boards or [10, 50]:
        with tempfile.TemporaryDirectory(prefix="fq-bench-deploy-") as work:
            t0 = time.monotonic()
            rig = DeployRig(work, boards=n, checkins=n // 10, other_firmware=args.flash).start()
            started = time.monotonic() - t0
            try:
                plan = rig.write_plan()
                for i in range(n):
                    rig.plug(i)
                extra = ["--labels", os.path.join(work, "labels")] if args.labels else []
                out = io.StringIO()
                t1 = time.monotonic()
                with contextlib.redirect_stdout(out):
                    rc = main(rig.deploy_args(plan, *extra))
                wall = time.monotonic() - t1
                with open(plan + ".state.json", encoding="utf-8") as f:
                    rows = json.load(f)["rows"]
                flashed = sum(1 for line in out.getvalue().splitlines() if "every file verified by hash read-back" in line)
                online = check_online(rig) if args.online else None
            finally:
                rig.close()
        secs = sorted(r["seconds"] for r in rows.values() if r.get("status") == "done")
        done = len(secs)
        r = {"boards": n, "done": done, "exit": rc, "per_board_s_mean": round(statistics.mean(secs), 2) if secs else None,
             "per_board_s_p50": secs[len(secs) // 2] if secs else None, "per_board_s_max": secs[-1] if secs else None,
             "run_wall_s": round(wall, 1), "run_wall_per_board_s": round(wall / n, 2),
             "boards_start_s": round(started, 1), "labels": bool(args.labels), "online": online,
             "flashed": flashed}
        results[str(n)] = r
        print("deploy %d boards: %d done, %d flashed, per board mean %.2f s, p50 %.2f s, max %.2f s; whole run %.1f s "
              "(%.2f s/board%s%s); %d host boards started in %.1f s (not counted)"
              % (n, done, flashed, r["per_board_s_mean"] or 0, r["per_board_s_p50"] or 0, r["per_board_s_max"] or 0, wall,
                 wall / n, ", flashing included" if args.flash else "", ", labels included" if args.labels else "",
                 n, started))
        if online:
            print("  then: %d/%d boards online at the gateway in %.1f s; %d/%d alarms accepted in %.1f s"
                  % (online["online"], n, online["online_s"], online["alarms"], online["alarm_boards"], online["alarm_s"]))
    load = os.getloadavg()
    print("load average %.2f %.2f %.2f, %d CPUs; goal <= 20 s per board (flashing apart)" % (load + (os.cpu_count(),)))
    print(json.dumps({"deploy": results, "flash": bool(args.flash), "loadavg": [round(x, 2) for x in load],
                      "cpus": os.cpu_count()}))
    return 0


def check_online(rig, timeout_s=120):
    """Start the gateway on the rig's config, boot every deployed board (deploy rebooted it) and press
    every alarm button; {online, online_s, alarms, alarm_boards, alarm_s}. WaitTimeout if any is missing."""
    import json
    import time

    from gateway.cli import GatewayApp
    from gateway.config import load_config
    from tools.testing.procs import wait_for

    ids = {}
    for hb in rig.boards:
        with open(os.path.join(hb.flash_dir, "data", "identity.cfg"), "rb") as f:
            ids[hb] = json.loads(f.read().split(b"\n")[0])
    app = GatewayApp(load_config(rig.config_path))
    app.start()
    try:
        t0 = time.monotonic()
        for hb in rig.boards:
            hb.wait_exit(10)
            hb.restart()

        def seen(kind):
            return {e.device_id for e in app.store.events_after(0, 100000) if e.kind == kind}

        want = {c["device_id"] for c in ids.values()}
        wait_for(lambda: seen("boot") >= want, timeout_s, "every deployed board's boot frame at the gateway")
        online_s = time.monotonic() - t0
        alarm = {hb: c["device_id"] for hb, c in ids.items() if c["role"] == "alarm"}
        t1 = time.monotonic()
        for hb in alarm:
            hb.hold(1300)
        wait_for(lambda: seen("alarm") >= set(alarm.values()), timeout_s, "every alarm accepted at the gateway")
        return {"online": len(seen("boot") & want), "online_s": round(online_s, 1), "alarms": len(seen("alarm")),
                "alarm_boards": len(alarm), "alarm_s": round(time.monotonic() - t1, 1)}
    finally:
        app.stop()
