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

import binascii
import json
import os


class IdentityError(Exception):
    # args: (code, detail); code as in CONSOLE.md's error codes.
    pass


def data_dir(root):
    return root.rstrip("/") + "/data"


def path(root):
    return data_dir(root) + "/identity.cfg"


def is_provisioned(root):
    try:
        os.stat(path(root))
        return True
    except OSError:
        return False


def fingerprint(key):
    # First 8 bytes of SHA-256(key), 16 lowercase hex digits. One-way: safe to print on a label
    # and to compare between the device, the tool and the gateway without revealing the key.
    import hashlib

    return binascii.hexlify(hashlib.sha256(bytes(key)).digest()[:8]).decode()


def settings(given):
    """The settings with defaults for those the provisioning tool did not set (the gateway may
    change them later with a `config` downlink; that is the application's business)."""
    s = {"heartbeat_interval_s": 300, "checkin_repeat_s": 600, "hold_ms": 1000, "low_battery_mv": 3400}
    s.update(given or {})
    return s


def load(root):
    """The config dict; IdentityError not_provisioned (no file) or corrupt_config (the CRC, the
    JSON or a field the application relies on is wrong). Every field was validated when the
    file was written; the CRC says it has not changed since."""
    try:
        with open(path(root), "rb") as f:
            raw = f.read()
    except OSError:
        raise IdentityError("not_provisioned", "no identity on this unit")
    lines = raw.split(b"\n")
    # binascii.crc32 is unsigned on MicroPython and CPython 3: no mask needed.
    if len(lines) < 2 or b"%08x" % binascii.crc32(lines[0]) != lines[1].strip():
        raise IdentityError("corrupt_config", "identity file fails its CRC")
    try:
        doc = json.loads(lines[0])
        if doc.pop("v") != 1:
            raise ValueError
        doc["key"] = binascii.unhexlify(doc["key"])
        if len(doc["key"]) != 32 or doc["role"] not in ("alarm", "checkin"):
            raise ValueError
        for name in ("device_id", "key_id", "broker_port"):
            if type(doc[name]) is not int:
                raise ValueError
        doc["settings"] = settings(doc.get("settings"))
    except (ValueError, KeyError, TypeError, AttributeError):  # AttributeError: not an object
        raise IdentityError("corrupt_config", "identity file has a bad or missing field")
    return doc


def load_pins(root):
    """Pin overrides from the identity, {} when unprovisioned or unreadable (boards use this)."""
    try:
        return load(root).get("pins") or {}
    except IdentityError:
        return {}
