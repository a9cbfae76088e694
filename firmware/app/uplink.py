"""Events in, frames out: outbox + sequence counter + clock + link, and downlink dispatch.

    up = Uplink(cfg, data_dir, clock, log)
    seq = up.emit(frame.UP_ALARM, [0], PRIO_ALARM)   # on flash before this returns
    up.listeners.append(role)   # role.on_ack(seq, stage), .on_siren(on, pattern, s), .on_config(d)

Failures it survives:
- link down for hours: events stay in the outbox (bounded; see outbox.py for what is dropped);
  the sender task resends everything unacknowledged, oldest first, on every new session;
- gateway down while the broker is up (PUBACKs but no acks), or a record PUBACKed into a session
  the broker then lost (kill -9) while later records are acked: a record is resent until its
  own ack comes, whatever acks for later records say. When everything waiting has been sent and
  the oldest waiting record is still the same `ack_timeout_ms` (30 s) later, everything waiting
  is sent again, oldest first; the wait doubles up to 10 minutes while that record stays
  unacked and starts at 30 s again when it is acked (the gateway removes duplicates by device
  and seq, and accepts late seqs inside its window, SPEC section 4);
- clock unknown: frames carry time 0; an event stored with time 0 in this boot is stamped from
  its ticks when it is (re)sent after the clock became known (clock.at_ticks);
- forged, replayed or garbled downlinks: frame.decode raises a named FrameError; it is counted
  in `rejected` by name and logged; nothing else happens. A downlink seq not above the highest
  accepted since boot is a Replay (SPEC section 4);
- a stored record that cannot be turned into a frame (should not happen: validated on emit):
  dropped from the outbox and logged, never retried forever;
- a key rotation (console `rekey`, identity/write.py) with records still waiting: the identity
  keeps the old key (`prev_key`, `prev_key_id`) and `prev_below`, the first number of the new
  key; a record numbered below it is signed with the old key id, as it was numbered (SPEC
  section 4: never resent under another key id; the gateway keeps old key ids valid until the
  device is revoked), and an ack for it, made with the old key id, is accepted. Under the old
  key only such acks are accepted (anything else: UnknownKey). The old key is held only while
  a record numbered under it waits when the uplink starts (the next boot after they are acked
  drops it).

Outbox record (the outbox's opaque data): msg_type u8, time u32 (0 = unknown), boot mark u32
(first seq of the boot), ticks_ms u32 at the event, then the CBOR body.

Log lines: "uplink: <what> <detail>" from one format string (each distinct string constant costs
heap). Private names are short and shared with other modules (each distinct name is a qstr,
~11 bytes of heap for good): _mac the (uplink, downlink) keys, _q the sequence counter, boot
the first seq of this boot, hi the highest downlink seq accepted, _o the oldest waiting seq and _at since when
it has been (sent, unacked), _w how long it may stay so before everything is resent. Frames are signed for link.topic.
"""

import struct
import time

# const() is the compiler's: no `from micropython import const` (it would cost a global).

import tasks
from link import LinkDown
from outbox import Outbox
from protocol import cbor, frame
from protocol.errors import FrameError, Replay
from seqcounter import SeqCounter

_REC_LEN = const(13)  # ">BIII"
_ACK_TIMEOUT_MS = const(30000)
_ACK_TIMEOUT_MAX_MS = const(600000)
_E_KEY = const(45)  # protocol/errors.py catalogue line: UnknownKey "frame made with key id %d, not %d"


