# The host board: the same application on the MicroPython Unix port, with flash as a directory,
# the console on stdin/stdout and every part (button, tamper, LED, buzzer, battery, MFRC522 and
# card) simulated and driven through a control socket. Spec: boards/HOSTBOARD.md.
#
#     micropython -X heapsize=64k main.py --flash DIR [--control SOCK] [--hwid ID] [--single-led]
#                                         [--no-rfid] [--wdt] [--battery-mv N]
#
# Failures it survives: a control client that sends garbage (error reply, connection kept), one
# that disconnects mid-line (dropped), more clients than slots (refused politely), stdin at EOF
# (console stops polling it).

import json
import os
import select
import socket
import struct
import sys
import time

from boards import merge_wiring
from boards.stdconsole import StdConsole
from boards.wiring_host import WIRING

_HISTORY = 256  # entries kept per LED/buzzer history ring
_MAX_CLIENTS = 4
_MAX_LINE = 2048


def _ticks():
    return time.ticks_ms()


def parse_options(argv_or_options):
    opts = {"flash": "hostflash", "control": None, "hwid": None, "single_led": False,
            "no_rfid": False, "wdt": False, "battery_mv": None}
    if type(argv_or_options) is dict:
        opts.update(argv_or_options)
        return opts
    args = list(argv_or_options if argv_or_options is not None else sys.argv[1:])
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if a in ("--flash", "--control", "--hwid", "--battery-mv") and nxt is not None:
            opts[a[2:].replace("-", "_")] = nxt
            i += 2
            continue
        if a in ("--single-led", "--no-rfid", "--wdt"):
            opts[a[2:].replace("-", "_")] = True
        i += 1  # other options belong to the application
    return opts


def _mkdir(p):
    try:
        os.mkdir(p)
    except OSError:
        pass


def _read_text(p):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return None


class History:
    """The current value and a bounded, timestamped record of its changes."""

    def __init__(self, board, initial):
        self.board = board
        self.value = initial
        self.count = 0  # changes since start; entry i has index i
        self.ring = []

    def set(self, value):
        if value == self.value:
            return
        self.value = value
        self.ring.append((self.count, self.board.now_ms(), value))
        self.count += 1
        if len(self.ring) > _HISTORY:
            self.ring.pop(0)

    def since(self, index):
        return [[t, v] for (i, t, v) in self.ring if i >= index]


class HostLed:
    def __init__(self, board, is_rgb):
        self.is_rgb = is_rgb
        self.hist = History(board, (0, 0, 0))

    def rgb(self, r, g, b):
        if self.is_rgb:
            self.hist.set((1 if r else 0, 1 if g else 0, 1 if b else 0))
        else:
            v = 1 if (r or g or b) else 0
            self.hist.set((v, v, v))

    def on(self):
        self.rgb(1, 1, 1)

    def off(self):
        self.rgb(0, 0, 0)


class HostBuzzer:
    def __init__(self, board):
        self.hist = History(board, 0)

    def on(self):
        self.hist.set(1)

    def off(self):
        self.hist.set(0)


class SoftWatchdog:
    # Host stand-in for machine.WDT (only with --wdt): checked from board.poll()/idle_ms() and by a
    # thread, so a main loop that hangs outright is cut too. On expiry the process is killed the
    # way a watchdog resets a chip (SIGKILL from a shell whose parent is this process), after
    # leaving reset reason 2 (watchdog) for the next boot.
    def __init__(self, board, timeout_ms):
        self.board = board
        self.timeout_ms = timeout_ms
        self.feed()
        try:
            import _thread
            _thread.start_new_thread(self._watch, ())
        except (ImportError, OSError, RuntimeError):
            pass

    def feed(self):
        self.deadline = time.ticks_add(_ticks(), self.timeout_ms)

    def expired(self):
        return time.ticks_diff(_ticks(), self.deadline) > 0

    def fire(self):
        self.board.write_reset_reason(2)
        os.system("kill -9 $PPID")

    def _watch(self):
        while True:
            time.sleep_ms(100)
            if self.expired():
                self.fire()


