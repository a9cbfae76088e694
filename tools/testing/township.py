"""A whole township as separate processes, for fault tests and end-to-end benchmarks.

    t = FaultTownship(work_dir, boards=2).start()   # county broker + recorder, project broker,
                                                    # gateway process, host boards behind a proxy
    t.tap(device_id)            # a card on a check-in point; returns when the unit shows "stored"
    t.power_cut(device_id); t.power_on(device_id)   # a board's power (kill -9, then boot again)
    b = t.burst(10)             # 10 taps on every board, in threads; b.wait_shown(k); b.join()
    t.kill9_broker(); t.start_broker()
    t.kill9_gateway(); t.start_gateway()
    t.county.stop(); t.county.start()
    t.proxy.drop() / .half_open() / .set_delay(ms) / .set_down(True)   (the villages' Wi-Fi)
    t.check_invariant()         # the fault suite's one invariant (below); raises InvariantBroken
    t.close()

Processes: the county's Mosquitto (persistence on, so the recorder's session survives its
restart) and `gateway.county.CountyRecorder` in this process; the project's Mosquitto
(gateway/broker.py: TLS, per-device passwords, ACL, its persistence settings) run HERE so it can be
killed with -9 by pid; the gateway as its own process (`python -m gateway.cli run --config F`,
`[broker] manage = false`) so it can be killed with -9 too; host boards (tools/hostboard.py, the
real firmware on the MicroPython VM, 64 KB heap) reach the broker's TLS port through
tools/testing/proxy.FlakyProxy.

A board that reboots itself (the supervisor after 5 MemoryErrors in a row: exit status 3 on the
host board, firmware/supervisor.py) is powered on again by the township, as a board's reset
comes back by itself: `tap` and `wait_settled` bring such a board up (counted in `reboots`); a
board whose power a test cut stays off until `power_on`.

Devices are check-in points: a tapped card is the one event a person sees stored on the unit
itself (amber flash + beep as soon as it is on flash, firmware/checkin_point.py), with no network;
that makes "every event a device showed as stored" exact. Every card has its own UID, so each
event is recognisable at the gateway and at the county.

The invariant (check_invariant), for every device:
- every tap the unit showed as stored is stored exactly once at the gateway and exactly once at the
  county, with the same frame bytes;
- nothing is stored that was not tapped; no (device, key id, seq) twice;
- per-device order: the stored check-ins ordered by seq are in the order they were tapped (a tap
  cut by a power cut before it showed "stored" may be missing, never reordered), and the county
  has each device's events in the gateway's event order;
- the county recorder saw no fork, and `fengqiao verify` passes on the county's file with the
  gateway public key and the device keys (device MACs checked).
"""

import collections
import contextlib
import io
import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from tools.testing.procs import REPO_ROOT, WaitTimeout, free_port, wait_for

AMBER = (1, 1, 0)   # the check-in point's "stored on the unit" flash (firmware/drivers/led.py)
GATEWAY_ID = "hil"
COUNTY_TOPIC = "fq/v1/county/hil"
FIRST_DEVICE = 0x0601
REBOOT_EXIT = 3     # a host board's machine.reset(): the supervisor's reboot (firmware/boards/host.py)
BOARD_ARGS = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000", "--failing-s", "4", "--keepalive-s", "6"]

COUNTY_CONF = """listener {port} 127.0.0.1
allow_anonymous true
user %s
persistence true
persistence_location {workdir}/
autosave_interval 1
""" % pwd.getpwuid(os.getuid()).pw_name


class InvariantBroken(AssertionError):
    """An event shown as stored is missing, doubled, reordered, or the county copy does not verify."""


class GatewayExited(RuntimeError):
    """The gateway process stopped during start-up; the message carries its log tail."""


def _toml(d):
    out = []
    for section, values in d.items():
        out.append("[%s]" % section)
        for k, v in values.items():
            out.append("%s = %s" % (k, json.dumps(v)))
        out.append("")
    return "\n".join(out)


