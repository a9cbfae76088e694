"""Enrolment bundles (issue 15): boards keyed in a village, away from the gateway, registered later
by importing one file at the township with `fengqiao device import-enrolment FILE`.

    gw_key = EnrolmentKey.load_or_create(path)          # the gateway's X25519 key (0600 PEM)
    entry = seal_entry(gw_key.public_raw, meta, key)    # one device: its key encrypted to the gateway
    data = make_bundle([entry, ...], technician_key)    # bytes of the file, signed by the technician
    store = BundleStore(db_path)                        # technicians + the replay table, in the gateway DB
    store.add_technician(name, public_key)              # `fengqiao device technician add`
    bundle = open_bundle(data, gw_key, store)           # verified and decrypted, or one of the errors below
    report = import_bundle(data, gw_key, store, registry, broker, enrolments)   # registered, recorded

Errors (all subclass BundleError, itself a ValueError):
    TamperedBundle      not a bundle, a signature that does not verify, a device key that does not
                        decrypt (any byte of the file changed after signing)
    UnknownTechnician   signed by a key the gateway was never given (or one that was removed)
    WrongGateway        encrypted to another gateway's enrolment key
    ReplayedBundle      this bundle id was imported already (the replay table, enrolment_bundles)
    BundleRefused       verified, but its content cannot be registered (a device id not reserved
                        for this technician, an unknown place, a device registered with another key)
    FieldKitError       (laptop side) the field kit is unusable or its reserved ids are used up
    KeyNotHeld          (laptop side) a pending key sealed in an earlier run cannot be read back

The laptop's side is FieldJournal: the Enrolments interface of tools/deploy.py over a JSON journal
of sealed entries and the bundle file (`fengqiao deploy PLAN --kit KIT --technician-key K`).

The file (UTF-8 JSON): {"fengqiao_enrolment_bundle": 1, "body": base64(B), "signature": base64(S)}
with S = Ed25519(technician, b"fengqiao-enrolment-bundle\\x00v1\\x00" + B), so the whole content is
signed. B is JSON: bundle_id (32 hex, random), created_at (ISO 8601), technician (key id: 16 hex =
SHA-256(raw public key)[0:8]), gateway (the recipient X25519 key's id, same rule), devices: a list of
entries. Each entry: meta (device_id, key_id, role, place_id, power, hwid, fingerprint) and epk,
nonce, ct (base64). The device key (32 bytes) is sealed per entry, so an entry can be written to the
laptop's journal as soon as its board is keyed:
    shared = X25519(ephemeral, gateway public); k = HKDF-SHA256(shared, salt = none,
    info = b"fengqiao-enrolment-v1" + epk + gateway public, 32 bytes);
    ct = ChaCha20-Poly1305(k, nonce 12 bytes, key, aad = canonical JSON of meta).
The laptop never holds the gateway's private key: after sealing, it cannot read the keys back.

Import is idempotent per device (a device already registered with the very same key counts as done)
and all-or-nothing for validation: every entry is decrypted and checked before the first write.
"""

import base64
import datetime
import hashlib
import json
import os
import sqlite3
import time

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.keys import key_id_of, load_or_create_private_key, write_private_file

__all__ = ["BundleError", "TamperedBundle", "UnknownTechnician", "WrongGateway", "ReplayedBundle",
           "BundleRefused", "FieldKitError", "KeyNotHeld", "FieldJournal", "load_field_kit", "EnrolmentKey", "BundleStore", "seal_entry", "make_bundle", "open_bundle",
           "import_bundle", "key_id_of"]

FORMAT = 1
_SIG_CONTEXT = b"fengqiao-enrolment-bundle\x00v1\x00"
_HKDF_INFO = b"fengqiao-enrolment-v1"
META_FIELDS = ("device_id", "key_id", "role", "place_id", "power", "hwid", "fingerprint")
ENROLMENT_KEY_FILE = "enrolment_x25519.pem"  # in the gateway's data dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS technicians (
    key_id TEXT PRIMARY KEY, name TEXT NOT NULL, public_raw BLOB NOT NULL, added_at REAL NOT NULL,
    removed_at REAL);
CREATE TABLE IF NOT EXISTS enrolment_bundles (
    bundle_id TEXT PRIMARY KEY, technician TEXT NOT NULL, created_at TEXT NOT NULL, imported_at REAL NOT NULL,
    devices INTEGER NOT NULL);
