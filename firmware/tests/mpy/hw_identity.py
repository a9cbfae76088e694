# identity.py (persistent config + key) and the console's framing and commands with an in-memory
# console, on the MicroPython VM. argv[1] = a scratch directory. Run by test_hw_identity.py.
import sys

from hw_check import check, done, eq, raises

import binascii

import console
import identity
from identity import write

# The console drops its request modules after each request; the test keeps its own references.
E = identity.IdentityError


def encode(obj):
    """A request frame (CONSOLE.md): FQ1 <json> <crc32 hex>."""
    import json

    body = json.dumps(obj).encode()
    return b"FQ1 " + body + b" %08x\n" % binascii.crc32(body)


def decode(line):
    """The object of a reply frame; ValueError if the CRC does not match."""
    import json

    body, crc = line[4:].rsplit(b" ", 1)
    if not line.startswith(b"FQ1 ") or b"%08x" % binascii.crc32(body) != crc:
        raise ValueError(line)
    return json.loads(body)


def code(name, want, fn, *args):
    """fn(*args) raises IdentityError with code `want`; returns it."""
    e = raises(name, E, fn, *args)
    if e is not None:
        eq(name + "_code", e.args[0], want)
    return e


root = sys.argv[1]
KEY = bytes(range(32))
BASE = {"device_id": 42, "key_id": 1, "key": KEY, "role": "alarm", "broker_host": "127.0.0.1",
        "broker_port": 1883}

check("unprovisioned_at_start", not identity.is_provisioned(root))
code("load_unprovisioned_raises", "not_provisioned", identity.load, root)
fp = write.save(root, BASE)
eq("fingerprint_returned", fp, identity.fingerprint(KEY))
print("FP", fp)
cfg = identity.load(root)
eq("roundtrip_key", cfg["key"], KEY)
eq("roundtrip_fields", (cfg["device_id"], cfg["key_id"], cfg["role"], cfg["broker_port"], cfg["tls"]), (42, 1, "alarm", 1883, False))
eq("default_settings", cfg["settings"]["hold_ms"], 1000)
eq("load_pins_empty", identity.load_pins(root), {})

# Every rule of validate() rejects with the field's name.
bad = (
    ("device_id", 0), ("device_id", 1 << 32), ("device_id", "42"), ("device_id", True),
    ("key_id", 256), ("key", b"short"), ("key", "zz" * 32), ("key", "00" * 31), ("role", "siren"),
    ("broker_host", ""), ("broker_port", 0), ("broker_port", 70000), ("tls", 1),
    ("ca_pem", "not a certificate"), ("pins", [1]), ("settings", {"hold_ms": -1}),
    ("wifi_ssid", "x" * 33),
)
for field, value in bad:
    c = dict(BASE)
    c[field] = value
    e = code("invalid_%s_%r" % (field, value), "invalid_config", write.validate, c)
    if e is not None:
        eq("invalid_names_field_%s_%r" % (field, value), e.args[1].split(":")[0], field)
c = dict(BASE, role="checkin")
e = code("checkin_needs_checkpoint", "invalid_config", write.validate, c)
c = dict(BASE, tls=True)
code("tls_needs_ca", "invalid_config", write.validate, c)
c = dict(BASE, key="%064x" % 7, role="checkin", checkpoint_id=7, pins={"button.pin": 4})
eq("hex_key_accepted", write.validate(c)["key"], b"\x00" * 31 + b"\x07")

# Corruption: one flipped byte, truncation, garbage -> CorruptConfig, never a wrong identity.
p = identity.path(root)
with open(p, "rb") as f:
    good = f.read()
for name, raw in (("flipped", good[:10] + bytes((good[10] ^ 1,)) + good[11:]), ("truncated", good[:40]),
                  ("empty", b""), ("garbage", b"\xff" * 50)):
    with open(p, "wb") as f:
        f.write(raw)
    code("corrupt_" + name, "corrupt_config", identity.load, root)
