"""The verify pipeline: plain functions over values. MQTT and SQLite stay outside (gateway/service.py).

    incoming (topic, payload) --strict decode--> device known and active --> topic --> MAC
        --> body --> role (SPEC section 3) --> sequence (new / duplicate / replay) --> clock skew
        --> NewDeviceEvent for the store

`process_batch(items, keys, place_of, seqs, find_stored, now, role_of=None, every=None)` runs a whole batch and returns one `Outcome`
per item, in order; the caller appends the `new` events in one transaction, and only after the
commit sends acks (device `ack` frames and MQTT PUBACKs). Nothing here does I/O except through
the two functions it is given (`keys.device_key` for key lookup, `find_stored` for the duplicate
check), so the tests drive it with plain values.

Rejections are named exceptions (protocol.errors, including UnknownDevice / RevokedDevice raised
by the registry's key lookup; RoleMismatch, OutsideReplayWindow and Throttled here); `Outcome.reason` is the exception's class name, the label used by
the counters and logs. An unexpected exception while handling one frame is reported as reason
"InternalError" for that frame alone: no input stops the batch or the gateway.

Sequence rule (SPEC section 4): per (device, key id) an anti-replay window as in IPsec/DTLS
(RFC 4303 section 3.4.3, RFC 6347 section 4.1.2.6): the highest accepted seq and a bitmap of which
of the WINDOW numbers ending there are stored. Greater than the highest -> new (a gap is counted);
inside the window and stored (or earlier in this batch) -> duplicate, re-acknowledged, not stored;
inside the window and not stored -> new (a late frame: e.g. the broker lost it once and the device
resent it after a later one was stored); below the window -> duplicate if stored, otherwise
`OutsideReplayWindow` (a Replay: rejected, counted, no ack). WINDOW = 256, the device outbox's
capacity: a device cannot hold an unacknowledged record older than that many records.

The window state (`SeqWindow`) is the store's (gateway/store.py persists it in the same transaction
as the events); the pipeline works on a copy and the caller reloads it from the store if the commit
fails. The store's unique index stays the authority: a number inside the window whose bit is clear
is also looked up in the store before it is taken as new.
"""

import hashlib
import hmac
import struct
from dataclasses import dataclass

import cbor2

from gateway.events import NewDeviceEvent
from protocol import strict
from protocol.errors import FrameError, Replay
from protocol.schema import validate_body

NEW, DUPLICATE, REJECTED = "new", "duplicate", "rejected"

_HEADER = struct.Struct(">BBIBII")
DOWN_ACK = 0x81


WINDOW = 256   # numbers per (device, key id) that may still arrive late (the device outbox's 256 records)


class Throttled(FrameError):
    """The device sent more than its rate allows; dropped unacknowledged (it will resend)."""


class OutsideReplayWindow(Replay):
    """A seq more than WINDOW below the highest accepted and never stored: rejected, not acked."""


class RoleMismatch(FrameError):
    """An authentic uplink of a type the device's registered role does not send (SPEC section 3,
    roles): e.g. a check-in from an alarm button. Rejected, counted, not stored, not acked."""


# SPEC section 3 "Roles": the uplink types each registry role may send. Everything a role's
# firmware emits (firmware/alarm_button.py, checkin_point.py, heartbeat.py, app/runtime.py).
ROLE_TYPES = {
    "alarm_button": frozenset(("boot", "heartbeat", "alarm", "alarm_cancel", "tamper", "battery_low")),
    "checkpoint": frozenset(("boot", "heartbeat", "checkin", "tamper", "battery_low")),
}


def check_role(role, device_id, name):
    """Raise RoleMismatch unless a device of `role` may send an uplink of type `name`."""
    allowed = ROLE_TYPES.get(role)
    if allowed is None or name not in allowed:
        raise RoleMismatch("%s from device %08x, whose role %s does not send it" % (name, device_id, role))


def _registry_role_of(key_lookup):
    """role_of from the registry behind `key_lookup` (the service passes `registry.device_key`),
    or None when the lookup is a plain function (unit tests): then roles are not checked."""
    registry = getattr(key_lookup, "__self__", None)
    device = getattr(registry, "device", None)
    if device is None:
        return None

    def role_of(device_id):
        dev = device(device_id)
        return dev.role if dev else None

    return role_of


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 1
    received_mono: float = 0.0   # monotonic time the MQTT message arrived (latency histogram)


