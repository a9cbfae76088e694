"""Events in, frames out: outbox + sequence counter + clock + link, and downlink dispatch.

    up = Uplink(cfg, data_dir, clock, log)
    seq = up.emit(frame.UP_ALARM, [0], PRIO_ALARM)   # on flash before this returns
    up.listeners.append(role)   # role.on_ack(seq, stage), .on_siren(on, pattern, s), .on_config(d)

Failures it survives:
- link down for hours: events stay in the outbox (bounded; see outbox.py for what is dropped);
  the sender task resends everything unacknowledged, oldest first, on every new session;
- gateway down while the broker is up (PUBACKs but no acks): everything unacknowledged is sent
  again after `ack_timeout_ms`, doubling up to 10 minutes while no ack comes (the gateway
  removes duplicates by device and seq);
- clock unknown: frames carry time 0; an event stored with time 0 in this boot is stamped from
  its ticks when it is (re)sent after the clock became known (clock.at_ticks);
- forged, replayed or garbled downlinks: frame.decode raises a named FrameError; it is counted
  in `rejected` by name and logged; nothing else happens. A downlink seq not above the highest
  accepted since boot is a Replay (SPEC section 4);
- a stored record that cannot be turned into a frame (should not happen: validated on emit):
  dropped from the outbox and logged, never retried forever.

Outbox record (the outbox's opaque data): msg_type u8, time u32 (0 = unknown), boot mark u32
(first seq of the boot), ticks_ms u32 at the event, then the CBOR body.
"""

import asyncio
import struct
from time import ticks_diff, ticks_ms

from micropython import const

from link import LinkDown
from outbox import Outbox, OutboxFull  # noqa: F401 (OutboxFull re-exported for the roles)
from protocol import cbor, frame
from protocol.errors import FrameError, Replay
from seqcounter import SeqCounter

_REC_LEN = const(13)  # ">BIII"
_ACK_TIMEOUT_MS = const(30000)
_ACK_TIMEOUT_MAX_MS = const(600000)


class Uplink:
    def __init__(self, cfg, data_dir, clock, log=print, max_entries=256, max_bytes=16384):
        self.cfg = cfg
        self.k_up, self.k_down = frame.derive_keys(cfg["key"])
        self._t = frame.uplink_topic(cfg["device_id"])
        self.clock = clock
        self.log = log
        self.seqc = SeqCounter(data_dir, cfg["key_id"])
        self.boot_mark = self.seqc.peek()  # first seq of this boot
        self.outbox = Outbox(data_dir, max_entries=max_entries, max_bytes=max_bytes)
        self.link = None
        self.listeners = []
        self.down_seq = 0
        self.rejected = {}  # rejected downlinks by error name
        self.sent = 0
        self.acks = 0
        self._la = ticks_ms()  # when the newest ack came
        self._to = _ACK_TIMEOUT_MS  # resend everything if no ack for this long

    # -- events -------------------------------------------------------------------------------
    def emit(self, msg_type, body, prio):
        """Validate, number and store an event; returns its seq. OutboxFull if it cannot be kept.
        The sender task polls the outbox, so it picks the event up within 50 ms."""
        frame.validate_body(msg_type, body)
        rec = struct.pack(">BIII", msg_type, self.clock.now(), self.boot_mark, ticks_ms()) + cbor.dumps(body)
        seq = self.seqc.next()
        try:
            dropped = self.outbox.put(seq, prio, rec)
        except OutboxFull:
            self.log("uplink: refused %d" % msg_type)
            raise
        if dropped:
            self.log("uplink: dropped %r" % (dropped,))
        return seq

    def build(self, seq):
        """The signed frame for a waiting event (KeyError if it is no longer waiting)."""
        rec = self.outbox.read(seq)[1]
        if len(rec) <= _REC_LEN:
            raise ValueError(seq)
        msg_type, t, mark, tk = struct.unpack(">BIII", rec)
        if t == 0 and mark == self.boot_mark:
            t = self.clock.at_ticks(tk)
        cfg = self.cfg
        unsigned = struct.pack(">BBIBII", 1, msg_type, cfg["device_id"], cfg["key_id"], seq, t) + rec[_REC_LEN:]
        return frame.sign(self.k_up, self._t, unsigned)

    # -- the sender task ----------------------------------------------------------------------
    async def run(self, alive=None):
        session = -1
        cursor = 0
        last_send = ticks_ms()
        ob = self.outbox
        while True:
            if alive:
                alive("uplink")
            link = self.link
            if link is None or not link.up:
                await asyncio.sleep_ms(100)
                continue
            if link.sessions != session:
                session = link.sessions
                cursor = 0  # a new session: resend everything unacknowledged, in order
            seq = ob.next_after(cursor)
            if seq is None:
                now = ticks_ms()
                if len(ob) and ticks_diff(now, self._la) > self._to and ticks_diff(now, last_send) > self._to:
                    self.log("uplink: no ack for %d ms, resending" % self._to)
                    self._to = min(self._to * 2, _ACK_TIMEOUT_MAX_MS)
                    cursor = 0
                    continue
                # Polled, not woken by an Event: no Event/wait_for task per wait (see link.py).
                await asyncio.sleep_ms(50)
                continue
            try:
                data = self.build(seq)
            except (ValueError, KeyError, FrameError) as e:
                self.log("uplink: dropping %d: %r" % (seq, e))
                ob.remove(seq)
                continue
            try:
                await link.publish(data)
            except LinkDown:
                continue  # the link logged why; resent on the next session
            cursor = seq
            self.sent += 1
            last_send = ticks_ms()

    # -- downlinks ----------------------------------------------------------------------------
    def on_message(self, topic, payload):
        try:
            f = frame.decode(self.k_down, topic, payload, downlink=True)
            if f.key_id != self.cfg["key_id"]:
                raise FrameError("key id %d" % f.key_id)
            if f.seq <= self.down_seq:
                raise Replay("seq %d <= %d" % (f.seq, self.down_seq))
        except FrameError as e:
            name = type(e).__name__
            self.rejected[name] = self.rejected.get(name, 0) + 1
            self.log("uplink: rejected %s %s" % (name, e))
            return
        self.down_seq = f.seq
        t = f.msg_type
        b = f.body
        if t == frame.DOWN_ACK:
            self.clock.adopt(b[2])
            self.acks += 1
            self._la = ticks_ms()
            self._to = _ACK_TIMEOUT_MS
            self.outbox.remove(b[0])
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
