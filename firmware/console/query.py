# The console's commands that change nothing (CONSOLE.md): identify, read_config, selftest and
# reboot. Imported by console/admin.py for a request naming one of them, dropped after the reply.
#
# On a running unit (con.cfg: the identity it booted with, and nothing written since) identify
# and read_config answer from that dict, without importing identity or reading and parsing the
# file again: that was 3.2 KB of the ~5.3 KB a request needed beside a running role (issue 11:
# MemoryError in identify at 64 KB). identity is imported only by the commands that need it.
# Safe to repeat: a tool's retry after a lost reply asks again.

from console.admin import ConsoleError, _put, _running, send

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
    # What `fengqiao deploy` needs to tell whether to flash: the image's hash (the file
    # firmware.sha that tools/flash.py puts at the code root), where the code runs from, and the
    # bytecode version a .mpy for this MicroPython must have. In a second dict: one of all 13
    # fields is a table of 272 B in one piece (console/admin.py _put writes the two as one).
    import sys

    i = sys.implementation
    more = {"code": None, "upy": "%d.%d.%d" % i.version[:3], "mpy": getattr(i, "_mpy", None)}
    if cfg is not None:
        more["device_id"] = cfg["device_id"]
        more["role"] = cfg["role"]
    if con.clock is not None:  # a running unit: its time (Unix seconds; 0: not known yet)
        more["time"] = con.clock.now()
    f = globals().get("__file__")  # none when frozen into the firmware
    if f:
        root = more["code"] = f[:f.rfind("console/")].rstrip("/") or ("/" if f[0] == "/" else ".")
        try:
            with open(root + "/firmware.sha") as h:
                more["fw_hash"] = h.read(64).strip()
        except OSError:
            pass
    return [_put, out, more]


def _fp(key):
    # identity.fingerprint (first 8 bytes of SHA-256, hex), here so that a running unit answers
    # read_config without importing identity: 1.9 KB of heap (64-bit), which with the console's
    # own modules made read_config the largest request beside a running role.
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(bytes(key)).digest()[:8]).decode()


def read_config(con, req):
    cfg = _running(con)
    if cfg is None:
        import identity

        cfg = identity.load(con.root)  # not_provisioned / corrupt_config go back as they are
    # Secrets never leave the unit, only their fingerprints: the key and the Wi-Fi password.
    # The identity is not copied (a running unit's is its live one): _put leaves them out.
    over = {"key": _put, "prev_key": _put, "wifi_password": _put, "key_fingerprint": _fp(cfg["key"])}
    k = cfg.get("prev_key")  # after a rekey: the old key (hex), for records numbered under it
    if k:
        import binascii

        over["prev_key_fingerprint"] = _fp(binascii.unhexlify(k))
    pw = cfg.get("wifi_password", "")
    over["wifi_password_fingerprint"] = _fp(pw.encode()) if pw else ""
    return {"cfg": [_put, cfg, over]}


def selftest(con, req):
    import selftest

    cfg = _running(con)  # a running alarm button has no reader to probe (selftest.run)
    out, more = selftest.run(con.board, cfg is None or cfg["role"] != "alarm")
    return [_put, out, more]


def reboot(con, req):
    reboot = getattr(con.board, "reboot", None)
    if reboot is None:
        raise ConsoleError("bad_request", "this board cannot reboot itself")
    # Answer first: the reset takes the serial line with it.
    send(con, {"id": req.get("id"), "ok": True, "rebooting": True})
    reboot()
