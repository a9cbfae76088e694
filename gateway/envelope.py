"""Upstream envelopes (SPEC section 10): build, sign, parse, verify, render.

An envelope is one stored event as the county receives it: one line of JSON carrying every field
of the event's hash-chain record (gateway/store.py), the chain hashes, the verification result,
and -- on the last envelope of each published batch -- the gateway's Ed25519 signature over
(gateway id, event id, hash). The signature covers the signed event's hash, which covers the
previous hash, and so on: one signature proves its batch (SPEC 10.4 says how to check ONE event).

    env = build(stored_event, "township-1")        # dict, unsigned
    sign_batch([env1, env2, env3], signing_key)     # signs the last one
    line = dumps(env); env = loads(line)            # one JSON object per line
    check_envelope(env)                             # self-consistency + hash; raises EnvelopeError
    check_signature(env, public_key)                # raises BadSignature
    check_device_mac(env, device_key)               # raises BadDeviceMac
    report = verify_envelopes(lines, public_key, device_keys)   # whole dump: chain + coverage
    print(render(env))                              # human-readable, for the demo
    print(render(build(store.get(event_id), gw)))   # the same from the gateway's own store

Exceptions (all subclass EnvelopeError, a ValueError):
    MalformedEnvelope    not JSON, a missing field, a wrong type or length
    InconsistentEnvelope fields disagree (id vs event id, frame header vs device id/seq, skew ...)
    BadHash              SHA-256(prev_hash || record) is not the stated hash (content modified)
    BadSignature         the signature does not verify, or it names another key
    BadDeviceMac         the device MAC inside the frame does not verify with the given device key
"""

import binascii
import hashlib
import json
import struct
from datetime import datetime, timezone

import cbor2
from cryptography.exceptions import InvalidSignature

from gateway.events import SOURCE_DEVICE, SOURCE_GATEWAY, UPLINK_KINDS, ZERO_HASH
from gateway.store import body_json, chain_hash, record_bytes, to_us

__all__ = [
    "VERSION", "SIGNATURE_CONTEXT", "EnvelopeError", "MalformedEnvelope", "InconsistentEnvelope", "BadHash",
    "BadSignature", "BadDeviceMac", "build", "sign", "sign_batch", "signature_input", "dumps", "loads",
    "record_of", "check_envelope", "check_signature", "check_device_mac", "verify_envelopes", "Report", "render",
]

VERSION = 1
SIGNATURE_CONTEXT = "fengqiao/v1/envelope"
VERIFIED_DEVICE = "verified"   # strict decode, device active, key, topic, MAC, sequence: all passed
VERIFIED_GATEWAY = "gateway"   # made by the gateway itself (no device MAC to check)

FIELDS = ("v", "id", "gateway", "event_id", "source", "kind", "device_id", "key_id", "seq", "topic",
          "frame", "device_time", "received_at_us", "place_id", "actor", "body_json", "verification",
          "skew_s", "prev_hash", "hash", "sig_key", "sig")


class EnvelopeError(ValueError):
    """Base class: an envelope was rejected."""


class MalformedEnvelope(EnvelopeError):
    """Not a JSON object of the SPEC 10.2 layout."""


class InconsistentEnvelope(EnvelopeError):
    """Fields of one envelope contradict each other."""


class BadHash(EnvelopeError):
    """The recomputed chain hash differs from the stated one: the event was modified."""


class BadSignature(EnvelopeError):
    """The gateway signature does not verify with the given public key."""


class BadDeviceMac(EnvelopeError):
    """The device MAC in the frame does not verify with the given device key."""


# -- building (the gateway side) -------------------------------------------------------------------

def envelope_id(gateway_id, event_id):
    return "%s:%d" % (gateway_id, event_id)


def skew_of(device_time, received_at_us):
    """Gateway receive second minus device time (s); None when the device clock was unknown."""
    if device_time is None:
        return None
    return received_at_us // 1_000_000 - device_time