@dataclass(slots=True)
class Outcome:
    status: str                      # NEW | DUPLICATE | REJECTED
    incoming: Incoming
    reason: "str | None" = None      # exception class name when rejected
    detail: "str | None" = None
    device_id: "int | None" = None
    key_id: "int | None" = None
    seq: "int | None" = None
    kind: "str | None" = None
    new: "NewDeviceEvent | None" = None
    gap: int = 0                     # numbers skipped before this seq (counted, not rejected)
    late: bool = False               # new, but below the highest accepted (inside the window)
    skew_s: "float | None" = None    # device_time - gateway time
    stored: object = None            # set by the service after the commit (the StoredEvent)


class SeqWindow:
    """One (device, key id)'s anti-replay window: `top` = highest accepted seq (0: none yet) and
    `bits`, an int whose bit i is set when seq top - i is stored (bit 0 = top itself)."""

    __slots__ = ("top", "bits")

    def __init__(self, top=0, bits=0):
        self.top, self.bits = top, bits

    def copy(self):
        return SeqWindow(self.top, self.bits)

    def has(self, seq):
        """True/False inside the window; None below it (the window cannot say)."""
        d = self.top - seq
        if d < 0:
            return False
        if d >= WINDOW:
            return None
        return bool(self.bits >> d & 1)

    def mark(self, seq):
        d = seq - self.top
        if d > 0:
            self.bits = ((self.bits << d) | 1) & _WINDOW_MASK if d < WINDOW else 1
            self.top = seq
        elif -d < WINDOW:
            self.bits |= 1 << -d

    def __eq__(self, other):
        return isinstance(other, SeqWindow) and (self.top, self.bits) == (other.top, other.bits)

    def __repr__(self):
        return "SeqWindow(top=%d, bits=%#x)" % (self.top, self.bits)


_WINDOW_MASK = (1 << WINDOW) - 1


class SeqState:
    """The windows per (device_id, key_id) (`store.seq_windows()`: copies), updated per batch."""

    def __init__(self, windows=None):
        self.windows = dict(windows or {})

    def reload(self, windows):
        self.windows = dict(windows)

    @property
    def highest(self):
        return {k: w.top for k, w in self.windows.items()}


def verify_one(incoming, key_lookup):
    """Strict decode + key + topic + MAC + schema; returns protocol.strict.VerifiedFrame or raises."""
    return strict.decode_uplink(incoming.payload, incoming.topic, key_lookup)


def classify_seq(window, device_id, key_id, seq, is_stored):
    """NEW or DUPLICATE for this seq given the device's SeqWindow (or None); raises OutsideReplayWindow."""
    if window is None or seq > window.top:
        return NEW
    inside = window.has(seq)
    if inside:
        return DUPLICATE
    if is_stored(device_id, key_id, seq):   # the store is the authority (and the only one below the window)
        return DUPLICATE
    if inside is None:
        raise OutsideReplayWindow("seq %d of %08x key %d is more than %d below the highest accepted %d, never stored"
                                  % (seq, device_id, key_id, WINDOW, window.top))
    return NEW


def process_batch(items, key_lookup, place_of, seqs, find_stored, now, role_of=None, every=None, every_n=64):
    """Verify a batch. `find_stored(device_id, key_id, seq)` -> bool (already in the store);
    `role_of(device_id)` -> the registry role (default: from the registry whose `device_key` is
    `key_lookup`; none -> roles not checked); `every()`, if given, is called after each `every_n`
    frames (the service sends the downlinks other threads queued meanwhile: a siren does not wait
    for the whole batch's verification).

    Updates `seqs.windows` for the accepted frames (the caller reloads them from the store if the
    commit then fails)."""
    if role_of is None:
        role_of = _registry_role_of(key_lookup)
    outcomes = []
    pending = set()
    windows = seqs.windows

    def is_stored(d, k, s):
        return (d, k, s) in pending or find_stored(d, k, s)

    for i, inc in enumerate(items):
        if every is not None and i and not i % every_n:
            every()
        try:
            f = verify_one(inc, key_lookup)
            if role_of is not None:
                check_role(role_of(f.device_id), f.device_id, f.name)
            k = (f.device_id, f.key_id)
            w = windows.get(k)
            status = classify_seq(w, f.device_id, f.key_id, f.seq, is_stored)
        except FrameError as exc:
            outcomes.append(_rejected(inc, exc))
            continue
        except Exception as exc:  # a bug or a broken registry row: this frame only, never the batch
            o = _rejected(inc, exc)
            o.reason = "InternalError"
            outcomes.append(o)
            continue
        o = Outcome(status, inc, device_id=f.device_id, key_id=f.key_id, seq=f.seq, kind=f.name)
        if f.device_time is not None:
            o.skew_s = f.device_time - now
        if status == NEW:
            if w is None:
                w = windows[k] = SeqWindow()
            elif f.seq > w.top:
                o.gap = f.seq - w.top - 1
            else:
                o.late = True
            w.mark(f.seq)
            pending.add((f.device_id, f.key_id, f.seq))
            o.new = NewDeviceEvent(f.name, f.device_id, f.key_id, f.seq, f.body, f.raw, f.topic, f.device_time,
                                   place_of(f.device_id), f.raw[15:-16])
        outcomes.append(o)
    return outcomes


