# The console's request handling (CONSOLE.md): framing, request checks, the reply, and which
# module answers the command: console/query.py (identify, read_config, selftest, reboot) or
# console/change.py (write_config, rekey, factory_reset). Imported by console/__init__.py for one
# line at a time and dropped after the reply, with the modules it imported, so a running role
# does not hold any of it (see there).
#
# Errors carry (code, detail), the code from CONSOLE.md's list: ConsoleError here, and
# identity's IdentityError (identity.load/save raise it with the console's codes already:
# not_provisioned, corrupt_config, invalid_config), which passes through as it is.
# Each command takes the Console (`con`) and the request, and returns the reply fields or raises.
#
# Heap: a request finds a running unit's heap in small pieces, so nothing here needs a large
# piece: the request is parsed in place, the reply written a value at a time, and these modules
# keep few globals (the table of a module's globals dict is one piece; the built-in modules are
# imported where they are used). A request imports only its own command's module: each function
# a module holds is heap while it is imported (its code sits in flash, but not the objects
# that describe it), and with every command in one module a refused write_config beside a
# running check-in point (64 KB) met MemoryError in 1 of 5 runs on a busy machine (issue 11).


class ConsoleError(Exception):
    # args: (code, detail), as IdentityError.
    pass


def _running(con):
    # The identity the unit runs with, if it is still the stored one (no write or erase since).
    return None if con.changed else con.cfg


def _put(w, crc, obj):
    # obj as JSON through w, a dict a key and value at a time (no copy of the whole reply in
    # the heap); returns the CRC-32 of what was written, continuing from crc.
    # [_put, d1, d2, ...] is written as one object: the keys of the dicts in turn, each once
    # (where it comes first), with the value of the last dict that has it (_put: left out; a
    # dict may be None). So a reply is its id and ok, then the command's fields, from their own
    # dicts, and a running unit's identity is answered as [_put, identity, over] (over's keys
    # replace the secrets), not copied: a copy, or a dict of 9 fields or more, needs one piece
    # of ~300 B, which a running 64 KB heap may not have.
    import binascii
    import json

    ds = obj if type(obj) is list and obj and obj[0] is _put else None
    if ds or type(obj) is dict:
        n = len(ds) if ds else 2
        sep = "{"
        for i in range(1, n):
            d = ds[i] if ds else obj
            for k in d or ():
                v = d[k]
                for j in range(1, n):
                    e = ds[j] if ds else None
                    if j != i and e and k in e:
                        if j < i:
                            v = _put  # written already, where it came first
                            break
                        v = e[k]
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
        # good, so made-up command names would leak heap. Each request imports only the module
        # of its own command (console/query.py: the ones that read; console/change.py: the ones
        # that write an identity), so a request beside a running role needs less heap.
        if cmd in ("identify", "read_config", "selftest", "reboot"):
            from console import query as m
        elif cmd in ("write_config", "rekey", "factory_reset"):
            from console import change as m
        else:
            raise E("unknown_cmd", "unknown command %r" % (cmd,))
        # The reply: id and ok, then the command's fields (a dict, or [_put, dicts ...]), not
        # merged into one dict (_put).
        out = getattr(m, cmd)(con, req)
        reply = [_put, {"id": rid, "ok": True}] + (out[1:] if type(out) is list else [out])
    except Exception as e:  # noqa: BLE001 - a bug in a handler must not take the unit down
        i = sys.modules.get("identity")
        if type(e) is E or i and isinstance(e, i.IdentityError):
            reply = {"id": rid, "ok": False, "error": e.args[0], "detail": e.args[1]}
        else:
            if con.log:
                con.log("console: internal error: %r" % e)
            reply = {"id": rid, "ok": False, "error": "internal", "detail": repr(e)[:80]}
    send(con, reply)
