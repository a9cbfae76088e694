# The console's request handling (CONSOLE.md): framing, request checks and every command.
# Imported by console/__init__.py for one line at a time and dropped after the reply, with the
# identity modules it imports, so a running role does not hold any of it (see there).
#
# Errors carry (code, detail), the code from CONSOLE.md's list: ConsoleError here, and
# identity's IdentityError (identity.load/save raise it with the console's codes already:
# not_provisioned, corrupt_config, invalid_config), which passes through as it is.
# Each command takes the Console (`con`) and the request, and returns the reply fields or raises.
# Retries: the commands that only read are safe to repeat; the two that write an identity
# (write_config, rekey) take a `nonce` that is stored with it, so a repeat of one that landed is
# answered from what landed (`repeat: true`), never applied twice or refused.
#
# Heap: a request finds a running unit's heap in small pieces, so nothing here needs a large
# piece: the request is parsed in place, the reply written a value at a time, and this module
# keeps few globals (the table of its globals dict is one piece; the built-in modules are
# imported where they are used). On a running unit (con.cfg: the identity it booted with, and
# nothing written since) identify and read_config answer from that dict, without importing
# identity or reading and parsing the file again: that was 3.2 KB of the ~5.3 KB a request
# needed beside a running role (issue 11: MemoryError in identify at 64 KB). identity is
# imported only by the commands that need it.


class ConsoleError(Exception):
    # args: (code, detail), as IdentityError.
    pass


def _running(con):
    # The identity the unit runs with, if it is still the stored one (no write or erase since).
    return None if con.changed else con.cfg


def _put(w, crc, obj):
    # obj as JSON through w, a dict a key and value at a time (no copy of the whole reply in
    # the heap); returns the CRC-32 of what was written, continuing from crc.
    import binascii
    import json

    over = None
    if type(obj) is list and obj and obj[0] is _put:
        # [_put, d, over]: d with the keys of `over` replaced by its values (_put: left out), then
        # over's other keys. A running unit's identity is answered this way, not copied: a copy
        # needs one piece of ~300 B, which a running 64 KB heap over TLS may not have.
        obj, over = obj[1], obj[2]
    if type(obj) is dict:
        sep = "{"
        for d in (obj, over):
            for k in d or ():
                if d is obj and over and k in over:
                    v = over[k]
                elif d is over and k in obj:
                    continue
                else:
                    v = d[k]
                if v is _put:
                    continue
                b = (sep + json.dumps(k) + ": ").encode()
                w(b)
                crc = _put(w, binascii.crc32(b, crc), v)
                sep = ", "
        b = b"}" if sep == ", " else b"{}"
    else:
        b = json.dumps(obj).encode()
    w(b)
    return binascii.crc32(b, crc)


def send(con, obj):
    w = con.board.console.write
    try:
        w(b"FQ1 ")
        w(b" %08x\n" % _put(w, 0, obj))
    except (OSError, ValueError, TypeError) as e:
        if con.log:
            con.log("console: reply not sent: %r" % e)


def handle(con, line):
    """Answer one line (bytes without the newline; None: it was longer than 4096 bytes)."""
    import binascii
    import json
    import sys

    E = ConsoleError
    if line is not None:
        line = bytes(line)
        if line[0] in (32, 9, 13) and not line.strip():  # a frame starts with "F": no copy
            return
    rid = None
    try:
        if line is None:
            raise E("too_long", "line longer than 4096 bytes")
        # The frame, read in place (a line may be 4 KB).
        if line[:4] != b"FQ1 ":
            raise E("bad_frame", "a frame starts with 'FQ1 '")
        end = len(line)
        while line[end - 1] in (13, 32):  # a CR (CRLF line ends) and spaces
            end -= 1
        sp = line.rfind(b" ", 4, end)
        if sp < 0 or end - sp - 1 != 8:
            raise E("bad_frame", "a frame ends with ' ' and 8 hex digits of CRC-32")
        body = memoryview(line)[4:sp]
        if b"%08x" % binascii.crc32(body) != line[sp + 1:end].lower():
            raise E("bad_crc", "CRC-32 does not match")
        try:
            req = json.loads(body)
        except ValueError:
            raise E("bad_json", "not JSON")
        if type(req) is not dict:
            raise E("bad_request", "a request is a JSON object")
        if "ok" in req:
            # A reply, not a request: our own output echoed back by a terminal (or another
            # unit's). Answering it would start an endless echo loop.
            return
        rid = req.get("id")
        if rid is not None and (type(rid) is not int or rid < 0 or rid > 0x7FFFFFFF):
            rid = None
            raise E("bad_request", "id must be an integer 0..2^31-1")
        cmd = req.get("cmd")
        # Looked up by name only once known: getattr() with a string interns it as a qstr for
        # good, so made-up command names would leak heap.
        if cmd not in ("identify", "read_config", "write_config", "rekey", "factory_reset", "selftest", "reboot"):
            raise E("unknown_cmd", "unknown command %r" % (cmd,))
        out = globals()[cmd](con, req)
        reply = {"id": rid, "ok": True}
        if out:
            reply.update(out)
    except Exception as e:  # noqa: BLE001 - a bug in a handler must not take the unit down
        i = sys.modules.get("identity")
        if type(e) is E or i and isinstance(e, i.IdentityError):
            reply = {"id": rid, "ok": False, "error": e.args[0], "detail": e.args[1]}
        else:
            if con.log:
                con.log("console: internal error: %r" % e)
            reply = {"id": rid, "ok": False, "error": "internal", "detail": repr(e)[:80]}
    send(con, reply)