with open(p, "wb") as f:
    f.write(good)

# A leftover .tmp from a power cut during save does not matter.
with open(p + ".tmp", "wb") as f:
    f.write(b"half a fi")
eq("tmp_leftover_ignored", identity.load(root)["device_id"], 42)

# Factory reset removes the identity and every data file (an outbox of the old identity too).
with open(identity.data_dir(root) + "/outbox.bin", "wb") as f:
    f.write(b"old events")
write.factory_reset(root)
import os

eq("factory_reset_empties_data", (identity.is_provisioned(root), os.listdir(identity.data_dir(root))), (False, []))


# -- console, in memory --------------------------------------------------------------------
# The console imports its request handling and the identity modules for each request and drops
# them after it (console/__init__.py): the test lets go of its own references too, so the heap
# holds what a unit's does.
del write
console.drop()

class Stream:
    def __init__(self):
        self.inp = bytearray()
        self.out = bytearray()

    def read(self, n):
        if not self.inp:
            return None
        b = self.inp[:n]
        self.inp = self.inp[n:]
        return b

    def write(self, b):
        self.out.extend(b)


class Led:
    is_rgb = True

    def rgb(self, r, g, b):
        pass


class Buz:
    def on(self):
        pass

    def off(self):
        pass


class FakeBoard:
    name = "test"
    flash_root = root

    def __init__(self):
        self.console = Stream()
        self.led = Led()
        self.buzzer = Buz()

    def hardware_id(self):
        return "hw-1"


board = FakeBoard()
con = console.Console(board, root, fw=10203)


def ask(obj=None, raw=None):
    board.console.inp.extend(raw if raw is not None else encode(obj))
    while board.console.inp:
        con.poll()
    lines = bytes(board.console.out).split(b"\n")
    board.console.out = bytearray()
    return [decode(l) for l in lines if l]


r = ask({"id": 1, "cmd": "identify"})[0]
eq("identify", (r["ok"], r["hwid"], r["fw"], r["provisioned"], r["product"]), (True, "hw-1", 10203, False, "fengqiao"))
wire = dict(BASE, key="ab" * 32)
r = ask({"id": 2, "cmd": "write_config", "cfg": wire})[0]
eq("write_config_ok", (r["id"], r["ok"], r.get("key_fingerprint"), r.get("detail")), (2, True, identity.fingerprint(b"\xab" * 32), None))
r = ask({"id": 3, "cmd": "write_config", "cfg": wire})[0]
eq("write_config_refused", (r["ok"], r["error"]), (False, "already_provisioned"))
r = ask({"id": 4, "cmd": "read_config"})[0]
check("read_config_no_key", "key" not in r["cfg"] and r["cfg"]["key_fingerprint"] == identity.fingerprint(b"\xab" * 32), repr(r))
check("read_config_no_key_bytes", b"abababab" not in encode(r))
r = ask({"id": 5, "cmd": "factory_reset"})[0]
eq("reset_needs_confirm", (r["ok"], r["error"]), (False, "confirm_required"))
r = ask({"id": 6, "cmd": "factory_reset", "confirm": "hw-2"})[0]
eq("reset_wrong_confirm", r["error"], "confirm_required")
check("not_erased_by_wrong_confirm", identity.is_provisioned(root))
r = ask({"id": 7, "cmd": "factory_reset", "confirm": "hw-1"})[0]
eq("reset_confirmed", (r["ok"], identity.is_provisioned(root)), (True, False))
r = ask({"id": 8, "cmd": "write_config", "cfg": dict(wire, broker_port=0)})[0]
eq("invalid_config_reply", (r["error"], r["detail"].split(":")[0]), ("invalid_config", "broker_port"))
r = ask({"id": 9, "cmd": "read_config"})[0]
eq("read_unprovisioned", r["error"], "not_provisioned")

