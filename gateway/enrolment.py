"""Two-phase enrolment of boards (issue 15): the gateway allocates the device id and holds the new
key *pending* while the technician's tool keys the board; only a board that read back the key's
fingerprint is confirmed, i.e. registered in the registry and allowed on the broker.

    enr = Enrolments(db_path, master_key_path)
    e = enr.pending_for_hwid(hwid)                  # a board keyed (or being keyed) earlier: resume it
    e = enr.begin(hwid, role, place_id, power, key)  # new device id (gateway-allocated), key wrapped
    key = enr.key_of(e)                             # bytearray: for writing the board again
    enr.confirm(e, registry, broker)                # registry + broker (reload) + state confirmed
    enr.cancel(e)                                   # the board was rolled back: forget the pending key
    enr.deployed(hwid) -> Enrolment | None          # the board was enrolled already (twice is detected)
    enr.reserve(technician, count) -> (first, last) # ids for a technician away from the gateway (bundles)

Failures it is built for (a cable pulled at any step, a tool killed):
- before `begin`: nothing at the gateway;
- after `begin`, before the board holds the key: a pending row (never registered, never on the
  broker); the rerun finds it by hardware id and writes the same key with the same device id;
- after the board holds the key, before `confirm`: the rerun reads the fingerprint back, finds the
  pending row with that fingerprint and confirms it;
- inside `confirm` (registry written, broker or state not yet): confirm is idempotent (the device
  already registered with this very key counts as done).

The pending key is wrapped with the registry's master key (AES-256-GCM, associated data naming
the device, key id and hardware id), like the registry's own keys: never stored in clear.
"""

import sqlite3
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.registry import RegistryError, load_master_key

FIRST_DEVICE_ID = 0x100  # ids below are left for hand-registered devices

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enrolments (
    n INTEGER PRIMARY KEY AUTOINCREMENT, device_id INTEGER NOT NULL, hwid TEXT NOT NULL,
    role TEXT NOT NULL, place_id TEXT, power TEXT NOT NULL, key_id INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, nonce BLOB, wrapped BLOB,
    state TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'cancelled')),
    kind TEXT NOT NULL DEFAULT 'new', replaces INTEGER, created_at REAL NOT NULL, done_at REAL);
