# The host board: the same application on the MicroPython Unix port, with flash as a directory,
# the console on stdin/stdout and every part (button, tamper, LED, buzzer, battery, MFRC522 and
# card) simulated and driven through a control socket. Spec: boards/HOSTBOARD.md.
#
#     micropython -X heapsize=64k main.py --flash DIR [--control SOCK] [--hwid ID] [--single-led]
#                                         [--no-rfid] [--wdt] [--battery-mv N]
#
# Failures it survives: a control client that sends garbage (error reply, connection kept), one
# that disconnects mid-line (dropped), more clients than slots (refused), stdin at EOF (the
# console stops polling it).
#
# RAM: this module is test equipment sharing the application's 64 KB heap, so it is written
# compactly (one dispatch function, plain lists for histories; the reader simulation and the
# software watchdog are imported only when used). Measured on the Unix port (64-bit, .mpy):
# ~12 KB after import (the first version, a method per op, was ~15 KB).

import json
import os
import select
import socket
import struct
import sys
import time
from array import array

from micropython import const

from boards.stdconsole import StdConsole
from boards.wiring_host import WIRING

# const(): private names that vanish at compile time (no global, no qstr in the heap).
_HISTORY = const(256)  # changes kept per LED/buzzer history
_MAX_CLIENTS = const(4)
_MAX_LINE = const(2048)
_OPTS = const(("--flash", "--control", "--hwid", "--battery-mv"))
_FLAGS = const(("--single-led", "--no-rfid", "--wdt"))


def _read(p):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return None


def _mkdir(p):
    try:
        os.mkdir(p)
    except OSError:
        pass


class _Out:
    # The LED (value (r, g, b), 0/1 each) or the buzzer (0/1), with a history of its changes: one
    # u32 per change, t_ms << 3 | value (rgb as r<<2|g<<1|b; t_ms wraps after 6.2 days), growing
    # to _HISTORY entries (1 KB) and then used as a ring. The first version, a list of tuples,
    # grew to ~25 KB of a 64-bit heap.
    def __init__(self, board, value, is_rgb=True):
        self.b = board
        self.v = value
        self.n = 0
        self.hist = array("I")
        self.is_rgb = is_rgb

    def _set(self, v):
        if v != self.v:
            self.v = v
            e = (self.b.now_ms() & 0x1FFFFFFF) << 3 | (v[0] << 2 | v[1] << 1 | v[2] if type(v) is tuple else v)
            if self.n < _HISTORY:
                self.hist.append(e)
            else:
                self.hist[self.n % _HISTORY] = e
            self.n += 1

    def rgb(self, r, g, b):
        if self.is_rgb:
            self._set((1 if r else 0, 1 if g else 0, 1 if b else 0))
        else:
            v = 1 if (r or g or b) else 0
            self._set((v, v, v))

    def on(self):
        self._set(1 if self.v in (0, 1) else (1, 1, 1))

    def off(self):
        self._set(0 if self.v in (0, 1) else (0, 0, 0))

    def since(self, i, step=16):
        """JSON text pieces of the changes with index >= i, `step` changes per piece (so a full
        history never sits in the heap at once): [[t, [r, g, b] or 0/1], ...]."""
        rgb = type(self.v) is tuple
        k = max(i, self.n - _HISTORY, 0)
        yield "["
        while k < self.n:
            part = []
            for k in range(k, min(k + step, self.n)):
                e = self.hist[k % _HISTORY]
                x = e & 7
                part.append("[%d, [%d, %d, %d]]" % (e >> 3, x >> 2, x >> 1 & 1, x & 1) if rgb else "[%d, %d]" % (e >> 3, x))
            k += 1
            yield ", ".join(part) + (", " if k < self.n else "")
        yield "]"


