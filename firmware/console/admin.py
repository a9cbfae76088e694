# The console's request handling (CONSOLE.md): framing, request checks and every command.
# Imported by console/__init__.py for one line at a time and dropped after the reply, with the
# identity modules it imports, so a running role does not hold any of it (see there).
#
# Errors carry (code, detail), the code from CONSOLE.md's list. They are identity's one
# exception class: identity.load/save raise it with the console's codes already
# (not_provisioned, corrupt_config, invalid_config), so they pass through as they are.
# Each command takes the Console (`con`) and the request, and returns the reply fields or raises.

import binascii
import json

import identity
from identity import IdentityError as ConsoleError

# Looked up by name only once known: getattr() with a string interns it as a qstr for good, so
# made-up command names would leak heap.
_CMDS = ("identify", "read_config", "write_config", "factory_reset", "selftest", "reboot")


def encode(obj):
    body = json.dumps(obj).encode()
    return b"FQ1 " + body + b" %08x\n" % binascii.crc32(body)


def decode(line):
    """The request dict of one line (without the newline); raises ConsoleError."""
    if not line.startswith(b"FQ1 "):
        raise ConsoleError("bad_frame", "a frame starts with 'FQ1 '")
    rest = line[4:].rstrip(b"\r ")
    sp = rest.rfind(b" ")
    if sp < 0 or len(rest) - sp - 1 != 8:
        raise ConsoleError("bad_frame", "a frame ends with ' ' and 8 hex digits of CRC-32")
    body = rest[:sp]
    if b"%08x" % binascii.crc32(body) != rest[sp + 1:].lower():
        raise ConsoleError("bad_crc", "CRC-32 does not match")
    try:
        req = json.loads(body)
    except ValueError:
        raise ConsoleError("bad_json", "not JSON")
    if type(req) is not dict:
        raise ConsoleError("bad_request", "a request is a JSON object")
    return req


def send(con, obj):
    try:
        con.board.console.write(encode(obj))
    except (OSError, ValueError, TypeError) as e:
        if con.log:
            con.log("console: reply not sent: %r" % e)


def handle(con, line):
    """Answer one line (bytes without the newline; None: it was longer than 4096 bytes)."""
    if line is not None:
        line = bytes(line).rstrip(b"\r")
        if not line.strip():
            return
    rid = None
    try:
        if line is None:
            raise ConsoleError("too_long", "line longer than 4096 bytes")
        req = decode(line)
        if "ok" in req:
            # A reply, not a request: our own output echoed back by a terminal (or another
            # unit's). Answering it would start an endless echo loop.
            return
        rid = req.get("id")
        if rid is not None and (type(rid) is not int or rid < 0 or rid > 0x7FFFFFFF):
            rid = None
            raise ConsoleError("bad_request", "id must be an integer 0..2^31-1")
        cmd = req.get("cmd")
        if cmd not in _CMDS:
            raise ConsoleError("unknown_cmd", "unknown command %r" % (cmd,))
        out = globals()[cmd](con, req)
        reply = {"id": rid, "ok": True}
        if out:
            reply.update(out)
    except ConsoleError as e:
        reply = {"id": rid, "ok": False, "error": e.args[0], "detail": e.args[1]}
    except Exception as e:  # a bug in a handler must not take the unit down
        if con.log:
            con.log("console: internal error: %r" % e)
        reply = {"id": rid, "ok": False, "error": "internal", "detail": repr(e)[:80]}
    send(con, reply)


# -- commands -------------------------------------------------------------------------------------
def identify(con, req):
    b = con.board
    out = {"product": "fengqiao", "proto": 1, "board": b.name, "hwid": b.hardware_id(), "fw": con.fw,
           "provisioned": identity.is_provisioned(con.root), "pending_reboot": con.changed}
    if out["provisioned"]:
        try:
            cfg = identity.load(con.root)
            out["device_id"] = cfg["device_id"]
            out["role"] = cfg["role"]
        except ConsoleError:
            out["corrupt"] = True
    return out


def read_config(con, req):
    cfg = identity.load(con.root)  # not_provisioned / corrupt_config go back as they are
    # Secrets never leave the unit, only their fingerprints: the key and the Wi-Fi password.
    cfg["key_fingerprint"] = identity.fingerprint(cfg.pop("key"))
    pw = cfg.pop("wifi_password", "")
    cfg["wifi_password_fingerprint"] = identity.fingerprint(pw.encode()) if pw else ""
    return {"cfg": cfg}


def write_config(con, req):
    if identity.is_provisioned(con.root):
        raise ConsoleError("already_provisioned", "this unit has an identity; factory_reset it first")
    from identity.write import save

    try:
        fp = save(con.root, req.get("cfg"))  # invalid_config goes back as it is
    except OSError as e:
        raise ConsoleError("storage_error", "flash write failed: %r" % e)
    con.changed = True
    return {"key_fingerprint": fp}


def factory_reset(con, req):
    if req.get("confirm") != con.board.hardware_id():
        raise ConsoleError("confirm_required", "send confirm: <hardware id> (identify gives it) to erase this unit")
    from identity.write import factory_reset

    try:
        factory_reset(con.root)
    except OSError as e:
        raise ConsoleError("storage_error", "erase failed: %r" % e)
    con.changed = True
    return {"erased": True}


def selftest(con, req):
    import selftest

    return selftest.run(con.board)


def reboot(con, req):
    reboot = getattr(con.board, "reboot", None)
    if reboot is None:
        raise ConsoleError("bad_request", "this board cannot reboot itself")
    # Answer first: the reset takes the serial line with it.
    send(con, {"id": req.get("id"), "ok": True, "rebooting": True})
    reboot()