class Board:
    name = "host"

    def __init__(self, argv_or_options=None):
        o = parse_options(argv_or_options)
        self.options = o
        self.wiring = merge_wiring(WIRING, {})
        self._t0 = _ticks()
        root = o["flash"]
        if not root.startswith("/"):
            root = os.getcwd() + "/" + root
        self.flash_root = root
        _mkdir(root)
        _mkdir(root + "/data")
        self._meta = root + "/.hostboard"
        _mkdir(self._meta)
        self._hwid = o["hwid"] or _read_text(self._meta + "/hwid")
        if not self._hwid:
            self._hwid = "host-" + "".join("%02x" % b for b in os.urandom(6))
            self._write_meta("hwid", self._hwid)
        rr = _read_text(self._meta + "/reset_reason")
        self._reset_reason = int(rr) if rr and rr.isdigit() else 0
        if rr is not None:
            os.remove(self._meta + "/reset_reason")
        # Simulated parts.
        self._btn_level = 0
        self._btn_script = None  # [(level, duration_ms), ...] played from _btn_t0
        self._btn_t0 = 0
        self._tamper = 0
        self._mv = int(o["battery_mv"]) if o["battery_mv"] else self.wiring["battery"]["mv"]
        self._net = True
        self.led = HostLed(self, not o["single_led"])
        self.buzzer = HostBuzzer(self)
        self.chip = None  # the simulated MFRC522, made on first use (see _sim)
        self._reader = None
        self._wdt = None
        self.console = StdConsole()
        self._poller = select.poll()
        self._stdin_registered = False
        if not self.console.closed:
            self._poller.register(self.console._in, select.POLLIN)
            self._stdin_registered = True
        self._listener = None
        self._clients = {}  # socket -> bytearray of pending input
        if o["control"]:
            self._listen(o["control"])

    # -- the board interface ----------------------------------------------------------------
    def now_ms(self):
        return time.ticks_diff(_ticks(), self._t0)

    def hardware_id(self):
        return self._hwid

    def reset_reason(self):
        return self._reset_reason

    def button(self):
        s = self._btn_script
        if s is not None:
            elapsed = time.ticks_diff(_ticks(), self._btn_t0)
            for level, dur in s:
                if elapsed < dur:
                    return level
                elapsed -= dur
            self._btn_script = None
        return self._btn_level

    def tamper(self):
        return self._tamper

    def battery_mv(self):
        return self._mv

    def _sim(self):
        if self.chip is None and not self.options["no_rfid"]:
            # Imported on first use so an alarm button (no reader) never pays the RAM for it.
            from boards.sim_mfrc522 import SimMFRC522
            self.chip = SimMFRC522(self.wiring["rfid"]["version"])
        return self.chip

    def rfid(self):
        if self._sim() is None:
            return None
        if self._reader is None:
            from drivers.mfrc522 import MFRC522
            self._reader = MFRC522(self.chip, self.chip.cs, self.chip.rst, time.sleep_ms)
        return self._reader

    def network_up(self, cfg=None):
        return self._net

    def rssi(self):
        return None

    def watchdog(self, timeout_ms):
        if not self.options["wdt"]:
            return None
        if self._wdt is None:
            self._wdt = SoftWatchdog(self, timeout_ms)
        return self._wdt

    def reboot(self):
        # A real board resets; the host board exits with status 3 and its driver restarts it.
        self.write_reset_reason(4)
        sys.exit(3)

    def poll(self):
        if self._wdt is not None and self._wdt.expired():
            self._wdt.fire()
        if self._stdin_registered and self.console.closed:
            self._poller.unregister(self.console._in)
            self._stdin_registered = False
        if self._listener is not None:
            for obj, ev in self._poller.poll(0):
                self._service(obj, ev)

    def idle_ms(self, ms):
        """Sleep up to ms, waking at once for control or console input."""
        if self._stdin_registered and self.console.closed:
            self._poller.unregister(self.console._in)
            self._stdin_registered = False
        if self._listener is None and not self._stdin_registered:
            time.sleep_ms(ms)
        else:
            self._poller.poll(ms)
        self.poll()

    # -- helpers ------------------------------------------------------------------------------
    def _write_meta(self, name, text):
        with open(self._meta + "/" + name, "w") as f:
            f.write(text)

    def write_reset_reason(self, reason):
        self._write_meta("reset_reason", str(reason))

    # -- control socket -----------------------------------------------------------------------
    def _listen(self, path):
        try:
            os.remove(path)
        except OSError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The Unix port takes a raw struct sockaddr_un: sa_family (native u16) + path + NUL.
        s.bind(struct.pack("H", socket.AF_UNIX) + path.encode() + b"\x00")
        s.listen(_MAX_CLIENTS)
        s.setblocking(False)
        self._listener = s
        self._poller.register(s, select.POLLIN)

    def _service(self, obj, ev):
        if obj is self._listener:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if len(self._clients) >= _MAX_CLIENTS:
                conn.send(b'{"ok": false, "error": "too many clients"}\n')
                conn.close()
                return
            conn.setblocking(False)
            self._clients[conn] = bytearray()
            self._poller.register(conn, select.POLLIN)
            return
        if obj not in self._clients:
            return  # stdin: the console reads it itself
        try:
            data = obj.recv(512)
        except OSError:
            data = b""
        if not data:
            self._drop(obj)
            return
        buf = self._clients[obj]
        buf.extend(data)
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > _MAX_LINE:
                    self._reply(obj, {"ok": False, "error": "line too long"})
                    buf[:] = b""
                break
            line = bytes(buf[:nl])
            buf[:] = buf[nl + 1:]
            if line.strip():
                self._reply(obj, self._handle(line))

    def _drop(self, conn):
        try:
            self._poller.unregister(conn)
        except (OSError, ValueError, KeyError):
            pass
        self._clients.pop(conn, None)
        conn.close()

    def _reply(self, conn, obj):
        data = json.dumps(obj).encode() + b"\n"
        conn.setblocking(True)
        try:
            while data:
                n = conn.send(data)
                data = data[n:]
        except OSError:
            self._drop(conn)
            return
        conn.setblocking(False)

    def _handle(self, line):
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "bad json"}
        if type(req) is not dict or type(req.get("op")) is not str:
            return {"ok": False, "error": "need an object with op"}
        handler = getattr(self, "_op_" + req["op"], None)
        if handler is None:
            return {"ok": False, "error": "unknown op %s" % req["op"]}
        try:
            out = handler(req)
        except (ValueError, TypeError, KeyError) as e:
            return {"ok": False, "error": "bad arguments for %s: %r" % (req["op"], e)}
        res = {"ok": True, "now_ms": self.now_ms()}
        if out:
            res.update(out)
        return res

    # -- control operations (see HOSTBOARD.md) -----------------------------------------------
    def _op_ping(self, req):
        return {"hwid": self._hwid, "flash": self.flash_root}

    def _op_press(self, req):
        self._btn_script = None
        self._btn_level = 1

    def _op_release(self, req):
        self._btn_script = None
        self._btn_level = 0

    def _op_hold(self, req):
        self._op_button_script({"steps": [[1, int(req["ms"])]]})

    def _op_button_script(self, req):
        steps = []
        for level, ms in req["steps"]:
            steps.append((1 if level else 0, int(ms)))
        self._btn_level = 0
        self._btn_t0 = _ticks()
        self._btn_script = steps

    def _op_card(self, req):
        if self._sim() is None:
            raise ValueError("board started with --no-rfid")
        uid = req.get("uid")
        if uid is None:
            self.chip.remove()
        else:
            b = bytes(int(uid[i:i + 2], 16) for i in range(0, len(uid), 2))
            self.chip.present(b)

    def _op_reader_fault(self, req):
        kind = req["kind"]
        if self._sim() is None:
            raise ValueError("board started with --no-rfid")
        if kind == "lockup":
            self.chip.lock_up()
        elif kind == "glitch":
            self.chip.glitch()
        else:
            raise ValueError("kind must be lockup or glitch")

    def _op_battery(self, req):
        mv = req["mv"]
        if type(mv) is not int or mv < 0 or mv > 20000:
            raise ValueError("mv must be 0..20000")
        self._mv = mv

    def _op_tamper(self, req):
        self._tamper = 1 if req["open"] else 0

    def _op_net(self, req):
        self._net = bool(req["up"])

    def _op_led(self, req):
        h = self.led.hist
        return {"rgb": list(h.value), "on": 1 if any(h.value) else 0, "count": h.count,
                "history": [[t, list(v)] for t, v in h.since(int(req.get("since", 0)))]}

    def _op_buzzer(self, req):
        h = self.buzzer.hist
        return {"on": h.value, "count": h.count, "history": h.since(int(req.get("since", 0)))}

    def _op_state(self, req):
        card = self.chip.card.uid if self.chip is not None and self.chip.card else None
        return {"hwid": self._hwid, "button": self.button(), "tamper": self._tamper,
                "battery_mv": self._mv, "net": self._net,
                "card": "".join("%02x" % b for b in card) if card else None,
                "led": list(self.led.hist.value), "buzzer": self.buzzer.hist.value,
                "reader_reinits": self._reader.reinits if self._reader else 0,
                "reset_reason": self._reset_reason}