def build(event, gateway_id):
    """The unsigned envelope (a dict) of a StoredEvent."""
    received_us = to_us(event.received_at)
    device = event.source == SOURCE_DEVICE
    return {
        "v": VERSION,
        "id": envelope_id(gateway_id, event.event_id),
        "gateway": gateway_id,
        "event_id": event.event_id,
        "source": event.source,
        "kind": event.kind,
        "device_id": event.device_id,
        "key_id": event.key_id,
        "seq": event.seq,
        "topic": event.topic,
        "frame": event.frame.hex() if event.frame is not None else None,
        "device_time": event.device_time,
        "received_at_us": received_us,
        "place_id": event.place_id,
        "actor": event.actor,
        "body_json": None if device else body_json(event.body),
        "verification": VERIFIED_DEVICE if device else VERIFIED_GATEWAY,
        "skew_s": skew_of(event.device_time, received_us),
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
        "sig_key": None,
        "sig": None,
    }


def signature_input(gateway_id, event_id, hash_bytes):
    """The bytes the gateway signs (SPEC 10.3): deterministic CBOR of a 4-item array."""
    return cbor2.dumps([SIGNATURE_CONTEXT, gateway_id, event_id, hash_bytes], canonical=True)


def sign(env, signing_key):
    """Sign one envelope in place (its hash must be the hex of the event hash)."""
    msg = signature_input(env["gateway"], env["event_id"], bytes.fromhex(env["hash"]))
    env["sig_key"] = signing_key.key_id
    env["sig"] = signing_key.sign(msg).hex()
    return env


def sign_batch(envs, signing_key):
    """Sign the last envelope of a batch of consecutive envelopes; it proves the whole batch."""
    if envs:
        sign(envs[-1], signing_key)
    return envs


def dumps(env):
    """One line of compact UTF-8 JSON (no newline), keys in SPEC order."""
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False)


# -- parsing and checking one envelope ----------------------------------------------------------------

_INT = "int"
_INT_OR_NULL = "int?"
_TEXT = "text"
_TEXT_OR_NULL = "text?"
_SCHEMA = {
    "v": _INT, "id": _TEXT, "gateway": _TEXT, "event_id": _INT, "source": _TEXT, "kind": _TEXT,
    "device_id": _INT_OR_NULL, "key_id": _INT_OR_NULL, "seq": _INT_OR_NULL, "topic": _TEXT_OR_NULL,
    "frame": _TEXT_OR_NULL, "device_time": _INT_OR_NULL, "received_at_us": _INT, "place_id": _TEXT_OR_NULL,
    "actor": _TEXT_OR_NULL, "body_json": _TEXT_OR_NULL, "verification": _TEXT, "skew_s": _INT_OR_NULL,
    "prev_hash": _TEXT, "hash": _TEXT, "sig_key": _TEXT_OR_NULL, "sig": _TEXT_OR_NULL,
}


def loads(line):
    """Parse one envelope line; MalformedEnvelope unless it has the SPEC 10.2 fields and types."""
    if isinstance(line, (bytes, bytearray)):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedEnvelope("not UTF-8: %s" % exc) from exc
    try:
        env = json.loads(line)
    except ValueError as exc:
        raise MalformedEnvelope("not JSON: %s" % exc) from exc
    if not isinstance(env, dict):
        raise MalformedEnvelope("not a JSON object")
    for name, kind in _SCHEMA.items():
        if name not in env:
            raise MalformedEnvelope("missing field %r" % name)
        value = env[name]
        if value is None and kind.endswith("?"):
            continue
        if kind.startswith(_INT):
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedEnvelope("field %r must be an integer" % name)
        elif not isinstance(value, str):
            raise MalformedEnvelope("field %r must be text" % name)
    if env["v"] != VERSION:
        raise MalformedEnvelope("envelope version %r, expected %d" % (env["v"], VERSION))
    for name, size in (("prev_hash", 32), ("hash", 32), ("frame", None), ("sig", 64)):
        if env[name] is not None:
            raw = _unhex(env[name], name)
            if size is not None and len(raw) != size:
                raise MalformedEnvelope("field %r must be %d bytes" % (name, size))
    if (env["sig"] is None) != (env["sig_key"] is None):
        raise MalformedEnvelope("sig and sig_key must both be present or both null")
    return env


