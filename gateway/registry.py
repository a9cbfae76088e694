"""The registry: places, devices and their keys (wrapped at rest), downlink sequence numbers.

Interface (what the gateway uses; a PostgreSQL implementation would provide the same methods):

    reg = Registry(db_path, master_key_path)                       # SQLite, WAL; creates tables
    reg.add_place(place_id, level, name, parent_id=None)           # county > township > village > grid > household|checkpoint
    reg.place(place_id) -> Place | None ; reg.places() -> [Place]; reg.place_path(place_id) -> [Place] (root first)
    reg.add_device(device_id, role, place_id=None, key=None, key_id=1, heartbeat_interval_s=None, power="mains") -> key
    reg.rotate_key(device_id) -> (key_id, key)                     # new key id, new uplink sequence space;
                                                                   # older key ids stay valid (SPEC section 4, key rotation)
    reg.revoke_device(device_id) ; reg.device(device_id) -> Device | None ; reg.devices() -> [Device]
    reg.device_key(device_id, key_id) -> bytes                     # raises UnknownDevice / RevokedDevice / UnknownKey
    reg.next_downlink_seq(device_id) -> int                        # strictly increasing per device, across key ids and restarts
    reg.refresh_if_changed()                                       # drop caches when another process wrote

Device keys are encrypted with AES-256-GCM under a 32-byte master key kept in its own file (mode
0600, created on first use); the associated data binds each wrapped key to its device and key id,
so a wrapped key copied onto another row does not decrypt. Unwrapped keys stay in memory only.

Downlink numbers are reserved in blocks (like the device's uplink counter): one write per
DOWNLINK_BLOCK frames, and a restart skips the rest of the block, so a number is never reused.
"""

import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# UnknownDevice / RevokedDevice (SPEC sections 2 and 8) are protocol errors, subclasses of UnknownKey;
# they are imported here so that `from gateway.registry import UnknownDevice` keeps working.
from protocol.errors import RevokedDevice, UnknownDevice, UnknownKey
from protocol.frame import device_id_text

LEVELS = ("county", "township", "village", "grid", "household", "checkpoint")
PARENT_LEVEL = {"township": "county", "village": "township", "grid": "village", "household": "grid", "checkpoint": "grid"}
ROLES = ("alarm_button", "checkpoint")
DOWNLINK_BLOCK = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS places (
    place_id TEXT PRIMARY KEY, level TEXT NOT NULL, name TEXT NOT NULL, parent_id TEXT REFERENCES places(place_id));
