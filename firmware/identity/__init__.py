# Persistent device identity: who this unit is, its secret key and its settings.
#
# Failures this module survives (and how):
# - power cut while saving: the new file is written beside the old one and renamed over it
#   (rename is atomic on LittleFS, FAT's rename of a small file and POSIX), so a reader sees the
#   old identity or the new one, never half of each;
# - a corrupted or truncated file (flash wear, a torn write on a file system without atomic
#   rename): a CRC-32 line after the JSON detects it; load() raises IdentityError("corrupt_config"),
#   never returns garbage, and the console reports it so a technician can factory-reset and
#   re-provision;
# - invalid values from the console: identity.write.validate() raises
#   IdentityError("invalid_config", "<field>: <why>"); nothing is written.
#
# One exception class, IdentityError(code, detail): the code is the console's error code for it
# (CONSOLE.md): "not_provisioned", "corrupt_config" or "invalid_config". (Four classes were ~1 KB
# of heap; the console passes the code on as it is.)
#
# File format (also written directly by tools/hostboard.provision_dir for tests), at
# <root>/data/identity.cfg:
#     line 1: one JSON object (the config; the key as 64 lowercase hex digits under "key")
#     line 2: CRC-32 (binascii.crc32, as on zlib) of the bytes of line 1, 8 lowercase hex digits
# A factory reset removes every file under <root>/data/ (outbox, sequence blocks and all), so a
# re-provisioned unit never sends an old identity's events under a new one.
#
# RAM: a running role holds none of this. app.runtime loads the identity at boot and then drops
# this module from sys.modules; the console imports it for a request and drops it again (see
# console/__init__.py). The write side (validate, save, factory_reset) is identity/write.py,
# imported the same way. Measured (Unix port, 64-bit, code in ROMFS, qstr pool pre-grown): ~1.2 KB
# while imported (2.7 KB before one exception class and no wrappers for the write side).

# Heap: few globals (12; the built-in modules but io are imported where they are used), so the
# table of the module's globals is one 192-byte piece: the console imports this module into a
# running unit's heap, which is in small pieces by then.

import io


class IdentityError(Exception):
    # args: (code, detail); code as in CONSOLE.md's error codes.
    pass


def data_dir(root):
    return root.rstrip("/") + "/data"


def path(root):
    return data_dir(root) + "/identity.cfg"


def is_provisioned(root):
    import os

    try:
        os.stat(path(root))
        return True
    except OSError:
        return False


def fingerprint(key):
    # First 8 bytes of SHA-256(key), 16 lowercase hex digits. One-way: safe to print on a label
    # and to compare between the device, the tool and the gateway without revealing the key.
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(bytes(key)).digest()[:8]).decode()


def settings(s):
    """The settings with defaults for those the provisioning tool did not set (the gateway may
    change them later with a `config` downlink; that is the application's business)."""
    d = {"heartbeat_interval_s": 300, "checkin_repeat_s": 600, "hold_ms": 1000, "low_battery_mv": 3400}
    d.update(s or {})
    return d


class _Line(io.IOBase):
    # Line 1 of the identity file as json.load reads it, a byte at a time: its CRC-32 on the way,
    # the end of the stream at the newline. So the file is never in the heap in one piece (but
    # each byte makes ~100 bytes of garbage: only when that one piece is not to be had).

    def __init__(self, f):
        self.f = f
        self.crc = 0
        self.one = bytearray(1)  # None once the newline (or the end of the file) was read

    def readinto(self, b):
        import binascii

        one = self.one
        i = 0
        while one is not None and i < len(b):
            if not self.f.readinto(one) or one[0] == 10:
                self.one = one = None
                break
            # binascii.crc32 is unsigned on MicroPython and CPython 3: no mask needed.
            self.crc = binascii.crc32(one, self.crc)
            b[i] = one[0]
            i += 1
        return i


def load(root):
    """The config dict; IdentityError not_provisioned (no file) or corrupt_config (the CRC, the
    JSON or a field the application relies on is wrong). Every field was validated when the
    file was written; the CRC says it has not changed since."""
    import binascii
    import json
    import os

    p = path(root)
    try:
        f = open(p, "rb")
    except OSError:
        raise IdentityError("not_provisioned", "no identity on this unit")
    with f:
        try:
            raw = f.read(os.stat(p)[6])  # in one piece, parsed in place: the usual case
        except MemoryError:
            raw = None
        doc = None
        if raw is None:
            # A console request on a running unit whose heap is in small pieces: a byte at a
            # time, no piece larger than the config's own values.
            f.seek(0)
            line = _Line(f)
            try:
                doc = json.load(line)
            except ValueError:
                while line.readinto(bytearray(1)):
                    pass  # the rest of the line, for its CRC
            crc = line.crc
            raw = f.read(16)
        else:
            nl = raw.find(b"\n")
            body = memoryview(raw)[:nl]
            crc = binascii.crc32(body)
            try:
                doc = json.loads(body)
            except ValueError:
                pass
            raw = raw[nl + 1:] if nl >= 0 else b""
        if b"%08x" % crc != raw.strip():
            raise IdentityError("corrupt_config", "identity file fails its CRC")
    try:
        if doc.pop("v") != 1:  # AttributeError if doc is not an object
            raise ValueError
        doc["key"] = binascii.unhexlify(doc["key"])
        if len(doc["key"]) != 32 or doc["role"] not in ("alarm", "checkin"):
            raise ValueError
        for name in ("device_id", "key_id", "broker_port"):
            if type(doc[name]) is not int:
                raise ValueError
        doc["settings"] = settings(doc.get("settings"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IdentityError("corrupt_config", "identity file has a bad or missing field")
    return doc


def load_pins(root):
    """Pin overrides from the identity, {} when unprovisioned or unreadable (boards use this)."""
    try:
        return load(root).get("pins") or {}
    except IdentityError:
        return {}