"""


class BundleError(ValueError):
    """An enrolment bundle that is not imported; the message says why and what to do."""


class TamperedBundle(BundleError):
    """The file is not a well-formed bundle, or its signature or a sealed key does not verify."""


class UnknownTechnician(BundleError):
    """The bundle is signed by a technician key this gateway does not know."""


class WrongGateway(BundleError):
    """The bundle's keys are encrypted to another gateway's enrolment key."""


class ReplayedBundle(BundleError):
    """This bundle was imported before."""


class BundleRefused(BundleError):
    """A verified bundle whose devices cannot be registered as they are."""


def _b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _unb64(text, what):
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (AttributeError, ValueError, UnicodeEncodeError) as exc:
        raise TamperedBundle("%s is not base64" % what) from exc


def _canonical(meta):
    return json.dumps({k: meta[k] for k in META_FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _derive(shared, epk_raw, gw_raw):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO + epk_raw + gw_raw).derive(shared)


class EnrolmentKey:
    """The gateway's X25519 enrolment key; technicians' laptops hold only `public_raw`."""

    def __init__(self, private_key, path=None):
        self._key = private_key
        self.path = path
        self.public_raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw)
        self.key_id = key_id_of(self.public_raw)

    @classmethod
    def generate(cls):
        return cls(X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path):
        return cls(load_or_create_private_key(path, X25519PrivateKey, BundleError, "enrolment key"), str(path))

    def unseal(self, entry):
        """The 32-byte device key of an entry (bytearray); TamperedBundle when it does not decrypt."""
        meta = entry["meta"]
        epk = _unb64(entry.get("epk"), "epk")
        if len(epk) != 32:
            raise TamperedBundle("device %s: ephemeral key is not 32 bytes" % meta.get("device_id"))
        shared = self._key.exchange(X25519PublicKey.from_public_bytes(epk))
        k = _derive(shared, epk, self.public_raw)
        try:
            key = ChaCha20Poly1305(k).decrypt(_unb64(entry.get("nonce"), "nonce"), _unb64(entry.get("ct"), "ct"),
                                              _canonical(meta))
        except (InvalidTag, ValueError) as exc:
            raise TamperedBundle("the key of device %08x does not decrypt (altered entry, or sealed to another "
                                 "key)" % meta["device_id"]) from exc
        key = bytearray(key)
        if len(key) != 32 or hashlib.sha256(bytes(key)).hexdigest()[:16] != meta["fingerprint"]:
            raise TamperedBundle("the key of device %08x does not match its fingerprint" % meta["device_id"])
        return key


def seal_entry(gateway_public_raw, meta, key, urandom=os.urandom):
    """One device's entry: `meta` (META_FIELDS) in clear, the key sealed to the gateway."""
    meta = {k: meta[k] for k in META_FIELDS}
    eph = X25519PrivateKey.from_private_bytes(urandom(32))
    epk = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    k = _derive(eph.exchange(X25519PublicKey.from_public_bytes(bytes(gateway_public_raw))), epk,
                bytes(gateway_public_raw))
    nonce = urandom(12)
    ct = ChaCha20Poly1305(k).encrypt(nonce, bytes(key), _canonical(meta))
    return {"meta": meta, "epk": _b64(epk), "nonce": _b64(nonce), "ct": _b64(ct)}