def _unhex(text, name):
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise MalformedEnvelope("field %r is not hex" % name) from exc


def record_of(env):
    """The event's canonical chain record (SPEC 10.2 / gateway/store.py), from the envelope."""
    frame = bytes.fromhex(env["frame"]) if env["frame"] is not None else None
    return record_bytes(env["event_id"], env["source"], env["kind"], env["device_id"], env["key_id"],
                        env["seq"], frame, env["topic"], env["device_time"], env["received_at_us"],
                        env["place_id"], env["actor"], env["body_json"])


def check_envelope(env):
    """Everything that needs no key: field consistency and the recomputed hash (BadHash)."""
    if env["id"] != envelope_id(env["gateway"], env["event_id"]):
        raise InconsistentEnvelope("id %r is not <gateway>:<event_id>" % env["id"])
    if env["event_id"] < 1:
        raise InconsistentEnvelope("event_id must be >= 1")
    if env["event_id"] == 1 and bytes.fromhex(env["prev_hash"]) != ZERO_HASH:
        raise InconsistentEnvelope("event 1 must have an all-zero prev_hash")
    if env["skew_s"] != skew_of(env["device_time"], env["received_at_us"]):
        raise InconsistentEnvelope("skew_s does not match received_at_us - device_time")
    if env["source"] == SOURCE_DEVICE:
        _check_device_fields(env)
    elif env["source"] == SOURCE_GATEWAY:
        if env["verification"] != VERIFIED_GATEWAY:
            raise InconsistentEnvelope("a gateway event's verification must be %r" % VERIFIED_GATEWAY)
        if env["frame"] is not None or env["body_json"] is None:
            raise InconsistentEnvelope("a gateway event has no frame and a body_json")
        try:
            json.loads(env["body_json"])
        except ValueError as exc:
            raise InconsistentEnvelope("body_json is not JSON: %s" % exc) from exc
    else:
        raise InconsistentEnvelope("unknown source %r" % env["source"])
    want = bytes.fromhex(env["hash"])
    got = chain_hash(bytes.fromhex(env["prev_hash"]), record_of(env))
    if got != want:
        raise BadHash("event %d: recomputed hash %s... differs from the stated %s..."
                      % (env["event_id"], got.hex()[:16], env["hash"][:16]))


_HEADER = struct.Struct(">BBIBII")


def _check_device_fields(env):
    if env["verification"] != VERIFIED_DEVICE:
        raise InconsistentEnvelope("a device event's verification must be %r" % VERIFIED_DEVICE)
    if env["frame"] is None or env["topic"] is None or env["body_json"] is not None:
        raise InconsistentEnvelope("a device event has a frame and a topic and no body_json")
    frame = bytes.fromhex(env["frame"])
    if len(frame) < 32:
        raise InconsistentEnvelope("frame shorter than 32 bytes")
    _v, msg_type, device_id, key_id, seq, t = _HEADER.unpack_from(frame, 0)
    if (device_id, key_id, seq) != (env["device_id"], env["key_id"], env["seq"]):
        raise InconsistentEnvelope("frame header (device %08x key %d seq %d) differs from the envelope"
                                   % (device_id, key_id, seq))
    if (t or None) != env["device_time"]:
        raise InconsistentEnvelope("frame time %d differs from device_time %r" % (t, env["device_time"]))
    if UPLINK_KINDS.get(msg_type) != env["kind"]:
        raise InconsistentEnvelope("frame type 0x%02x is not kind %r" % (msg_type, env["kind"]))