class Uplink:
    def __init__(self, cfg, data_dir, clock, log=print, max_entries=256, max_bytes=16384, ack_ms=_ACK_TIMEOUT_MS):
        self.cfg = cfg
        self._mac = frame.derive_keys(cfg["key"])
        self.clock = clock
        self.log = log
        self._q = SeqCounter(data_dir, cfg["key_id"])
        self.boot = self._q.peek()
        self.outbox = Outbox(data_dir, max_entries=max_entries, max_bytes=max_bytes)
        # After a rekey: (old key id, first seq of the new key, old (uplink, downlink) keys) while a
        # record numbered under the old key waits; else None.
        self._pk = None
        p = cfg.get("prev_key")
        if p and 0 < self.outbox.first() < cfg["prev_below"]:
            import binascii

            self._pk = (cfg["prev_key_id"], cfg["prev_below"], frame.derive_keys(binascii.unhexlify(p)))
        self.link = None
        self.listeners = []
        self.hi = 0
        self.rejected = {}  # rejected downlinks by error name
        self.sent = 0
        self.acks = 0
        self._o = 0  # the oldest waiting seq when it was last looked at (all sent)
        self._at = time.ticks_ms()  # since when _o has been the oldest, sent and unacked
        self.ack_ms = ack_ms  # the first wait for an ack before a resend (tests shorten it)
        self._w = ack_ms

    # -- events -------------------------------------------------------------------------------
    def emit(self, msg_type, body, prio):
        """Validate, number and store an event; returns its seq. OutboxFull if it cannot be kept.
        The sender task polls the outbox, so it picks the event up within 50 ms."""
        frame.validate_body(msg_type, body)
        rec = struct.pack(">BIII", msg_type, self.clock.now(), self.boot, time.ticks_ms()) + cbor.dumps(body)
        seq = self._q.next()
        try:
            dropped = self.outbox.put(seq, prio, rec)
        except Exception as e:  # OutboxFull (or the flash failing)
            self.log("uplink: %s %r" % ("refused", (msg_type, e)))
            raise
        if dropped:
            self.log("uplink: %s %r" % ("dropped", dropped))
        return seq

    # -- the sender task ----------------------------------------------------------------------
    async def run(self, alive=None):
        session = -1
        cursor = 0
        last_send = time.ticks_ms()
        ob = self.outbox
        while True:
            if alive:
                alive("uplink")
            link = self.link
            if link is None or not link.up:
                await tasks.sleep_ms(100)
                continue
            if link.sessions != session:
                session = link.sessions
                cursor = 0  # a new session: resend everything unacknowledged, in order
            seq = ob.next_after(cursor)
            if seq is None:
                # Everything waiting went out in this pass. Each record is resent until its OWN
                # ack comes, whatever acks for later records say (issue 14: after a broker
                # kill -9, seq 6-10 were PUBACKed into a lost session while 11 was acked): the
                # oldest waiting record is timed from when it was first seen sent and unacked.
                now = time.ticks_ms()
                if not len(ob):
                    self._o = 0
                elif ob.first() != self._o:
                    self._o = ob.first()  # progress: the oldest changed (acked or dropped)
                    self._at = now
                    self._w = self.ack_ms
                elif time.ticks_diff(now, self._at) > self._w and time.ticks_diff(now, last_send) > self._w:
                    self.log("uplink: %s %r" % ("no ack", (self._o, self._w)))
                    self._w = min(self._w * 2, _ACK_TIMEOUT_MAX_MS)
                    self._at = now
                    cursor = 0  # resend everything still waiting, oldest first
                    continue
                # Polled, not woken by an Event: no Event/wait_for task per wait (see link.py).
                await tasks.sleep_ms(50)
                continue
            data = self._sign(seq, link.topic)
            if data is None:
                continue
            try:
                await link.publish(data)
            except LinkDown:
                continue  # the link logged why; resent on the next session
            cursor = seq
            self.sent += 1
            last_send = time.ticks_ms()

    def _sign(self, seq, topic):
        # The signed frame of waiting event `seq`, or None when it cannot be made (dropped from
        # the outbox and logged). A time unknown when it was stored is taken from its ticks if
        # the clock is known now and it is still the same boot. Not inline in run(): the locals
        # of a coroutine stay in its frame, in the heap, for as long as it runs (384 -> 288 B).
        ob = self.outbox
        cfg = self.cfg
        try:
            rec = ob.read(seq)[1]
            if len(rec) <= _REC_LEN:
                raise ValueError(seq)
            msg_type, t, mark, tk = struct.unpack(">BIII", rec)
            if t == 0 and mark == self.boot:
                t = self.clock.at_ticks(tk)
            k = self._mac[0]
            kid = cfg["key_id"]
            p = self._pk
            if p and seq < p[1]:  # numbered under the old key: sent under it
                kid = p[0]
                k = p[2][0]
            return frame.sign(k, topic, struct.pack(
                ">BBIBII", 1, msg_type, cfg["device_id"], kid, seq, t) + rec[_REC_LEN:])
        except (ValueError, KeyError, FrameError) as e:
            self.log("uplink: %s %r" % ("dropped", (seq, e)))
            ob.remove(seq)
            return None

    # -- downlinks ----------------------------------------------------------------------------
    def on_message(self, topic, payload):
        try:
            k = self._mac[1]
            kid = self.cfg["key_id"]
            p = self._pk
            if p and len(payload) > 6 and payload[6] == p[0]:  # header byte 6: the key id
                k = p[2][1]
                kid = p[0]
            # SPEC section 2 step 2: our own device id and key id, checked before the MAC
            f = frame.decode(k, topic, payload, True, kid, self.cfg["device_id"])
            if kid != self.cfg["key_id"] and (f.msg_type != frame.DOWN_ACK or f.body[0] >= p[1]):
                # the old key acks the records numbered under it, and says nothing else
                raise frame.err(_E_KEY, (kid, self.cfg["key_id"]))
            if f.seq <= self.hi:
                raise Replay("seq", f.seq, self.hi)
        except FrameError as e:
            name = type(e).__name__
            self.rejected[name] = self.rejected.get(name, 0) + 1
            self.log("uplink: %s %r" % ("rejected", e))
            return
        self.hi = f.seq
        t = f.msg_type
        b = f.body
        if t == frame.DOWN_ACK:
            self.clock.adopt(b[2])
            self.acks += 1
            self.outbox.remove(b[0])  # only this record: an ack says nothing about older ones
            for lst in self.listeners:
                lst.on_ack(b[0], b[1])
        elif t == frame.DOWN_SIREN:
            for lst in self.listeners:
                lst.on_siren(b[0], b[1], b[2])
        elif t == frame.DOWN_CONFIG:
            # SPEC section 3, `config` keys 1..4 -> settings names (identity.DEFAULT_SETTINGS).
            changed = {}
            for k, v in b[0].items():
                if k in (1, 2, 3, 4):
                    changed[("heartbeat_interval_s", "checkin_repeat_s", "hold_ms", "low_battery_mv")[k - 1]] = v
            if changed:
                self.cfg["settings"].update(changed)
                for lst in self.listeners:
                    lst.on_config(changed)