class Burst:
    """Taps on several boards at once, each in its own thread (see FaultTownship.burst)."""

    def __init__(self, township, count, boards):
        self.t = township
        self.count = count          # None: tap until stop()
        self.errors = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(d,), daemon=True) for d in boards]
        for th in self.threads:
            th.start()

    def _run(self, device_id):
        try:
            i = 0
            while (self.count is None or i < self.count) and not self._stop.is_set():
                self.t.tap(device_id)
                i += 1
        except Exception as exc:  # reported by join(): a thread's failure must fail the test
            self.errors.append((device_id, exc))

    def shown(self):
        return sum(len(v) for v in self.t.shown.values())

    def wait_shown(self, n, timeout_s=60):
        return wait_for(lambda: self.shown() >= n or self.errors or not any(t.is_alive() for t in self.threads),
                        timeout_s, "%d taps shown as stored (%d so far)" % (n, self.shown()))

    def stop(self):
        self._stop.set()
        return self.join()

    def join(self, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        for th in self.threads:
            th.join(max(0.1, deadline - time.monotonic()))
        if any(th.is_alive() for th in self.threads):
            raise WaitTimeout("burst of %s taps per board not done in %.0f s" % (self.count, timeout_s))
        if self.errors:
            dev, exc = self.errors[0]
            raise AssertionError("tapping on board %08x failed: %s: %s" % (dev, type(exc).__name__, exc)) from exc


class FaultTownship:
    def __init__(self, work, boards=2, data_dir=None, checkin_repeat_s=2, tls=True):
        self.work = os.path.abspath(str(work))
        # The boards' MQTT over TLS (the broker's TLS port behind the proxy) or plain TCP.
        self.tls = tls
        # How long a unit remembers a card (firmware/checkin_point.py, default 600 s). Short here:
        # every tap is a new card, and a unit remembering dozens of them within 600 s is not
        # what a patrol does (a few members per round).
        self.checkin_repeat_s = checkin_repeat_s
        os.makedirs(self.work, exist_ok=True)
        self.n_boards = boards
        self.data_dir = os.path.abspath(data_dir or os.path.join(self.work, "gw"))
        self.config_path = os.path.join(self.work, "gateway.toml")
        self.db_path = os.path.join(self.data_dir, "gateway.db")
        self.county_path = os.path.join(self.work, "county.jsonl")
        self.gateway_log = os.path.join(self.work, "gateway.log")
        self.county = self.recorder = self.broker = self.proxy = self.gateway = None
        self.boards = {}     # device_id -> HostBoard
        self.keys = {}       # device_id -> 32-byte key
        self.tapped = collections.defaultdict(list)   # device_id -> [uid hex] in tap order
        self.shown = collections.defaultdict(list)    # device_id -> [uid hex] the unit showed stored
        self.not_taken = collections.defaultdict(list)  # device_id -> [uid hex] tapped, no "stored" shown
        self.control_errors = collections.Counter()    # device_id -> control replies lost in the board
        self.reboots = collections.Counter()           # device_id -> reboots of its own (exit 3) powered on again
        self._cut = set()                              # device ids whose power a test cut
        self._power = threading.Lock()                 # power_cut / power_on / reboot revival, one at a time
        self._uid = 0x10000000
        self._uid_lock = threading.Lock()
        self._log_fh = None

    # -- set-up ------------------------------------------------------------------------------
    def start(self):
        from gateway.broker import ProjectBroker
        from gateway.county import CountyRecorder
        from tools.testing.mosquitto import MosquittoProcess
        from tools.testing.proxy import FlakyProxy

        self.county = MosquittoProcess(os.path.join(self.work, "county"), COUNTY_CONF).start()
        self.recorder = CountyRecorder("127.0.0.1", self.county.port, COUNTY_TOPIC, self.county_path,
                                       client_id="fq-county-hil-%d" % os.getpid()).start()
        port, tls_port = free_port(), free_port()
        self.broker = ProjectBroker(os.path.join(self.work, "broker"), port=port, tls_port=tls_port,
                                    bind="127.0.0.1")
        self.broker.setup()
        raw = {
            "gateway": {"data_dir": self.data_dir, "plugins": ["gateway.upstream"]},
            "broker": {"manage": False, "workdir": self.broker.workdir, "host": "127.0.0.1", "port": port,
                       "tls_port": tls_port, "bind": "127.0.0.1"},
            "metrics": {"enabled": False},
            "log": {"level": "info", "format": "text"},
            "upstream": {"gateway_id": GATEWAY_ID, "host": "127.0.0.1", "port": self.county.port,
                         "topic": COUNTY_TOPIC, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        }
        with open(self.config_path, "w") as f:
            f.write(_toml(raw))
        self._register_devices()
        self.broker.start()
        self.proxy = FlakyProxy("127.0.0.1", tls_port if self.tls else port).start()
        self.start_gateway()
        self._write_verify_inputs()
        for device_id in self.keys:
            self._start_board(device_id)
        return self

    def _register_devices(self):
        from gateway.cli import GatewayApp
        from gateway.config import load_config

        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        reg = GatewayApp(load_config(self.config_path)).open_registry()
        try:
            for i in range(self.n_boards):
                device_id = FIRST_DEVICE + i
                key = reg.add_device(device_id, "checkpoint", None, heartbeat_interval_s=30)
                self.keys[device_id] = key
                self.broker.add_device(device_id, key, reload=False)
        finally:
            reg.close()
        with open(os.path.join(self.work, "device-keys.json"), "w") as f:
            json.dump({"%08x" % d: k.hex() for d, k in self.keys.items()}, f)

    def _write_verify_inputs(self):
        from gateway.keys import SigningKey

        key_path = os.path.join(self.data_dir, "upstream_signing_key.pem")
        wait_for(lambda: os.path.exists(key_path), 10, "the gateway's upstream signing key %s" % key_path)
        with open(os.path.join(self.work, "gateway.pub"), "w") as f:
            f.write(SigningKey.load_or_create(key_path).public_pem())

    def _start_board(self, device_id):
        return self.boot_board(device_id, "board", {
            "role": "checkin", "broker_port": self.proxy.port, "checkpoint_id": 100 + (device_id & 0xFF),
            "settings": {"checkin_repeat_s": self.checkin_repeat_s}}, tls=self.tls)

    def boot_board(self, device_id, name, cfg, tls=True):
        """Provision a host board (its identity: this township's key for device_id, TLS with the
        broker's CA unless not tls, plus `cfg`: role, broker_port, ...) in work/<name>-<id>, start
        it and wait for its boot frame at the gateway; the HostBoard, also in self.boards."""
        from tools.hostboard import HostBoard, board_heap, provision_dir

        flash = os.path.join(self.work, "%s-%08x" % (name, device_id))
        identity = {"device_id": device_id, "key": self.keys[device_id], "broker_host": "127.0.0.1", "tls": tls}
        if tls:
            with open(self.broker.ca_path) as f:
                identity["ca_pem"] = f.read()
        identity.update(cfg)
        provision_dir(flash, identity)
        hb = self.boards[device_id] = HostBoard(flash, heap=board_heap(), args=BOARD_ARGS).start()
        wait_for(lambda: self.device_rows(device_id, "boot"), 60, "%s %08x's boot frame at the gateway" % (name, device_id))
        return hb

    def close(self):
        for hb in self.boards.values():
            hb.stop()
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(10)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()
        if self._log_fh:
            self._log_fh.close()
        for part in (self.proxy, self.broker, self.recorder, self.county):
            if part is not None:
                part.stop()

    # -- the gateway process -------------------------------------------------------------------
    def start_gateway(self, timeout_s=30, args=()):
        """Start `gateway run` and wait for "gateway running" in its log; GatewayExited if it stops."""
        if self.gateway is not None and self.gateway.poll() is None:
            raise RuntimeError("the gateway is already running (pid %d)" % self.gateway.pid)
        if self._log_fh:
            self._log_fh.close()
        offset = os.path.getsize(self.gateway_log) if os.path.exists(self.gateway_log) else 0
        self._log_fh = open(self.gateway_log, "ab")
        self.gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", self.config_path]
                                        + list(args), cwd=REPO_ROOT, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

        def running():
            text = self.gateway_log_text(offset)
            if "gateway running" in text:
                return True
            if self.gateway.poll() is not None:
                raise GatewayExited("the gateway exited with status %s:\n%s" % (self.gateway.returncode, text[-3000:]))
            return False
        wait_for(running, timeout_s, "the gateway process to connect (log %s)" % self.gateway_log, interval_s=0.05)
        return self.gateway

    def run_gateway_expecting_refusal(self, timeout_s=30, args=()):
        """Start `gateway run`; it must exit on its own: (exit status, its output)."""
        offset = os.path.getsize(self.gateway_log) if os.path.exists(self.gateway_log) else 0
        try:
            self.start_gateway(timeout_s, args)
        except GatewayExited:
            return self.gateway.returncode, self.gateway_log_text(offset)
        raise AssertionError("the gateway started where it should have refused:\n%s" % self.gateway_log_text(offset))

    def gateway_log_text(self, offset=0):
        with open(self.gateway_log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def kill9_gateway(self):
        os.kill(self.gateway.pid, signal.SIGKILL)
        self.gateway.wait(10)

    def stop_gateway(self):
        self.gateway.terminate()
        self.gateway.wait(15)

    def gateway_cli(self, *args):
        """Run `fengqiao gateway ARGS --config F` as a process; (status, output)."""
        r = subprocess.run([sys.executable, "-m", "gateway.cli"] + list(args[:1]) + ["--config", self.config_path]
                           + list(args[1:]), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr

    # -- the project broker --------------------------------------------------------------------
    def kill9_broker(self):
        pid = self.broker.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.broker.running(), 10, "the killed broker (pid %d) to be gone" % pid)
        self.broker.stop()   # only tidies up: the process is gone

    def start_broker(self):
        self.broker.start()

    # -- devices -------------------------------------------------------------------------------
    def power_cut(self, device_id):
        """The board's power goes (kill -9); it stays off until power_on()."""
        with self._power:
            self._cut.add(device_id)
            self.boards[device_id].kill9()

    def power_on(self, device_id, timeout_s=30):
        with self._power:
            self._cut.discard(device_id)
            self.boards[device_id].restart(timeout_s)

    def revive_rebooted(self, device_id, timeout_s=30):
        """Power a board on again if it rebooted itself (exit status 3); True if it is running."""
        hb = self.boards[device_id]
        with self._power:
            if hb.alive:
                return True
            if device_id in self._cut or hb.proc is None or hb.proc.returncode != REBOOT_EXIT:
                return False
            self.reboots[device_id] += 1
            hb.restart(timeout_s)
            return True

    def next_uid(self):
        with self._uid_lock:
            self._uid += 1
            return "%08x" % self._uid

    def tap(self, device_id, timeout_s=5, tries=3):
        """A new card on this check-in point; returns its UID once the unit flashed "stored".

        A card the unit does not take (no amber flash within timeout_s: it was busy, or refused
        it, e.g. a MemoryError in the firmware) is what a patrol member sees as "no beep": it is
        noted in `not_taken` and the next card is tried, as a person would; after `tries` such
        cards in a row the unit is taken to be dead (WaitTimeout). A unit that rebooted itself
        meanwhile is powered on again and counts as a new unit: its misses before the reboot do
        not count against it (at most `tries` reboots per tap)."""
        from tools.hostboard import HostBoardError

        hb = self.boards[device_id]
        misses = reboots = 0
        while True:
            uid = None
            try:
                wait_for(lambda: hb.led() != AMBER, timeout_s, "board %08x's previous amber flash to end" % device_id)
                since = hb.request("led", since=1 << 30)["count"]
                uid = self.next_uid()
                self.tapped[device_id].append(uid)
                hb.card(uid)
                wait_for(lambda: any(v == AMBER for _t, v in hb.led_history(since=since)), timeout_s,
                         "board %08x to show card %s stored (amber flash)" % (device_id, uid))
            except (WaitTimeout, HostBoardError) as exc:
                if uid is not None:
                    self.not_taken[device_id].append(uid)
                if isinstance(exc, HostBoardError):
                    if not hb.alive:
                        if not self.revive_rebooted(device_id):
                            raise         # the power is off (a power-cut test): not a retry
                        reboots += 1
                        if reboots > tries:
                            raise
                        misses = 0        # a unit just booted: a fresh start for the patrol member
                        continue
                    # a control reply lost inside the board (e.g. a MemoryError in its poll):
                    # this tap's outcome is unknown, so it is not counted as shown; the next card
                    # waits until the unit answers again (or reboots), as a person waits for a
                    # unit that shows nothing, instead of three misses within milliseconds
                    self.control_errors[device_id] += 1
                    try:
                        wait_for(lambda: self._answers(device_id), 30,
                                 "board %08x to answer its control channel again" % device_id)
                    except WaitTimeout:
                        raise exc
                misses += 1
                if misses == tries:
                    raise
                continue
            self.shown[device_id].append(uid)
            return uid

    def _answers(self, device_id):
        """True once the board answers a ping; a board that rebooted itself is powered on first."""
        from tools.hostboard import HostBoardError

        hb = self.boards[device_id]
        if not hb.alive and not self.revive_rebooted(device_id):
            raise HostBoardError("board %08x is off (its power was cut)" % device_id)
        try:
            hb.ping()
        except HostBoardError:
            return False
        return True

    def board_log_count(self, text):
        """How many lines of all board logs contain `text` (e.g. "MemoryError")."""
        total = 0
        for hb in self.boards.values():
            try:
                with open(hb.log_path, "rb") as f:
                    total += sum(1 for line in f if text.encode() in line)
            except OSError:
                pass
        return total

    def burst(self, count, boards=None):
        return Burst(self, count, list(boards or self.boards))

    # -- what the gateway and the county hold -------------------------------------------------
    def _db(self):
        db = sqlite3.connect(self.db_path, timeout=30)
        db.execute("PRAGMA query_only = 1")
        return db

    def device_rows(self, device_id=None, kind=None):
        """[(event_id, device_id, key_id, seq, kind, body, frame)] of device events, in event order."""
        if not os.path.exists(self.db_path):
            return []
        q = "SELECT event_id, device_id, key_id, seq, kind, body, frame FROM events WHERE source = 'device'"
        params = []
        if device_id is not None:
            q += " AND device_id = ?"
            params.append(device_id)
        if kind is not None:
            q += " AND kind = ?"
            params.append(kind)
        db = self._db()
        try:
            return db.execute(q + " ORDER BY event_id", params).fetchall()
        except sqlite3.OperationalError:   # no table yet (a gateway that is just creating its store)
            return []
        finally:
            db.close()

    def head(self):
        db = self._db()
        try:
            return db.execute("SELECT COALESCE(MAX(event_id), 0) FROM events").fetchone()[0]
        finally:
            db.close()

    def stored_uids(self, device_id):
        import cbor2

        return [(seq, cbor2.loads(body)[1].hex()) for _e, _d, _k, seq, _kind, body, _f
                in self.device_rows(device_id, "checkin")]

    def county_envelopes(self):
        from gateway import envelope

        with open(self.county_path, encoding="utf-8") as f:
            return [envelope.loads(line) for line in f if line.strip()]

    # -- the invariant -------------------------------------------------------------------------
    def wait_settled(self, timeout_s=60):
        """Until every shown tap is at the gateway and every gateway event at the county."""
        def at_gateway():
            for device_id in self.boards:   # a board that rebooted itself still holds its outbox
                self.revive_rebooted(device_id)
            missing = self._missing_at_gateway()
            return not missing
        try:
            wait_for(at_gateway, timeout_s, "every tap shown as stored to reach the gateway", interval_s=0.1)
        except WaitTimeout as exc:
            raise InvariantBroken("%s; missing (device: uids): %s" % (exc, self._missing_at_gateway())) from exc
        head = self.head()
        wanted = set("%s:%d" % (GATEWAY_ID, i) for i in range(1, head + 1))
        try:
            wait_for(lambda: wanted <= set(self.recorder.ids), timeout_s,
                     "the county to have every gateway event up to %d" % head, interval_s=0.1)
        except WaitTimeout as exc:
            raise InvariantBroken("%s; missing at the county: %s" % (
                exc, sorted(wanted - set(self.recorder.ids), key=lambda s: int(s.split(":")[1]))[:20])) from exc

    def _missing_at_gateway(self):
        out = {}
        for device_id, uids in self.shown.items():
            have = set(u for _s, u in self.stored_uids(device_id))
            lost = [u for u in uids if u not in have]
            if lost:
                out["%08x" % device_id] = lost
        return out

    def check_invariant(self, timeout_s=60):
        """Wait until settled, then check the invariant in the module docstring; returns a summary."""
        self.wait_settled(timeout_s)
        problems = []
        gw_rows = self.device_rows()
        by_key = collections.Counter((d, k, s) for _e, d, k, s, _kind, _b, _f in gw_rows)
        problems += ["seq used twice at the gateway: %08x key %d seq %d" % key for key, n in by_key.items() if n > 1]
        for device_id in self.keys:
            stored = self.stored_uids(device_id)
            uids = [u for _s, u in stored]
            count = collections.Counter(uids)
            for uid in self.shown[device_id]:
                if count[uid] != 1:
                    problems.append("%08x: card %s shown stored, at the gateway %d times" % (device_id, uid, count[uid]))
            strays = [u for u in count if u not in self.tapped[device_id]]
            if strays:
                problems.append("%08x: stored but never tapped: %s" % (device_id, strays))
            by_seq = [u for _s, u in sorted(stored)]
            order = {u: i for i, u in enumerate(self.tapped[device_id])}
            ranks = [order.get(u, -1) for u in by_seq]
            if ranks != sorted(ranks):
                problems.append("%08x: check-ins by seq are not in tap order: %s" % (device_id, by_seq))
        envs = self.county_envelopes()
        if self.recorder.forks:
            problems.append("county recorder saw %d forked envelope id(s): %s" % (self.recorder.forks,
                                                                                self.recorder.fork_ids[:10]))
        county_dev = collections.defaultdict(list)
        for env in envs:
            if env["source"] == "device":
                county_dev[(env["device_id"], env["key_id"], env["seq"])].append(env)
        for e, d, k, s, kind, _b, fr in gw_rows:
            copies = county_dev.get((d, k, s), [])
            if len(copies) != 1:
                problems.append("%08x seq %d (event %d): %d copies at the county" % (d, s, e, len(copies)))
            elif copies[0]["event_id"] != e or bytes.fromhex(copies[0]["frame"]) != bytes(fr):
                problems.append("%08x seq %d: county copy is event %d / other frame, gateway has event %d"
                                % (d, s, copies[0]["event_id"], e))
        for device_id in self.keys:
            gw_order = [e for e, d, *_rest in gw_rows if d == device_id]
            county_order = [env["event_id"] for env in envs if env["source"] == "device" and env["device_id"] == device_id]
            if county_order != gw_order:
                problems.append("%08x: county order %s != gateway order %s" % (device_id, county_order[:20], gw_order[:20]))
        status, output = self.verify()
        if status != 0:
            problems.append("fengqiao verify failed (status %s):\n%s" % (status, output))
        if problems:
            raise InvariantBroken("; ".join(problems[:20]))
        return {"shown": sum(len(v) for v in self.shown.values()), "tapped": sum(len(v) for v in self.tapped.values()),
                "not_taken": sum(len(v) for v in self.not_taken.values()),
                "board_memory_errors": self.board_log_count("MemoryError"),
                "board_reboots": sum(self.reboots.values()),
                "control_errors": sum(self.control_errors.values()),
                "gateway_events": self.head(), "county_envelopes": len(envs), "verify": output.strip().splitlines()[:1]}

    def verify(self):
        """`fengqiao verify COUNTY_FILE --pubkey gateway.pub --device-keys device-keys.json`, in process."""
        from tools.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(["verify", self.county_path, "--pubkey", os.path.join(self.work, "gateway.pub"),
                           "--device-keys", os.path.join(self.work, "device-keys.json")])
        return status, out.getvalue()