class Board:
    name = "host"

    def __init__(self, argv_or_options=None):
        o = {"flash": "hostflash"}
        args = argv_or_options if argv_or_options is not None else sys.argv[1:]
        if type(args) is dict:
            o.update(args)
        else:
            for i, a in enumerate(args):  # options the board does not know belong to the app
                if a in _OPTS and i + 1 < len(args):
                    o[a[2:]] = args[i + 1]
                elif a in _FLAGS:
                    o[a[2:]] = True
        self.options = o
        self._t0 = time.ticks_ms()
        root = o["flash"]
        if root[0] != "/":
            root = os.getcwd() + "/" + root
        self.flash_root = root
        _mkdir(root)
        _mkdir(root + "/data")
        self._meta = root + "/.hostboard/"
        _mkdir(self._meta)
        self._hwid = o.get("hwid") or _read(self._meta + "hwid")
        if not self._hwid:
            self._hwid = "host-" + "".join("%02x" % b for b in os.urandom(6))
            self._put("hwid", self._hwid)
        rr = _read(self._meta + "reset_reason")
        self._rr = int(rr) if rr and rr.isdigit() else 0
        if rr is not None:
            os.remove(self._meta + "reset_reason")
        self._btn = 0
        self._script = None  # [(level, ms), ...] played from _script_t0
        self._script_t0 = 0
        self._tamper = 0
        self._mv = int(o.get("battery-mv") or WIRING["battery"]["mv"])
        self._net = True
        self.led = _Out(self, (0, 0, 0), WIRING["led"]["rgb"] and not o.get("single-led"))
        self.buzzer = _Out(self, 0)
        self.chip = None  # the simulated MFRC522, made on first use
        self._reader = None
        self._wdt = None
        self.console = StdConsole()
        self._poller = select.poll()
        self._stdin = not self.console.closed
        if self._stdin:
            self._poller.register(self.console._in, select.POLLIN)
        self._lsock = None
        self._clients = {}  # socket -> bytearray of pending input
        if o.get("control"):
            self._listen(o["control"])

    # -- the board interface (FIRMWARE_CONTRACT.md) -----------------------------------------------
    def now_ms(self):
        return time.ticks_diff(time.ticks_ms(), self._t0)

    def hardware_id(self):
        return self._hwid

    def reset_reason(self):
        return self._rr

    def button(self):
        s = self._script
        if s is not None:
            dt = time.ticks_diff(time.ticks_ms(), self._script_t0)
            for level, ms in s:
                if dt < ms:
                    return level
                dt -= ms
            self._script = None
        return self._btn

    def tamper(self):
        return self._tamper

    def battery_mv(self):
        return self._mv

    def _sim(self):
        if self.chip is None and not self.options.get("no-rfid"):
            from boards.sim_mfrc522 import SimMFRC522

            self.chip = SimMFRC522(WIRING["rfid"]["version"])
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
        if not self.options.get("wdt"):
            return None
        if self._wdt is None:
            from boards.host_wdt import SoftWatchdog

            self._wdt = SoftWatchdog(self, timeout_ms)
        return self._wdt

    def reboot(self):
        # A real board resets; the host board exits with status 3 and its driver restarts it.
        self.write_reset_reason(4)
        sys.exit(3)

    def poll(self):
        if self._wdt is not None and self._wdt.expired():
            self._wdt.fire()
        if self._stdin and self.console.closed:
            self._poller.unregister(self.console._in)
            self._stdin = False
        if self._lsock is not None:
            for obj, ev in self._poller.poll(0):
                self._service(obj)

    def idle_ms(self, ms):
        """Sleep up to ms, waking at once for control or console input."""
        if self._lsock is None and not self._stdin:
            time.sleep_ms(ms)
        else:
            self._poller.poll(ms)
        self.poll()

    def _put(self, name, text):
        with open(self._meta + name, "w") as f:
            f.write(text)

    def write_reset_reason(self, reason):
        self._put("reset_reason", str(reason))

    # -- control socket (HOSTBOARD.md) ----------------------------------------------------------
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
        self._lsock = s
        self._poller.register(s, select.POLLIN)

    def _service(self, obj):
        if obj is self._lsock:
            try:
                conn = obj.accept()[0]
            except OSError:
                return
            if len(self._clients) >= _MAX_CLIENTS:
                self._send(conn, {"ok": False, "error": "too many clients"})
                conn.close()
                return
            conn.setblocking(False)
            self._clients[conn] = bytearray()
            self._poller.register(conn, select.POLLIN)
            return
        buf = self._clients.get(obj)
        if buf is None:
            return  # stdin: the console reads it itself
        try:
            data = obj.recv(512)
        except OSError:
            data = b""
        if not data:
            self._poller.unregister(obj)
            del self._clients[obj]
            obj.close()
            return
        buf.extend(data)
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > _MAX_LINE:
                    self._send(obj, {"ok": False, "error": "line too long"})
                    buf[:] = b""
                return
            line = bytes(buf[:nl])
            buf[:] = buf[nl + 1:]
            if line.strip():
                try:
                    res = self._op(json.loads(line))
                except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
                    res = {"ok": False, "error": "bad request: %r" % e}
                self._send(obj, res)

    def _send(self, conn, obj):
        hist = obj.pop("history", None)  # a generator of JSON text pieces (led / buzzer ops)
        data = json.dumps(obj).encode()
        if hist is None:
            data += b"\n"
        else:
            data = data[:-1] + b', "history": '
        # A client that stops reading must not hang the board: at most 2 s per piece.
        conn.settimeout(2)
        try:
            while data:
                data = data[conn.send(data):]
                if not data and hist is not None:
                    try:
                        data = next(hist).encode()
                    except StopIteration:
                        data, hist = b"}\n", None
        except OSError:
            pass  # gone or stuck: the reply is lost, its next recv() (or EOF) drops it
        conn.setblocking(False)

    def _op(self, r):
        op = r["op"]
        out = {"ok": True, "now_ms": self.now_ms()}
        if op == "ping":
            out["hwid"] = self._hwid
            out["flash"] = self.flash_root
        elif op == "press" or op == "release":
            self._script = None
            self._btn = 1 if op == "press" else 0
        elif op == "hold" or op == "button_script":
            steps = [[1, r["ms"]]] if op == "hold" else r["steps"]
            self._btn = 0
            self._script_t0 = time.ticks_ms()
            self._script = [(1 if s[0] else 0, int(s[1])) for s in steps]
        elif op == "card" or op == "reader_fault":
            if self._sim() is None:
                raise ValueError("no reader (--no-rfid)")
            if op == "reader_fault":
                if r["kind"] == "lockup":
                    self.chip.lock_up()
                elif r["kind"] == "glitch":
                    self.chip.glitch()
                else:
                    raise ValueError("kind: lockup or glitch")
            elif r.get("uid"):
                uid = [bytes(int(u[i:i + 2], 16) for i in range(0, len(u), 2)) for u in (r["uid"], r.get("uid2"))
                       if u]
                if len(uid) == 2:
                    self.chip.present_two(uid[0], uid[1])
                else:
                    self.chip.present(uid[0])
            else:
                self.chip.remove()
        elif op == "battery":
            mv = r["mv"]
            if type(mv) is not int or not 0 <= mv <= 20000:
                raise ValueError("mv: 0..20000")
            self._mv = mv
        elif op == "tamper":
            self._tamper = 1 if r["open"] else 0
        elif op == "net":
            self._net = bool(r["up"])
        elif op == "led" or op == "buzzer":
            o = self.led if op == "led" else self.buzzer
            v = o.v
            out["on"] = 1 if (any(v) if type(v) is tuple else v) else 0
            if op == "led":
                out["rgb"] = list(v)
            out["count"] = o.n
            # The history goes out as text, a piece at a time: _send writes it after the rest.
            out["history"] = o.since(int(r.get("since", 0)))
        elif op == "state":
            c = self.chip.card if self.chip else None
            out.update({"hwid": self._hwid, "button": self.button(), "tamper": self._tamper,
                        "battery_mv": self._mv, "net": self._net, "led": list(self.led.v),
                        "buzzer": self.buzzer.v, "reset_reason": self._rr,
                        "card": "".join("%02x" % b for b in c.uid) if c else None,
                        "reader_reinits": self._reader.reinits if self._reader else 0})
        elif op == "mem":
            import gc

            if r.get("collect"):
                gc.collect()
            out["alloc"] = gc.mem_alloc()
            out["free"] = gc.mem_free()
        else:
            return {"ok": False, "error": "unknown op %s" % op}
        return out