CREATE TABLE IF NOT EXISTS devices (
    device_id INTEGER PRIMARY KEY, role TEXT NOT NULL, place_id TEXT REFERENCES places(place_id),
    key_id INTEGER NOT NULL, status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    heartbeat_interval_s INTEGER, power TEXT NOT NULL DEFAULT 'mains',
    created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS device_keys (
    device_id INTEGER NOT NULL REFERENCES devices(device_id), key_id INTEGER NOT NULL,
    nonce BLOB NOT NULL, wrapped BLOB NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (device_id, key_id));
CREATE TABLE IF NOT EXISTS downlink_seq (device_id INTEGER PRIMARY KEY, reserved_until INTEGER NOT NULL);
-- bumped by every registry change (any process), so a running gateway drops its caches
CREATE TABLE IF NOT EXISTS registry_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO registry_version (id, version) VALUES (1, 0);
"""


class RegistryError(ValueError):
    """A registry change that cannot be made (unknown place, wrong level, duplicate id, ...)."""


@dataclass(frozen=True)
class Place:
    place_id: str
    level: str
    name: str
    parent_id: "str | None"


@dataclass(frozen=True)
class Device:
    device_id: int
    role: str
    place_id: "str | None"
    key_id: int              # the current key id (older ones still verify frames still in outboxes)
    status: str              # "active" | "revoked"
    heartbeat_interval_s: "int | None"
    power: str               # "mains" | "battery"
    created_at: float

    @property
    def text_id(self):
        return device_id_text(self.device_id)


class RegistryInterface(Protocol):
    """What the gateway needs from a registry; `Registry` (SQLite) implements it, a PostgreSQL
    class would too. `device_key` is on the hot path: implementations cache unwrapped keys and
    drop the cache in `refresh_if_changed` (called once per batch)."""

    def add_place(self, place_id, level, name, parent_id=None) -> Place: ...
    def place(self, place_id) -> "Place | None": ...
    def places(self) -> "list[Place]": ...
    def place_path(self, place_id) -> "list[Place]": ...
    def add_device(self, device_id, role, place_id=None, key=None, key_id=1, heartbeat_interval_s=None,
                   power="mains") -> bytes: ...
    def rotate_key(self, device_id, key=None) -> "tuple[int, bytes]": ...
    def revoke_device(self, device_id) -> None: ...
    def set_device_place(self, device_id, place_id) -> None: ...
    def device(self, device_id) -> "Device | None": ...
    def devices(self) -> "list[Device]": ...
    def device_key(self, device_id, key_id) -> bytes: ...
    def next_downlink_seq(self, device_id) -> int: ...
    def refresh_if_changed(self) -> bool: ...
    def close(self) -> None: ...


def load_master_key(path):
    """The 32-byte master key in `path` (hex), created with mode 0600 when missing."""
    path = str(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    mode = os.stat(path).st_mode & 0o077
    if mode:
        raise RegistryError("master key file %s is readable by others (chmod 600 it)" % path)
    with open(path) as f:
        key = bytes.fromhex(f.read().strip())
    if len(key) != 32:
        raise RegistryError("master key file %s must hold 64 hex digits" % path)
    return key


def _aad(device_id, key_id):
    return b"fengqiao-device-key|%08x|%d" % (device_id, key_id)


class Registry:
    def __init__(self, path, master_key_path, clock=None):
        self.path = str(path)
        self._aead = AESGCM(load_master_key(master_key_path))
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._keys = {}        # (device_id, key_id) -> key, only for active devices
        self._devices = {}     # device_id -> Device
        self._downlink = {}    # device_id -> [next, reserved_until]
        self._data_version = None
        self.refresh_if_changed()

    def _now(self):
        return self._clock.now() if self._clock else time.time()

    def close(self):
        with self._lock:
            self._db.close()

    def refresh_if_changed(self):
        """Drop the caches when another connection (e.g. the CLI) changed devices or places. Cheap:
        one indexed read. (Not PRAGMA data_version: the event store's commits to the same file
        would change it on every batch.)"""
        with self._lock:
            v = self._db.execute("SELECT version FROM registry_version WHERE id = 1").fetchone()[0]
            if v != self._data_version:
                self._data_version = v
                self._keys.clear()
                self._devices.clear()
                return True
            return False

    def _write(self, sql_and_params):
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in sql_and_params:
                    db.execute(sql, params)
                db.execute("UPDATE registry_version SET version = version + 1 WHERE id = 1")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise RegistryError(str(exc)) from exc
            finally:
                self._keys.clear()
                self._devices.clear()
                self._data_version = db.execute("SELECT version FROM registry_version WHERE id = 1").fetchone()[0]

    # -- places --------------------------------------------------------------------------------

    def add_place(self, place_id, level, name, parent_id=None):
        if level not in LEVELS:
            raise RegistryError("place level must be one of %s" % ", ".join(LEVELS))
        want = PARENT_LEVEL.get(level)
        if want:
            parent = self.place(parent_id) if parent_id else None
            if parent is None or parent.level != want:
                raise RegistryError("a %s belongs to a %s (parent %r)" % (level, want, parent_id))
        elif parent_id is not None:
            raise RegistryError("a county has no parent")
        self._write([("INSERT INTO places (place_id, level, name, parent_id) VALUES (?, ?, ?, ?)"
                      " ON CONFLICT(place_id) DO UPDATE SET level = excluded.level, name = excluded.name,"
                      " parent_id = excluded.parent_id", (place_id, level, name, parent_id))])
        return Place(place_id, level, name, parent_id)

    def place(self, place_id):
        with self._lock:
            row = self._db.execute("SELECT place_id, level, name, parent_id FROM places WHERE place_id = ?",
                                   (place_id,)).fetchone()
        return Place(*row) if row else None

    def places(self):
        with self._lock:
            return [Place(*r) for r in self._db.execute("SELECT place_id, level, name, parent_id FROM places ORDER BY place_id")]

    def place_path(self, place_id):
        path = []
        while place_id:
            p = self.place(place_id)
            if p is None or p in path:
                break
            path.append(p)
            place_id = p.parent_id
        return path[::-1]

    # -- devices -------------------------------------------------------------------------------

    def add_device(self, device_id, role, place_id=None, key=None, key_id=1, heartbeat_interval_s=None, power="mains"):
        """Register a device with `key` (32 bytes; random when None); returns the key."""
        device_id_text(device_id)
        if role not in ROLES:
            raise RegistryError("role must be one of %s" % ", ".join(ROLES))
        if place_id is not None and self.place(place_id) is None:
            raise RegistryError("unknown place %r" % place_id)
        if power not in ("mains", "battery"):
            raise RegistryError("power must be mains or battery")
        if self.device(device_id) is not None:
            raise RegistryError("device %s already exists (revoke it, or rotate its key)" % device_id_text(device_id))
        key = secrets.token_bytes(32) if key is None else bytes(key)
        if len(key) != 32:
            raise RegistryError("a device key is 32 bytes")
        now = self._now()
        self._write([
            ("INSERT INTO devices (device_id, role, place_id, key_id, status, heartbeat_interval_s, power, created_at)"
             " VALUES (?, ?, ?, ?, 'active', ?, ?, ?)", (device_id, role, place_id, key_id, heartbeat_interval_s, power, now)),
            self._key_row(device_id, key_id, key, now),
        ])
        return key

    def _key_row(self, device_id, key_id, key, now):
        if not 0 <= key_id <= 255:
            raise RegistryError("key id must be 0..255")
        nonce = secrets.token_bytes(12)
        wrapped = self._aead.encrypt(nonce, key, _aad(device_id, key_id))
        return ("INSERT INTO device_keys (device_id, key_id, nonce, wrapped, created_at) VALUES (?, ?, ?, ?, ?)",
                (device_id, key_id, nonce, wrapped, now))

    def rotate_key(self, device_id, key=None):
        dev = self._require(device_id)
        if dev.status != "active":
            raise RegistryError("device %s is revoked" % dev.text_id)
        key_id = dev.key_id + 1
        if key_id > 255:
            raise RegistryError("device %s has used all 255 key ids; give it a new device id" % dev.text_id)
        key = secrets.token_bytes(32) if key is None else bytes(key)
        self._write([self._key_row(device_id, key_id, key, self._now()),
                     ("UPDATE devices SET key_id = ? WHERE device_id = ?", (key_id, device_id))])
        return key_id, key

    def revoke_device(self, device_id):
        dev = self._require(device_id)
        self._write([("UPDATE devices SET status = 'revoked', revoked_at = ? WHERE device_id = ?", (self._now(), dev.device_id))])

    def set_device_place(self, device_id, place_id):
        self._require(device_id)
        if place_id is not None and self.place(place_id) is None:
            raise RegistryError("unknown place %r" % place_id)
        self._write([("UPDATE devices SET place_id = ? WHERE device_id = ?", (place_id, device_id))])

    def _require(self, device_id):
        dev = self.device(device_id)
        if dev is None:
            raise RegistryError("unknown device %s" % device_id_text(device_id))
        return dev

    def device(self, device_id):
        with self._lock:
            dev = self._devices.get(device_id)
            if dev is None:
                row = self._db.execute(
                    "SELECT device_id, role, place_id, key_id, status, heartbeat_interval_s, power, created_at"
                    " FROM devices WHERE device_id = ?", (device_id,)).fetchone()
                if row is None:
                    return None
                dev = self._devices[device_id] = Device(*row)
            return dev

    def devices(self):
        with self._lock:
            return [Device(*r) for r in self._db.execute(
                "SELECT device_id, role, place_id, key_id, status, heartbeat_interval_s, power, created_at"
                " FROM devices ORDER BY device_id")]

    def device_key(self, device_id, key_id):
        """The key of an active device, for the strict decoder's key_lookup; raises when unusable."""
        k = self._keys.get((device_id, key_id))
        if k is not None:
            return k
        with self._lock:
            dev = self.device(device_id)
            if dev is None:
                raise UnknownDevice("device %08x is not registered" % device_id)
            if dev.status != "active":
                raise RevokedDevice("device %08x is revoked" % device_id)
            row = self._db.execute("SELECT nonce, wrapped FROM device_keys WHERE device_id = ? AND key_id = ?",
                                   (device_id, key_id)).fetchone()
            if row is None:
                raise UnknownKey("device %08x has no key %d" % (device_id, key_id))
            try:
                k = self._aead.decrypt(bytes(row[0]), bytes(row[1]), _aad(device_id, key_id))
            except InvalidTag as exc:
                raise RegistryError("key %d of device %08x does not unwrap: wrong master key or altered row"
                                    % (key_id, device_id)) from exc
            self._keys[(device_id, key_id)] = k
            return k

    # -- downlink sequence -----------------------------------------------------------------------

    def next_downlink_seq(self, device_id):
        with self._lock:
            state = self._downlink.get(device_id)
            if state is None or state[0] > state[1]:
                row = self._db.execute("SELECT reserved_until FROM downlink_seq WHERE device_id = ?", (device_id,)).fetchone()
                start = (row[0] if row else 0) + 1
                until = start + DOWNLINK_BLOCK - 1
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO downlink_seq (device_id, reserved_until) VALUES (?, ?)"
                                 " ON CONFLICT(device_id) DO UPDATE SET reserved_until = excluded.reserved_until",
                                 (device_id, until))
                self._db.execute("COMMIT")
                state = self._downlink[device_id] = [start, until]
            seq = state[0]
            state[0] += 1
            return seq