def check_signature(env, public_key):
    """Raises BadSignature unless env carries a valid signature by `public_key` (a keys.PublicKey)."""
    if env["sig"] is None:
        raise BadSignature("event %d is not signed" % env["event_id"])
    if env["sig_key"] != public_key.key_id:
        raise BadSignature("event %d is signed by key %s, not by the given key %s"
                           % (env["event_id"], env["sig_key"], public_key.key_id))
    msg = signature_input(env["gateway"], env["event_id"], bytes.fromhex(env["hash"]))
    try:
        public_key.verify(bytes.fromhex(env["sig"]), msg)
    except InvalidSignature as exc:
        raise BadSignature("event %d: signature does not verify" % env["event_id"]) from exc


def check_device_mac(env, device_key):
    """Raises BadDeviceMac unless the frame's MAC verifies under `device_key` (32 bytes) on env's topic."""
    from protocol import frame as pframe
    from protocol.errors import FrameError

    k_up, _k_down = pframe.derive_keys(device_key)
    try:
        pframe.decode(k_up, env["topic"], bytes.fromhex(env["frame"]), downlink=False)
    except FrameError as exc:
        raise BadDeviceMac("event %d (device %08x seq %d): %s: %s" % (
            env["event_id"], env["device_id"], env["seq"], type(exc).__name__, exc)) from exc


# -- a whole dump: chain continuity and signature coverage ------------------------------------------

CHAIN_EPOCH = "chain_epoch"   # gateway event 1 of a chain started with `gateway run --new-chain`


def epoch_start(env):
    """The epoch number when `env` announces a new chain (a chain_epoch gateway event 1), else None."""
    if env.get("kind") != CHAIN_EPOCH or env.get("event_id") != 1 or env.get("source") != SOURCE_GATEWAY:
        return None
    try:
        epoch = json.loads(env.get("body_json") or "null").get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def envelope_digest(env):
    """What tells a redelivery (same digest) from another envelope with the same id.

    The signature is left out: only the last envelope of a batch is signed (sign_batch), and a
    resend after an outage cuts its batches anew, so the same event comes signed once and unsigned
    the next time. Its content (and so its hash) is what must not change."""
    content = {k: v for k, v in env.items() if k not in ("sig", "sig_key")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).digest()[:16]


class Report:
    """Outcome of verify_envelopes: `problems` (list of text) is empty when everything verified."""

    def __init__(self):
        self.problems = []
        self.envelopes = 0
        self.duplicates = 0
        self.signatures = 0
        self.macs_checked = 0
        self.macs_unchecked = 0
        self.gateways = {}     # gateway id -> (first event id, last event id) of its latest epoch
        self.epochs = []       # (gateway id, epoch, line): each announced new chain epoch

    @property
    def ok(self):
        return not self.problems

    def summary(self):
        ranges = ", ".join("%s events %d..%d" % (g, a, b) for g, (a, b) in sorted(self.gateways.items()))
        epochs = "".join("; %s started NEW CHAIN EPOCH %d at line %d" % e for e in self.epochs)
        return ("%d envelope(s) (%s), %d duplicate(s) ignored, %d signature(s) verified, "
                "%d device MAC(s) verified, %d device event(s) without a key given%s"
                % (self.envelopes, ranges or "none", self.duplicates, self.signatures, self.macs_checked,
                   self.macs_unchecked, epochs))