CREATE INDEX IF NOT EXISTS enrolments_hwid ON enrolments (hwid);
CREATE TABLE IF NOT EXISTS id_reservations (
    first_id INTEGER NOT NULL, last_id INTEGER NOT NULL, technician TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS device_history (
    device_id INTEGER NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, other_id INTEGER, detail TEXT);
"""


class EnrolmentError(RegistryError):
    """An enrolment step that cannot be made (the message says why and what to do)."""


@dataclass(frozen=True)
class Enrolment:
    n: int
    device_id: int
    hwid: str
    role: str
    place_id: "str | None"
    power: str
    key_id: int
    fingerprint: str
    state: str
    kind: str
    replaces: "int | None"


_COLS = "n, device_id, hwid, role, place_id, power, key_id, fingerprint, state, kind, replaces"


def fingerprint(key):
    import hashlib

    return hashlib.sha256(bytes(key)).hexdigest()[:16]


def _aad(device_id, key_id, hwid):
    return b"fengqiao-enrolment|%08x|%d|%s" % (device_id, key_id, hwid.encode())


class Enrolments:
    def __init__(self, db_path, master_key_path, clock=None):
        self._aead = AESGCM(load_master_key(master_key_path))
        self._clock = clock
        self._db = sqlite3.connect(str(db_path), isolation_level=None, timeout=30)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        # the registry's tables, so ids can be allocated against them (created by Registry)
        from gateway.registry import _SCHEMA as REGISTRY_SCHEMA

        self._db.executescript(REGISTRY_SCHEMA)

    def _now(self):
        return self._clock.now() if self._clock else time.time()

    def close(self):
        self._db.close()

    def _one(self, where, params):
        row = self._db.execute("SELECT %s FROM enrolments WHERE %s ORDER BY n DESC LIMIT 1" % (_COLS, where),
                               params).fetchone()
        return Enrolment(*row) if row else None

    def pending_for_hwid(self, hwid):
        return self._one("hwid = ? AND state = 'pending'", (hwid,))

    def pending_for_device(self, device_id):
        return self._one("device_id = ? AND state = 'pending'", (device_id,))

    def deployed(self, hwid):
        """The confirmed enrolment of this board whose device is still active, or None."""
        e = self._one("hwid = ? AND state = 'confirmed'", (hwid,))
        if e is None:
            return None
        row = self._db.execute("SELECT status FROM devices WHERE device_id = ?", (e.device_id,)).fetchone()
        return e if row and row[0] == "active" else None

    def of_device(self, device_id):
        return self._one("device_id = ? AND state = 'confirmed'", (device_id,))

    def history(self, device_id):
        return self._db.execute("SELECT at, event, other_id, detail FROM device_history WHERE device_id = ?"
                                " ORDER BY at", (device_id,)).fetchall()

    def begin(self, hwid, role, place_id, power, key, kind="new", device_id=None, key_id=1, replaces=None):
        """A pending enrolment with a new device id allocated here (or `device_id` for a key rotation)."""
        nonce = secrets.token_bytes(12)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._one("hwid = ? AND state = 'pending'", (hwid,)) is not None:
                raise EnrolmentError("board %s already has a pending enrolment: resume it" % hwid)
            if device_id is None:
                device_id = self._next_free()
            wrapped = self._aead.encrypt(nonce, bytes(key), _aad(device_id, key_id, hwid))
            db.execute("INSERT INTO enrolments (device_id, hwid, role, place_id, power, key_id, fingerprint, nonce,"
                       " wrapped, state, kind, replaces, created_at) VALUES (?,?,?,?,?,?,?,?,?,'pending',?,?,?)",
                       (device_id, hwid, role, place_id, power, key_id, fingerprint(key), nonce, wrapped, kind,
                        replaces, self._now()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.pending_for_hwid(hwid)

    def _next_free(self):
        top = self._db.execute("SELECT MAX(m) FROM (SELECT MAX(device_id) AS m FROM devices UNION ALL"
                               " SELECT MAX(device_id) FROM enrolments UNION ALL"
                               " SELECT MAX(last_id) FROM id_reservations)").fetchone()[0]
        return max(FIRST_DEVICE_ID, (top or 0) + 1)

    def reserve(self, technician, count):
        """Allocate `count` device ids to a technician working away from the gateway (enrolment
        bundle); returns (first, last). Only these ids are accepted from that technician's bundles."""
        if not 1 <= count <= 10000:
            raise EnrolmentError("reserve 1..10000 device ids, not %d" % count)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            first = self._next_free()
            db.execute("INSERT INTO id_reservations (first_id, last_id, technician, created_at) VALUES (?,?,?,?)",
                       (first, first + count - 1, technician, self._now()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return first, first + count - 1

    def reserved_for(self, device_id, technician):
        return self._db.execute("SELECT 1 FROM id_reservations WHERE ? BETWEEN first_id AND last_id AND technician = ?",
                                (device_id, technician)).fetchone() is not None

    def key_of(self, e):
        row = self._db.execute("SELECT nonce, wrapped FROM enrolments WHERE n = ?", (e.n,)).fetchone()
        if row is None or row[1] is None:
            raise EnrolmentError("enrolment of %08x holds no key any more" % e.device_id)
        try:
            return bytearray(self._aead.decrypt(bytes(row[0]), bytes(row[1]), _aad(e.device_id, e.key_id, e.hwid)))
        except InvalidTag as exc:
            raise EnrolmentError("the pending key of %08x does not unwrap (wrong master key?)" % e.device_id) from exc

    def _finish(self, e, state):
        # the wrapped copy goes: a confirmed key lives in the registry only
        self._db.execute("UPDATE enrolments SET state = ?, done_at = ?, nonce = NULL, wrapped = NULL WHERE n = ?",
                         (state, self._now(), e.n))

    def cancel(self, e):
        self._finish(e, "cancelled")

    def note(self, device_id, event, other_id=None, detail=None):
        self._db.execute("INSERT INTO device_history (device_id, at, event, other_id, detail) VALUES (?,?,?,?,?)",
                         (device_id, self._now(), event, other_id, detail))

    def confirm(self, e, registry, broker=None):
        """Register the board (new / replace / rotate) and allow it on the broker; idempotent."""
        key = self.key_of(e)
        try:
            dev = registry.device(e.device_id)
            if e.kind == "rotate":
                if dev is None or dev.key_id < e.key_id:
                    registry.rotate_key(e.device_id, key=bytes(key))
            elif dev is None:
                registry.add_device(e.device_id, e.role, e.place_id, key=bytes(key), key_id=e.key_id, power=e.power)
            elif bytes(registry.device_key(e.device_id, e.key_id)) != bytes(key):
                raise EnrolmentError("device %08x is registered with another key" % e.device_id)
            if e.kind == "replace" and e.replaces is not None:
                old = registry.device(e.replaces)
                if old is not None and old.status == "active":
                    registry.revoke_device(e.replaces)
            if broker is not None:
                broker.add_device(e.device_id, bytes(key), reload=False)
                if e.kind == "replace" and e.replaces is not None:
                    broker.revoke_device(e.replaces, reload=False)
                broker.reload()
        finally:
            for i in range(len(key)):
                key[i] = 0
        self._finish(e, "confirmed")
        self.note(e.device_id, {"new": "enrolled", "replace": "replaces", "rotate": "key rotated"}[e.kind],
                  e.replaces, "board %s key %d fingerprint %s" % (e.hwid, e.key_id, e.fingerprint))
        if e.kind == "replace" and e.replaces is not None:
            self.note(e.replaces, "replaced by", e.device_id, "revoked")