# -- commands -------------------------------------------------------------------------------------
def identify(con, req):
    b = con.board
    cfg = _running(con)
    out = {"product": "fengqiao", "proto": 1, "board": b.name, "hwid": b.hardware_id(), "fw": con.fw,
           "provisioned": True, "pending_reboot": con.changed}
    if cfg is None:
        import identity

        out["provisioned"] = identity.is_provisioned(con.root)
        if out["provisioned"]:
            try:
                cfg = identity.load(con.root)
            except identity.IdentityError:
                out["corrupt"] = True
    if cfg is not None:
        out["device_id"] = cfg["device_id"]
        out["role"] = cfg["role"]
    # What `fengqiao deploy` needs to tell whether to flash: the image's hash (the file
    # firmware.sha that tools/flash.py puts at the code root), where the code runs from, and the
    # bytecode version a .mpy for this MicroPython must have.
    import sys

    f = globals().get("__file__")  # none when frozen into the firmware
    root = None
    if f:
        root = f[:f.rfind("console/")].rstrip("/") or ("/" if f[0] == "/" else ".")
        try:
            with open(root + "/firmware.sha") as h:
                out["fw_hash"] = h.read(64).strip()
        except OSError:
            pass
    out["code"] = root
    i = sys.implementation
    out["upy"] = "%d.%d.%d" % i.version[:3]
    out["mpy"] = getattr(i, "_mpy", None)
    return out


def read_config(con, req):
    import identity

    cfg = _running(con)
    # not_provisioned / corrupt_config go back as they are
    cfg = identity.load(con.root) if cfg is None else cfg
    # Secrets never leave the unit, only their fingerprints: the key and the Wi-Fi password.
    # The identity is not copied (a running unit's is its live one): _put leaves them out.
    over = {"key": _put, "prev_key": _put, "wifi_password": _put,
            "key_fingerprint": identity.fingerprint(cfg["key"])}
    k = cfg.get("prev_key")  # after a rekey: the old key (hex), for records numbered under it
    if k:
        import binascii

        over["prev_key_fingerprint"] = identity.fingerprint(binascii.unhexlify(k))
    pw = cfg.get("wifi_password", "")
    over["wifi_password_fingerprint"] = identity.fingerprint(pw.encode()) if pw else ""
    return {"cfg": [_put, cfg, over]}


def _nonce(req):
    # A retry of a state-changing command carries the same nonce as the first copy: the identity
    # written keeps it, so a copy whose reply was lost (cable pulled, power cut after the rename)
    # is answered from what landed instead of being refused or applied twice.
    n = req.get("nonce")
    if n is not None and (type(n) is not str or not 0 < len(n) <= 32):
        raise ConsoleError("bad_request", "nonce must be text of 1..32 characters")
    return n


def _landed(con, n):
    # The stored identity, if it was written by a request carrying nonce n; else None.
    import identity

    if n is None or not identity.is_provisioned(con.root):
        return None
    cfg = _running(con) or identity.load(con.root)
    return cfg if cfg.get("nonce") == n else None


def write_config(con, req):
    import identity

    n = _nonce(req)
    cfg = _landed(con, n)
    if cfg is not None:
        return {"key_fingerprint": identity.fingerprint(cfg["key"]), "repeat": True}
    if identity.is_provisioned(con.root):
        raise ConsoleError("already_provisioned", "this unit has an identity; factory_reset it first")
    from identity.write import save

    try:
        # invalid_config goes back as it is. fresh: what a factory reset cut short left in data/
        # (outbox, counters of the erased identity) goes before the new identity is written.
        fp = save(con.root, req.get("cfg"), {"nonce": n} if n else None, True)
    except OSError as e:
        raise ConsoleError("storage_error", "flash write failed: %r" % e)
    con.changed = True
    return {"key_fingerprint": fp}


def rekey(con, req):
    # A new key (and key id) for the same device in one step (request fields device_id, key_id,
    # key; the rest of the identity is kept): the identity is replaced by one rename (a cable
    # pulled or a power cut at any point leaves the old identity or the new one), and data/ stays:
    # the outbox keeps its records, and the new key's sequence continues above every number the
    # old key handed out (identity.write.rekey). The unit resets after the reply: the running
    # role must not number another event under the old key.
    import identity

    n = _nonce(req)
    cfg = _landed(con, n)
    if cfg is not None:
        return {"key_fingerprint": identity.fingerprint(cfg["key"]), "repeat": True}
    reboot = getattr(con.board, "reboot", None)
    if reboot is None:
        raise ConsoleError("bad_request", "this board cannot reboot itself: factory_reset and write_config")
    from identity.write import rekey

    try:
        fp = rekey(con.root, req, n, _running(con))  # not_provisioned, invalid_config as they are
    except OSError as e:
        raise ConsoleError("storage_error", "flash write failed: %r" % e)
    con.changed = True
    send(con, {"id": req.get("id"), "ok": True, "key_fingerprint": fp, "rebooting": True})
    reboot()


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

    cfg = _running(con)  # a running alarm button has no reader to probe (selftest.run)
    return selftest.run(con.board, cfg is None or cfg["role"] != "alarm")


def reboot(con, req):
    reboot = getattr(con.board, "reboot", None)
    if reboot is None:
        raise ConsoleError("bad_request", "this board cannot reboot itself")
    # Answer first: the reset takes the serial line with it.
    send(con, {"id": req.get("id"), "ok": True, "rebooting": True})
    reboot()