def _rejected(inc, exc):
    o = Outcome(REJECTED, inc, reason=type(exc).__name__, detail=str(exc)[:200])
    # Best effort, for logs only: the claimed header of an unverified frame.
    p = inc.payload
    if len(p) >= 15:
        _, _, o.device_id, o.key_id, o.seq, _ = _HEADER.unpack_from(p)
    return o


# -- throttling ------------------------------------------------------------------------------------

class TokenBuckets:
    """Per-key token bucket (key = uplink topic, i.e. the broker-authenticated device)."""

    def __init__(self, rate_per_s, burst):
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._buckets = {}

    def allow(self, key, now_mono):
        b = self._buckets.get(key)
        if b is None:
            self._buckets[key] = [self.burst - 1.0, now_mono]
            return True
        tokens = min(self.burst, b[0] + (now_mono - b[1]) * self.rate)
        b[1] = now_mono
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return True
        b[0] = tokens
        return False


# -- downlinks ---------------------------------------------------------------------------------------

def _uint(n):
    if n < 24:
        return bytes((n,))
    if n < 0x100:
        return bytes((24, n))
    if n < 0x10000:
        return b"\x19" + n.to_bytes(2, "big")
    return b"\x1a" + n.to_bytes(4, "big")


class DownlinkSigner:
    """Builds MACed downlink frames; K_down per (device, key id) cached as a ready HMAC state."""

    def __init__(self, key_lookup):
        self._key_lookup = key_lookup
        self._macs = {}

    def _mac_state(self, device_id, key_id):
        st = self._macs.get((device_id, key_id))
        if st is None:
            key = self._key_lookup(device_id, key_id)
            k_down = hmac.new(key, b"fengqiao/v1/down", hashlib.sha256).digest()
            st = self._macs[(device_id, key_id)] = hmac.new(k_down, digestmod=hashlib.sha256)
        return st

    def forget(self, device_id=None):
        if device_id is None:
            self._macs.clear()
        else:
            for k in [k for k in self._macs if k[0] == device_id]:
                del self._macs[k]

    def build(self, msg_type, device_id, key_id, seq, gateway_time, body):
        """(topic, frame bytes) for a downlink of `msg_type` with `body` (validated)."""
        if msg_type != DOWN_ACK:
            validate_body(msg_type, body)
        topic = "fq/v1/%08x/down" % device_id
        tb = topic.encode()
        if msg_type == DOWN_ACK:  # [uint, uint, uint]: the hot path, encoded by hand (shortest form)
            body_b = b"\x83" + _uint(body[0]) + _uint(body[1]) + _uint(body[2])
        else:
            body_b = cbor2.dumps(body, canonical=True)
        unsigned = _HEADER.pack(1, msg_type, device_id, key_id, seq, gateway_time) + body_b
        h = self._mac_state(device_id, key_id).copy()
        h.update(bytes((len(tb),)) + tb + unsigned)
        return topic, unsigned + h.digest()[:16]

    def ack(self, device_id, key_id, seq, acked_seq, stage, gateway_time):
        if not (0 <= stage <= 4 and 0 < acked_seq <= 0xFFFFFFFF):
            raise ValueError("ack stage 0..4 and acked_seq 1..2^32-1")
        return self.build(DOWN_ACK, device_id, key_id, seq, gateway_time, [acked_seq, stage, gateway_time])
