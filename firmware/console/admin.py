# The console commands that change or test the unit (CONSOLE.md), imported on first use: a
# running role keeps only the framing, identify and read_config (console/__init__.py) in RAM.
# Each takes the Console (`con`) and the request, and returns the reply fields or raises.

import identity
from console import ConsoleError


def write_config(con, req):
    if identity.is_provisioned(con.root):
        raise ConsoleError("already_provisioned",
                           "this unit has an identity; factory_reset it first")
    cfg = req.get("cfg")
    try:
        fp = identity.save(con.root, cfg)
    except identity.InvalidConfig as e:
        raise ConsoleError("invalid_config", "%s: %s" % (e.args[0], e.args[1]))
    except OSError as e:
        raise ConsoleError("storage_error", "flash write failed: %r" % e)
    con.changed = True
    return {"key_fingerprint": fp}


def factory_reset(con, req):
    hwid = con.board.hardware_id()
    if req.get("confirm") != hwid:
        raise ConsoleError("confirm_required",
                           "send confirm: <hardware id> (identify gives it) to erase this unit")
    try:
        identity.factory_reset(con.root)
    except OSError as e:
        raise ConsoleError("storage_error", "erase failed: %r" % e)
    con.changed = True
    return {"erased": True}


def selftest(con, req):
    run = con._selftest
    if run is None:
        import selftest
        run = selftest.run
    return run(con.board)


def reboot(con, req):
    reboot = getattr(con.board, "reboot", None)
    if reboot is None:
        raise ConsoleError("bad_request", "this board cannot reboot itself")
    # Answer first: the reset takes the serial line with it.
    con._send({"id": req.get("id"), "ok": True, "rebooting": True})
    reboot()