def make_bundle(entries, technician_key, gateway_key_id, bundle_id=None, now=None):
    """The bytes of a bundle file. technician_key: gateway.keys.SigningKey (Ed25519)."""
    when = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.timezone.utc)
    body = json.dumps({"bundle_id": bundle_id or os.urandom(16).hex(), "created_at": when.isoformat(timespec="seconds"),
                       "technician": technician_key.key_id, "gateway": gateway_key_id, "devices": list(entries)},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    doc = {"fengqiao_enrolment_bundle": FORMAT, "body": _b64(body),
           "signature": _b64(technician_key.sign(_SIG_CONTEXT + body))}
    return (json.dumps(doc, indent=1) + "\n").encode("ascii")


class Technician:
    def __init__(self, key_id, name, public_raw):
        self.key_id, self.name, self.public_raw = key_id, name, bytes(public_raw)

    def verify(self, signature, message):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        Ed25519PublicKey.from_public_bytes(self.public_raw).verify(signature, message)


class BundleStore:
    """Technicians' public keys and the imported bundles (the replay table), in the gateway's DB."""

    def __init__(self, db_path, clock=None):
        self._clock = clock
        self._db = sqlite3.connect(str(db_path), isolation_level=None, timeout=30)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def _now(self):
        return self._clock.now() if self._clock else time.time()

    def close(self):
        self._db.close()

    def add_technician(self, name, public_raw):
        """Trust `public_raw` (32-byte Ed25519) as technician `name`; returns its key id."""
        public_raw = bytes(public_raw)
        kid = key_id_of(public_raw)
        self._db.execute("INSERT INTO technicians (key_id, name, public_raw, added_at) VALUES (?,?,?,?)"
                         " ON CONFLICT(key_id) DO UPDATE SET name = excluded.name, removed_at = NULL",
                         (kid, name, public_raw, self._now()))
        return kid

    def remove_technician(self, name_or_key_id):
        cur = self._db.execute("UPDATE technicians SET removed_at = ? WHERE (name = ? OR key_id = ?) AND removed_at"
                               " IS NULL", (self._now(), name_or_key_id, name_or_key_id))
        if cur.rowcount == 0:
            raise BundleError("no technician %r" % name_or_key_id)

    def technicians(self):
        return self._db.execute("SELECT key_id, name, added_at, removed_at FROM technicians ORDER BY name").fetchall()

    def technician(self, key_id):
        row = self._db.execute("SELECT key_id, name, public_raw FROM technicians WHERE key_id = ? AND removed_at IS"
                               " NULL", (key_id,)).fetchone()
        return Technician(*row) if row else None

    def technician_named(self, name):
        row = self._db.execute("SELECT key_id, name, public_raw FROM technicians WHERE name = ? AND removed_at IS"
                               " NULL ORDER BY added_at DESC", (name,)).fetchone()
        return Technician(*row) if row else None

    def imported(self, bundle_id):
        return self._db.execute("SELECT technician, created_at, imported_at, devices FROM enrolment_bundles"
                                " WHERE bundle_id = ?", (bundle_id,)).fetchone()

    def record(self, bundle_id, technician, created_at, devices):
        try:
            self._db.execute("INSERT INTO enrolment_bundles (bundle_id, technician, created_at, imported_at, devices)"
                             " VALUES (?,?,?,?,?)", (bundle_id, technician, created_at, self._now(), devices))
        except sqlite3.IntegrityError as exc:
            raise ReplayedBundle("bundle %s was imported already" % bundle_id) from exc


class Bundle:
    """A verified bundle: header fields and [(meta, key bytearray)]. Call wipe() when done."""

    def __init__(self, header, technician, devices):
        self.bundle_id = header["bundle_id"]
        self.created_at = header["created_at"]
        self.technician = technician
        self.devices = devices

    def wipe(self):
        for _, key in self.devices:
            for i in range(len(key)):
                key[i] = 0


def _parse(data):
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("fengqiao_enrolment_bundle") != FORMAT:
            raise TamperedBundle("not a Fengqiao enrolment bundle (format %d)" % FORMAT)
        body = _unb64(doc.get("body"), "body")
        signature = _unb64(doc.get("signature"), "signature")
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise TamperedBundle("not a Fengqiao enrolment bundle: %s" % exc) from exc
    if not isinstance(header, dict) or not all(isinstance(header.get(k), str) for k in
                                               ("bundle_id", "created_at", "technician", "gateway")) \
            or not isinstance(header.get("devices"), list):
        raise TamperedBundle("the bundle's body lacks bundle_id, created_at, technician, gateway or devices")
    return header, body, signature


def open_bundle(data, gateway_key, store):
    """Verify (technician, signature, recipient, replay) and decrypt every key; a Bundle."""
    header, body, signature = _parse(data)
    tech = store.technician(header["technician"])
    if tech is None:
        raise UnknownTechnician("bundle %s is signed by technician key %s, which this gateway does not know: add it "
                                "with `fengqiao device technician add NAME --pubkey FILE`"
                                % (header["bundle_id"], header["technician"]))
    try:
        tech.verify(signature, _SIG_CONTEXT + body)
    except InvalidSignature as exc:
        raise TamperedBundle("bundle %s: the signature of technician %s does not verify: the file was changed "
                             "after it was signed" % (header["bundle_id"], tech.name)) from exc
    if header["gateway"] != gateway_key.key_id:
        raise WrongGateway("bundle %s is for gateway enrolment key %s; this gateway's is %s (the technician used "
                           "another township's field kit)" % (header["bundle_id"], header["gateway"],
                                                              gateway_key.key_id))
    done = store.imported(header["bundle_id"])
    if done is not None:
        raise ReplayedBundle("bundle %s was imported already (%s, %d devices); nothing done"
                             % (header["bundle_id"], time.strftime("%Y-%m-%d %H:%M", time.localtime(done[2])), done[3]))
    devices = []
    try:
        for entry in header["devices"]:
            meta = entry.get("meta") if isinstance(entry, dict) else None
            if not isinstance(meta, dict) or any(k not in meta for k in META_FIELDS) \
                    or not isinstance(meta["device_id"], int):
                raise TamperedBundle("bundle %s: a device entry lacks its fields" % header["bundle_id"])
            devices.append((meta, gateway_key.unseal(entry)))
    except BaseException:
        Bundle(header, tech, devices).wipe()
        raise
    return Bundle(header, tech, devices)


def _holds_key(registry, dev, key_id, key):
    from protocol.errors import UnknownKey

    if dev.status != "active":
        return False
    try:
        return bytes(registry.device_key(dev.device_id, key_id)) == bytes(key)
    except UnknownKey:
        return False


def import_bundle(data, gateway_key, store, registry, broker=None, enrolments=None):
    """Register every device of a verified bundle and record it; returns [(device_id, 'added'|'already')]."""
    from gateway.registry import ROLES

    bundle = open_bundle(data, gateway_key, store)
    try:
        problems, plan = [], []
        for meta, key in bundle.devices:
            dev_id = meta["device_id"]
            if enrolments is not None and not enrolments.reserved_for(dev_id, bundle.technician.key_id):
                problems.append("device %08x was not reserved for technician %s (`fengqiao device field-kit`)"
                                % (dev_id, bundle.technician.name))
            if meta["role"] not in ROLES:
                problems.append("device %08x: role %r" % (dev_id, meta["role"]))
            if meta["place_id"] is not None and registry.place(meta["place_id"]) is None:
                problems.append("device %08x: unknown place %r (import the village first)" % (dev_id, meta["place_id"]))
            dev = registry.device(dev_id)
            if dev is None:
                plan.append((meta, key, "added"))
            elif _holds_key(registry, dev, meta["key_id"], key):
                plan.append((meta, key, "already"))  # an import cut short before it was recorded
            else:
                problems.append("device %08x is registered already with another key or revoked" % dev_id)
        if problems:
            raise BundleRefused("bundle %s from %s refused, nothing registered:\n  %s"
                                % (bundle.bundle_id, bundle.technician.name, "\n  ".join(problems)))
        done = []
        for meta, key, what in plan:
            if what == "added":
                registry.add_device(meta["device_id"], meta["role"], meta["place_id"], key=bytes(key),
                                    key_id=meta["key_id"], power=meta["power"])
                if enrolments is not None:
                    enrolments.note(meta["device_id"], "enrolled", None, "bundle %s by %s: board %s fingerprint %s"
                                    % (bundle.bundle_id, bundle.technician.name, meta["hwid"], meta["fingerprint"]))
            if broker is not None:
                broker.add_device(meta["device_id"], bytes(key), reload=False)
            done.append((meta["device_id"], what))
        if broker is not None:
            broker.reload()
        store.record(bundle.bundle_id, bundle.technician.key_id, bundle.created_at, len(done))
        return bundle, done
    finally:
        bundle.wipe()


# -- the laptop's side: a journal of boards keyed away from the gateway ------------------------------
class FieldKitError(BundleError):
    """The field kit is missing, malformed, or has no device id left."""


def load_field_kit(path):
    """The field kit (`fengqiao device field-kit`): gateway enrolment key, reserved ids, broker, places."""
    try:
        with open(path, encoding="utf-8") as f:
            kit = json.load(f)
    except (OSError, ValueError) as exc:
        raise FieldKitError("cannot read field kit %s: %s" % (path, exc)) from exc
    if not isinstance(kit, dict) or kit.get("fengqiao_field_kit") != 1:
        raise FieldKitError("%s is not a Fengqiao field kit (make one with `fengqiao device field-kit`)" % path)
    for k in ("gateway_enrolment_key", "gateway_key_id", "device_ids", "broker_host", "broker_port", "ca_pem",
              "technician_key_id", "places"):
        if k not in kit:
            raise FieldKitError("field kit %s lacks %r (make a new one with `fengqiao device field-kit`)" % (path, k))
    return kit


class KeyNotHeld(BundleError):
    """A pending key sealed in an earlier run: this laptop cannot read it back (by design)."""


class FieldJournal:
    """The Enrolments interface tools/deploy.py uses, on the laptop: a JSON journal of sealed entries
    (PLAN.enrolments.json; keys sealed to the gateway at once, never in clear on disk) and the
    bundle file, rewritten, signed, after every confirmed board (a new bundle id each time, so an
    early copy imported at the township does not make the final one a replay)."""

    def __init__(self, path, kit, technician_key, bundle_path, clock=time.time):
        from gateway.enrolment import Enrolment

        self._Enrolment = Enrolment
        self.path, self.kit, self.tech, self.bundle_path, self._clock = path, kit, technician_key, bundle_path, clock
        if technician_key.key_id != kit["technician_key_id"]:
            raise FieldKitError("the field kit was made for technician key %s; this key is %s"
                                % (kit["technician_key_id"], technician_key.key_id))
        self.rows = []
        self._keys = {}     # n -> bytearray: keys of this run only
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.rows = json.load(f)["entries"]

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"v": 1, "entries": self.rows}, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _e(self, r):
        return self._Enrolment(r["n"], r["device_id"], r["hwid"], r["role"], r["place_id"], r["power"], r["key_id"],
                               r["fingerprint"], r["state"], "new", None)

    def _find(self, hwid, state):
        rows = [r for r in self.rows if r["hwid"] == hwid and r["state"] == state]
        return self._e(rows[-1]) if rows else None

    def pending_for_hwid(self, hwid):
        return self._find(hwid, "pending")

    def deployed(self, hwid):
        return self._find(hwid, "confirmed")

    def begin(self, hwid, role, place_id, power, key, kind="new", device_id=None, key_id=1, replaces=None):
        if kind != "new":
            raise BundleError("away from the gateway only new boards are enrolled; replace and rotate-key run at "
                              "the gateway host")
        first, last = self.kit["device_ids"]
        used = {r["device_id"] for r in self.rows}
        free = [i for i in range(first, last + 1) if i not in used]
        if not free:
            raise FieldKitError("the field kit's device ids %08x..%08x are all used: get a new kit" % (first, last))
        meta = {"device_id": free[0], "key_id": key_id, "role": role, "place_id": place_id, "power": power,
                "hwid": hwid, "fingerprint": hashlib.sha256(bytes(key)).hexdigest()[:16]}
        entry = seal_entry(bytes.fromhex(self.kit["gateway_enrolment_key"]), meta, key)
        n = len(self.rows) + 1
        self.rows.append(dict(meta, n=n, state="pending", entry=entry, at=self._clock()))
        self._save()
        self._keys[n] = bytearray(key)
        return self._e(self.rows[-1])

    def key_of(self, e):
        if e.n not in self._keys:
            raise KeyNotHeld("the key of pending device %08x was sealed in an earlier run" % e.device_id)
        return bytearray(self._keys[e.n])

    def _set(self, e, state):
        for r in self.rows:
            if r["n"] == e.n:
                r["state"] = state
        key = self._keys.pop(e.n, None)
        if key is not None:
            for i in range(len(key)):
                key[i] = 0
        self._save()

    def cancel(self, e):
        self._set(e, "cancelled")

    def confirm(self, e, registry=None, broker=None):
        self._set(e, "confirmed")
        self.write_bundle()

    def note(self, *args, **kwargs):
        pass  # history is written at the gateway when the bundle is imported

    def entries(self):
        return [r["entry"] for r in self.rows if r["state"] == "confirmed"]

    def write_bundle(self):
        write_private_file(self.bundle_path, make_bundle(self.entries(), self.tech, self.kit["gateway_key_id"]))
        return self.bundle_path

    def close(self):
        for key in self._keys.values():
            for i in range(len(key)):
                key[i] = 0
        self._keys.clear()