# Malformed input: each gets an error reply with id null (or its id), nothing crashes.
good = encode({"id": 10, "cmd": "identify"})
cases = (
    ("no_prefix", b"hello\n", "bad_frame"),
    ("no_crc", b'FQ1 {"id": 1, "cmd": "identify"}\n', "bad_frame"),
    ("bad_crc", good[:-3] + b"00\n", "bad_crc"),
    ("flipped_json", good.replace(b"identify", b"identifz"), "bad_crc"),
    ("bad_json", b"FQ1 {nope " + b"%08x" % binascii.crc32(b"{nope") + b"\n", "bad_json"),
    ("not_object", b"FQ1 [1] " + b"%08x" % binascii.crc32(b"[1]") + b"\n", "bad_request"),
    ("bad_id", encode({"id": "x", "cmd": "identify"}), "bad_request"),
    ("unknown_cmd", encode({"id": 11, "cmd": "format_c"}), "unknown_cmd"),
    ("no_cmd", encode({"id": 12}), "unknown_cmd"),
    ("binary", b"\x00\xff\xfe\x03\x80\n", "bad_frame"),
)
for name, raw, code in cases:
    rs = ask(raw=raw)
    check("malformed_" + name, len(rs) == 1 and rs[0]["ok"] is False and rs[0]["error"] == code, repr(rs))
# An overlong line arrives in pieces, as from a UART: one too_long reply at its end.
board.console.inp.extend(b"FQ1 ")
for _ in range(20):
    board.console.inp.extend(b"x" * 250)
    con.poll()
rs = ask(raw=b"yyy\n")
check("malformed_too_long", len(rs) == 1 and rs[0]["error"] == "too_long", repr(rs))
# A reply frame (our own output echoed back) is not answered: no echo loop.
eq("reply_frame_not_answered", ask({"id": 3, "ok": True, "cmd": "identify"}), [])
rs = ask(raw=b"\n\r\n   \n")
eq("blank_lines_ignored", rs, [])
r = ask({"id": 13, "cmd": "identify"})
eq("alive_after_garbage", (len(r), r[0]["ok"]), (1, True))
# Two frames in one read, CRLF line ends.
rs = ask(raw=encode({"id": 14, "cmd": "identify"})[:-1] + b"\r\n" + encode({"id": 15, "cmd": "identify"}))
eq("two_frames_crlf", [x["id"] for x in rs], [14, 15])
# A handler that raises: internal error, console keeps going.
board.hardware_id = lambda: 1 // 0
r = ask({"id": 16, "cmd": "identify"})[0]
del board.hardware_id
eq("handler_exception_internal", (r["id"], r["error"]), (16, "internal"))
# Nothing a request imported stays: the identity and the request handling are dropped again.
eq("request_modules_dropped", [m for m in ("identity", "identity.write", "identity.file", "console.admin",
                                          "console.query", "console.change", "selftest") if m in sys.modules], [])
check("console_holds_no_admin", not [m for m in ("admin", "query", "change") if hasattr(console, m)])
# Made-up command names are refused without being interned as qstrs (which are never freed).
import gc

ask({"id": 17, "cmd": "warmup"})
gc.collect()
before = gc.mem_alloc()
for i in range(300):
    ask({"id": 18, "cmd": "nosuch%d" % i})
gc.collect()
check("unknown_cmds_leak_nothing", gc.mem_alloc() - before < 512, "grew %d bytes" % (gc.mem_alloc() - before))
# Known commands too: each request imports what it needs and leaves nothing behind.
eq("provisioned_again", ask({"id": 19, "cmd": "write_config", "cfg": wire})[0]["ok"], True)
ask({"id": 19, "cmd": "read_config"})
gc.collect()
before = gc.mem_alloc()
for i in range(20):
    ask({"id": 20, "cmd": "identify"})
    ask({"id": 21, "cmd": "read_config"})
    ask({"id": 22, "cmd": "write_config", "cfg": wire})  # refused: already provisioned
gc.collect()
check("requests_leak_nothing", gc.mem_alloc() - before < 512, "grew %d bytes" % (gc.mem_alloc() - before))
done()
