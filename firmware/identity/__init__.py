# Persistent device identity: who this unit is, its secret key and its settings.
#
# Failures this module survives (and how):
# - power cut while saving: the new file is written beside the old one and renamed over it
#   (rename is atomic on LittleFS, FAT's rename of a small file and POSIX), so a reader sees the
#   old identity or the new one, never half of each;
# - a corrupted or truncated file (flash wear, a torn write on a file system without atomic
#   rename): a CRC-32 line after the JSON detects it; load() raises CorruptConfig, never returns
#   garbage, and the console reports it so a technician can factory-reset and re-provision;
# - invalid values from the console: validate() raises InvalidConfig naming the field; nothing is
#   written.
#
# File format (also written directly by tools/hostboard.provision_dir for tests), at
# <root>/data/identity.cfg:
#     line 1: one JSON object (the config; the key as 64 lowercase hex digits under "key")
#     line 2: CRC-32 (binascii.crc32, as on zlib) of the bytes of line 1, 8 lowercase hex digits
# A factory reset removes every file under <root>/data/ (outbox, sequence blocks and all), so a
# re-provisioned unit never sends an old identity's events under a new one.
#
# Split for RAM: this package's __init__ is what a running role needs (load, fingerprint); the
# write side (validate, save, factory_reset) is identity/write.py, imported on first use.
# Measured on the Unix port (64-bit, .mpy): ~5 KB for this part (7.5 KB before the split), ~4 KB
# more for write.py.

import binascii
import hashlib
import json
import os

FILE_NAME = "identity.cfg"
DATA_DIR = "data"

ROLES = ("alarm", "checkin")

# Defaults for settings the provisioning tool did not set (the gateway may change them later
# with a `config` downlink; that is the application's business, not this file's).
DEFAULT_SETTINGS = {
    "heartbeat_interval_s": 300,
    "checkin_repeat_s": 600,
    "hold_ms": 1000,
    "low_battery_mv": 3400,
}


class IdentityError(Exception):
    pass


class NotProvisioned(IdentityError):
    pass


class CorruptConfig(IdentityError):
    pass


class InvalidConfig(IdentityError):
    # args[0] is the field name, args[1] what is wrong with it.
    pass


def _join(a, b):
    if a.endswith("/"):
        return a + b
    return a + "/" + b


def data_dir(root):
    return _join(root, DATA_DIR)


def path(root):
    return _join(data_dir(root), FILE_NAME)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def is_provisioned(root):
    return _exists(path(root))


def fingerprint(key):
    # First 8 bytes of SHA-256(key), 16 lowercase hex digits. One-way: safe to print on a label
    # and to compare between the device, the tool and the gateway without revealing the key.
    return binascii.hexlify(hashlib.sha256(bytes(key)).digest()[:8]).decode()


def crc32_hex(data):
    return "%08x" % (binascii.crc32(data) & 0xFFFFFFFF)


def decode(raw):
    """The config dict from the file's bytes; CorruptConfig if the CRC, the JSON or a field the
    application relies on is wrong. (Every field was validated when the file was written; the
    CRC says it has not changed since.)"""
    lines = raw.split(b"\n")
    if len(lines) < 2 or crc32_hex(lines[0]).encode() != lines[1].strip():
        raise CorruptConfig("identity file fails its CRC")
    try:
        doc = json.loads(lines[0])
        if type(doc) is not dict or doc.get("v") != 1:
            raise CorruptConfig("identity file has an unknown version")
        doc["key"] = binascii.unhexlify(doc["key"])
        if len(doc["key"]) != 32 or doc["role"] not in ROLES:
            raise ValueError
        for name in ("device_id", "key_id", "broker_port"):
            if type(doc[name]) is not int:
                raise ValueError
        settings = dict(DEFAULT_SETTINGS)
        settings.update(doc.get("settings") or {})
        doc["settings"] = settings
    except (ValueError, KeyError, TypeError):
        raise CorruptConfig("identity file has a bad or missing field")
    del doc["v"]
    return doc


def load(root):
    try:
        with open(path(root), "rb") as f:
            raw = f.read()
    except OSError:
        raise NotProvisioned(path(root))
    return decode(raw)


def load_pins(root):
    """Pin overrides from the identity, {} when unprovisioned or unreadable (boards use this)."""
    try:
        return load(root).get("pins") or {}
    except IdentityError:
        return {}


# The write side, imported on first use (identity/write.py).
def validate(cfg):
    from identity.write import validate

    return validate(cfg)


def save(root, cfg):
    """Validate and write atomically; returns the key fingerprint."""
    from identity.write import save

    return save(root, cfg)


def factory_reset(root):
    """Remove the identity first, then every file under data/."""
    from identity.write import factory_reset

    factory_reset(root)


def encode(cfg):
    from identity.write import encode

    return encode(cfg)
