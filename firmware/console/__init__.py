# The provisioning console: a line-framed JSON request/response protocol on the serial console,
# driven by `fengqiao provision`. Specification: CONSOLE.md (this file implements it).
#
#     FQ1 {"id": 1, "cmd": "identify"} bad47d60\n                         request
#     FQ1 {"product": "fengqiao", ..., "id": 1, ...} c4f1fd0d\n          reply
#
# Failures it survives: line noise, boot/log output or a person typing on the same stream (no
# "FQ1 " prefix, bad CRC, bad JSON: an error reply, the console carries on), a line longer than
# the buffer (discarded to the next newline, one error reply), a request that makes a handler
# raise (an `internal` error reply, logged), a power cut during a write (identity.save is atomic).
# It never writes an identity over an existing one: factory_reset with confirmation comes first.

import binascii
import json

import identity
from micropython import const

PREFIX = b"FQ1 "
MAX_LINE = 4096  # a config with a 2 KB CA certificate in JSON fits with room to spare
PROTO = 1
FW_DEFAULT = 10000  # 1.0.0 unless the application passes its own version
# Commands in console/admin.py (imported on first use, so a running role does not hold them).
_ADMIN = const(("write_config", "factory_reset", "selftest", "reboot"))
# Commands answered here (or a handler set on the instance). Looked up by name only once known:
# getattr() with a string interns it as a qstr for good, so made-up command names would leak heap.
_OWN = const(("identify", "read_config"))


class ConsoleError(Exception):
    # args: (code, detail); the codes are listed in CONSOLE.md.
    pass


def crc_hex(data):
    return "%08x" % (binascii.crc32(data) & 0xFFFFFFFF)


def encode(obj):
    body = json.dumps(obj).encode()
    return PREFIX + body + b" " + crc_hex(body).encode() + b"\n"


def decode(line):
    """The request dict of one line (without the newline); raises ConsoleError."""
    if not line.startswith(PREFIX):
        raise ConsoleError("bad_frame", "a frame starts with 'FQ1 '")
    rest = line[len(PREFIX):].rstrip(b"\r ")
    sp = rest.rfind(b" ")
    if sp < 0 or len(rest) - sp - 1 != 8:
        raise ConsoleError("bad_frame", "a frame ends with ' ' and 8 hex digits of CRC-32")
    body = rest[:sp]
    if crc_hex(body).encode() != rest[sp + 1:].lower():
        raise ConsoleError("bad_crc", "CRC-32 does not match")
    try:
        req = json.loads(body)
    except ValueError:
        raise ConsoleError("bad_json", "not JSON")
    if type(req) is not dict:
        raise ConsoleError("bad_request", "a request is a JSON object")
    return req


class Console:
    def __init__(self, board, root=None, fw=FW_DEFAULT, log=None, selftest=None):
        self.board = board
        self.root = root or board.flash_root
        self.fw = fw
        self.log = log or (lambda msg: None)
        self._selftest = selftest
        self._buf = bytearray()
        self._skipping = False  # inside an overlong line: drop bytes up to the next newline
        self.changed = False  # an identity was written or erased since boot (reboot to apply)
        self.requests = 0
        self.errors = 0

    # -- stream ---------------------------------------------------------------------------------
    def poll(self):
        """Read what is waiting, answer complete lines. Never blocks, never raises.

        Bytes are moved a chunk at a time (not one append per byte): a growing bytearray is
        reallocated at each step, and on a 64 KB heap those holes are what runs out first."""
        try:
            data = self.board.console.read(256)
        except OSError:
            data = None
        if not data:
            return False
        i = 0
        n = len(data)
        while i < n:
            nl = data.find(b"\n", i)
            end = n if nl < 0 else nl
            if not self._skipping and end > i:
                if len(self._buf) + end - i > MAX_LINE:
                    self._buf = bytearray()
                    self._skipping = True
                else:
                    try:
                        self._buf.extend(data[i:end])
                    except MemoryError:
                        # No room for this line now: drop it, say so, keep the unit running.
                        self._buf = bytearray()
                        self._skipping = True
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
                self._send({"id": None, "ok": False, "error": "too_long",
                            "detail": "line longer than %d bytes" % MAX_LINE})
            elif self._buf:
                line = self._buf
                self._buf = bytearray()
                self.handle_line(line)
            i = nl + 1
        return True

    def _send(self, obj):
        try:
            self.board.console.write(encode(obj))
        except (OSError, ValueError, TypeError) as e:
            self.log("console: reply not sent: %r" % e)

    def handle_line(self, line):
        line = bytes(line).rstrip(b"\r")
        if not line.strip():
            return
        self.requests += 1
        rid = None
        try:
            req = decode(line)
            if "ok" in req:
                # A reply, not a request: our own output echoed back by a terminal (or another
                # unit's). Answering it would start an endless echo loop, so it is only counted.
                self.errors += 1
                return
            rid = req.get("id")
            if rid is not None and (type(rid) is not int or rid < 0 or rid > 0x7FFFFFFF):
                rid = None
                raise ConsoleError("bad_request", "id must be an integer 0..2^31-1")
            cmd = req.get("cmd")
            handler = None
            if type(cmd) is str and (cmd in _OWN or "_cmd_" + cmd in self.__dict__):
                handler = getattr(self, "_cmd_" + cmd)
            if handler is None and cmd in _ADMIN:
                from console import admin

                handler = getattr(admin, cmd)
                out = handler(self, req)
            elif handler is None:
                raise ConsoleError("unknown_cmd", "unknown command %r" % (cmd,))
            else:
                out = handler(req)
            reply = {"id": rid, "ok": True}
            if out:
                reply.update(out)
        except ConsoleError as e:
            self.errors += 1
            reply = {"id": rid, "ok": False, "error": e.args[0], "detail": e.args[1]}
        except Exception as e:  # a bug in a handler must not take the unit down
            self.errors += 1
            self.log("console: internal error: %r" % e)
            reply = {"id": rid, "ok": False, "error": "internal", "detail": repr(e)[:80]}
        self._send(reply)

    # -- commands ---------------------------------------------------------------------------------
    def _cmd_identify(self, req):
        out = {"product": "fengqiao", "proto": PROTO, "board": self.board.name,
               "hwid": self.board.hardware_id(), "fw": self.fw,
               "provisioned": identity.is_provisioned(self.root), "pending_reboot": self.changed}
        if out["provisioned"]:
            try:
                cfg = identity.load(self.root)
                out["device_id"] = cfg["device_id"]
                out["role"] = cfg["role"]
            except identity.IdentityError:
                out["corrupt"] = True
        return out

    def _cmd_read_config(self, req):
        try:
            cfg = identity.load(self.root)
        except identity.NotProvisioned:
            raise ConsoleError("not_provisioned", "no identity on this unit")
        except identity.CorruptConfig as e:
            raise ConsoleError("corrupt_config", str(e.args[0]) if e.args else "corrupt")
        # Secrets never leave the unit, only their fingerprints: the key and the Wi-Fi password.
        cfg["key_fingerprint"] = identity.fingerprint(cfg.pop("key"))
        pw = cfg.pop("wifi_password", "")
        cfg["wifi_password_fingerprint"] = identity.fingerprint(pw.encode()) if pw else ""
        return {"cfg": cfg}


def serve(board, root=None, fw=FW_DEFAULT, idle_ms=10):
    """Console-only loop for an unprovisioned unit (main.py may poll Console itself instead)."""
    c = Console(board, root, fw)
    while True:
        c.poll()
        board.poll()
        if hasattr(board, "idle_ms"):
            board.idle_ms(idle_ms)