def verify_envelopes(lines, public_key, device_keys=None, first_event=None):
    """Check a dump (iterable of lines or parsed dicts, in the order received) -> Report.

    device_keys: {(device_id, key_id): key bytes} or {device_id: key bytes} (any key id).
    first_event: the event id each gateway's chain must start at (1 for a complete dump); None
    accepts any start (a live subscription joins mid-chain).

    Streams: memory grows with the number of envelope ids (a digest each, to recognise duplicates)
    and the longest run of unsigned envelopes, not with the size of the dump."""
    report = Report()
    device_keys = device_keys or {}
    chains, seen, epoch_of = {}, {}, {}
    for n, line in enumerate(lines, 1):
        if isinstance(line, (str, bytes)) and not line.strip():
            continue
        try:
            env = loads(line) if not isinstance(line, dict) else line
        except MalformedEnvelope as exc:
            report.problems.append("line %d: malformed envelope: %s" % (n, exc))
            continue
        digest = envelope_digest(env)
        gw = env["gateway"]
        new_epoch = epoch_start(env)
        if new_epoch is not None and new_epoch != epoch_of.get(gw) and (gw, new_epoch, env["id"]) not in seen:
            # an announced restart (`gateway run --new-chain`): a new chain, reported, never merged
            if gw in chains:
                chain = chains.pop(gw)
                chain.finish()
            epoch_of[gw] = new_epoch
            report.epochs.append((gw, new_epoch, n))
        key = (gw, epoch_of.get(gw), env["id"])
        previous = seen.get(key)
        if previous is not None:
            if previous == digest:
                report.duplicates += 1
            else:
                report.problems.append(
                    "line %d: %s was received twice with different content: the gateway's chain was restarted"
                    " or forked without a new chain epoch (a deleted or replaced store?)" % (n, env["id"]))
            continue
        seen[key] = digest
        report.envelopes += 1
        chain = chains.get(env["gateway"])
        if chain is None:
            chain = chains[env["gateway"]] = _Chain(env["gateway"], report, public_key, device_keys)
            start = env["event_id"]
            if first_event is not None and start != first_event:
                report.problems.append(
                    "%s: the dump starts at event %d, expected event %d (events %d..%d missing)"
                    % (env["gateway"], start, first_event, first_event, start - 1) if start > first_event else
                    "%s: the dump starts at event %d, before event %d" % (env["gateway"], start, first_event))
        chain.add(n, env)
    for chain in chains.values():
        chain.finish()
        report.gateways[chain.gateway] = (chain.first_id, chain.last["event_id"])
    return report


class _Chain:
    """One gateway's envelopes in dump order: continuity, and signature coverage through the chain."""

    def __init__(self, gateway, report, public_key, device_keys):
        self.gateway, self.report = gateway, report
        self.public_key, self.device_keys = public_key, device_keys
        self.last = None        # the previous envelope of this gateway in the dump
        self.first_id = None
        self.pending = []       # event ids of intact envelopes, chained to `last`, awaiting a signature

    def add(self, n, env):
        problems = self.report.problems
        if self.first_id is None:
            self.first_id = env["event_id"]
        intact = self._check_content(n, env)
        if self.last is not None and not self._linked(n, self.last, env):
            self._uncovered()
        self.last = env
        if not intact:
            self._uncovered()  # a changed envelope cannot carry the proof of those before it
            return
        if env["sig"] is not None:
            try:
                check_signature(env, self.public_key)
                self.report.signatures += 1
                self.pending = []  # this signature proves the run before it, and itself
                return
            except BadSignature as exc:
                problems.append("line %d (%s): BadSignature: %s" % (n, env["id"], exc))
        self.pending.append(env["event_id"])

    def finish(self):
        self._uncovered()

    def _uncovered(self):
        if self.pending:
            a, b = self.pending[0], self.pending[-1]
            self.report.problems.append(
                "%s: event%s %s not covered by a valid signature through an intact chain"
                % (self.gateway, "" if a == b else "s", a if a == b else "%d..%d" % (a, b)))
            self.pending = []

    def _check_content(self, n, env):
        report = self.report
        try:
            check_envelope(env)
        except EnvelopeError as exc:
            report.problems.append("line %d (%s): %s: %s" % (n, env["id"], type(exc).__name__, exc))
            return False
        if env["source"] == SOURCE_DEVICE:
            keys = self.device_keys
            key = keys.get((env["device_id"], env["key_id"]), keys.get(env["device_id"]))
            if key is None:
                report.macs_unchecked += 1
            else:
                try:
                    check_device_mac(env, key)
                    report.macs_checked += 1
                except BadDeviceMac as exc:
                    report.problems.append("line %d (%s): BadDeviceMac: %s" % (n, env["id"], exc))
        return True

    def _linked(self, n, a, b):
        """True when b continues a; otherwise the problem (gap, reorder, replaced event) is reported."""
        if b["event_id"] == a["event_id"] + 1:
            if b["prev_hash"] == a["hash"]:
                return True
            self.report.problems.append("line %d (%s): chain broken: prev_hash is not the hash of event %d"
                                        % (n, b["id"], a["event_id"]))
        elif b["event_id"] > a["event_id"] + 1:
            lo, hi = a["event_id"] + 1, b["event_id"] - 1
            self.report.problems.append(
                "%s: missing event%s %s between %s and %s (removed or not received)"
                % (self.gateway, "" if lo == hi else "s", lo if lo == hi else "%d..%d" % (lo, hi), a["id"], b["id"]))
        else:
            self.report.problems.append("line %d (%s): out of order: follows event %d" % (n, b["id"], a["event_id"]))
        return False


# -- rendering (the demo) ------------------------------------------------------------------------------

def _utc(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def render(env):
    """A multi-line, human-readable view of one envelope (a dict from build() or loads())."""
    lines = ["envelope %s   (event %d, %s %s)" % (env["id"], env["event_id"], env["source"], env["kind"])]
    if env["source"] == SOURCE_DEVICE:
        frame = bytes.fromhex(env["frame"])
        header, body, mac = frame[:15], frame[15:-16], frame[-16:]
        lines.append("  frame      %d bytes: header %s | body %s | mac %s"
                     % (len(frame), _spaced(header, (1, 1, 4, 1, 4, 4)), body.hex(), mac.hex()))
        lines.append("  header     device %08x  key %d  seq %d  device time %s"
                     % (env["device_id"], env["key_id"], env["seq"],
                        _utc(env["device_time"]) if env["device_time"] else "unknown"))
        lines.append("  body       %s" % _describe_body(env["kind"], body))
        lines.append("  topic      %s" % env["topic"])
        skew = "clock skew %+d s" % env["skew_s"] if env["skew_s"] is not None else "device clock unknown"
        lines.append("  verified   %s: strict decode, device active, topic, MAC (key %d), sequence; %s"
                     % (env["verification"], env["key_id"], skew))
    else:
        lines.append("  body       %s   actor %s%s" % (env["body_json"], env["actor"],
                                                        "  device %08x" % env["device_id"] if env["device_id"] else ""))
        lines.append("  verified   %s (made by the gateway, no device MAC)" % env["verification"])
    lines.append("  place      %s" % (env["place_id"] or "-"))
    lines.append("  stored     %s (gateway clock)" % _utc(env["received_at_us"] / 1_000_000))
    lines.append("  chain      prev %s..  ->  hash %s.." % (env["prev_hash"][:16], env["hash"][:16]))
    if env["sig"]:
        lines.append("  signature  ed25519 by key %s: %s.." % (env["sig_key"], env["sig"][:32]))
    else:
        lines.append("  signature  none on this envelope: covered by the next signed one through the chain")
    return "\n".join(lines)


def _spaced(data, sizes):
    out, i = [], 0
    for s in sizes:
        out.append(data[i:i + s].hex())
        i += s
    return " ".join(out)


def _describe_body(kind, body):
    try:
        value = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, binascii.Error) as exc:
        return "%s (undecodable: %s)" % (body.hex(), exc)
    names = {
        "alarm": ("kind",), "alarm_cancel": ("alarm_seq",), "checkin": ("checkpoint_id", "card_uid"),
        "heartbeat": ("battery_mv", "uptime_s", "outbox_depth", "rssi_dbm", "fw"),
        "boot": ("reset_reason", "fw"), "tamper": ("open",), "battery_low": ("battery_mv",),
    }.get(kind)
    if not names or not isinstance(value, list) or len(value) != len(names):
        return repr(value)
    parts = []
    for name, v in zip(names, value):
        if isinstance(v, bytes):
            v = v.hex()
        elif name == "kind" and kind == "alarm":
            v = "%d (%s)" % (v, {0: "emergency", 1: "fire", 2: "medical", 3: "intrusion"}.get(v, "?"))
        parts.append("%s=%s" % (name, v))
    return " ".join(parts)
