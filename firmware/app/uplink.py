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
  dropped from the outbox, counted in `bad_records`, never retried forever.

Outbox record (the outbox's opaque data): msg_type u8, time u32 (0 = unknown), boot mark u32
(first seq of the boot), ticks_ms u32 at the event, then the CBOR body.
"""

import asyncio
import struct
from time import ticks_diff, ticks_ms

from link import LinkDown
from outbox import Outbox, OutboxFull  # noqa: F401 (OutboxFull re-exported for the roles)
from protocol import cbor, frame
from protocol.errors import FrameError, Replay
from seqcounter import SeqCounter

_REC = ">BIII"
_REC_LEN = 13
ACK_TIMEOUT_MS = 30000
ACK_TIMEOUT_MAX_MS = 600000

# SPEC section 3, `config` keys -> settings names (identity.DEFAULT_SETTINGS).
CONFIG_KEYS = {1: "heartbeat_interval_s", 2: "checkin_repeat_s", 3: "hold_ms", 4: "low_battery_mv"}


class Uplink:
    def __init__(self, cfg, data_dir, clock, log=print, max_entries=256, max_bytes=16384):
        self.cfg = cfg
        self.dev = cfg["device_id"]
        self.key_id = cfg["key_id"]
        self.k_up, self.k_down = frame.derive_keys(cfg["key"])
        self.topic = frame.uplink_topic(self.dev)
        self.clock = clock
        self.log = log
        self.seqc = SeqCounter(data_dir, self.key_id)
        self.boot_mark = self.seqc.peek()
        self.outbox = Outbox(data_dir, max_entries=max_entries, max_bytes=max_bytes)
        self.link = None
        self.listeners = []
        self.wake = asyncio.Event()
        self.down_seq = 0
        self.rejected = {}
        self.refused = 0  # events refused by a full outbox
        self.bad_records = 0
        self.sent = 0
        self.acks = 0
        self._last_ack_ms = ticks_ms()
        self._last_send_ms = ticks_ms()
        self._ack_timeout_ms = ACK_TIMEOUT_MS

    # -- events -------------------------------------------------------------------------------
    def emit(self, msg_type, body, prio):
        """Validate, number and store an event; returns its seq. OutboxFull if it cannot be kept."""
        frame.validate_body(msg_type, body)
        rec = struct.pack(_REC, msg_type, self.clock.now(), self.boot_mark, ticks_ms()) + cbor.dumps(body)
        seq = self.seqc.next()
        try:
            dropped = self.outbox.put(seq, prio, rec)
        except OutboxFull:
            self.refused += 1
            self.log("uplink: outbox full, event type 0x%02x refused" % msg_type)
            raise
        if dropped:
            self.log("uplink: outbox full, dropped %r" % (dropped,))
        self.wake.set()
        return seq

    def build(self, seq):
        """The signed frame for a waiting event (KeyError if it is no longer waiting)."""
        _prio, rec = self.outbox.read(seq)
        if len(rec) <= _REC_LEN:
            raise ValueError("short record")
        msg_type, t, mark, tk = struct.unpack(_REC, rec)
        if t == 0 and mark == self.boot_mark:
            t = self.clock.at_ticks(tk)
        unsigned = struct.pack(">BBIBII", 1, msg_type, self.dev, self.key_id, seq, t) + rec[_REC_LEN:]
        return frame.sign(self.k_up, self.topic, unsigned)

    # -- the sender task ----------------------------------------------------------------------
    async def run(self, alive=None):
        session = -1
        cursor = 0
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
            seq = self.outbox.next_after(cursor)
            now = ticks_ms()
            if seq is None:
                if (len(self.outbox) and ticks_diff(now, self._last_ack_ms) > self._ack_timeout_ms
                        and ticks_diff(now, self._last_send_ms) > self._ack_timeout_ms):
                    self.log("uplink: no ack for %d ms, resending" % self._ack_timeout_ms)
                    self._ack_timeout_ms = min(self._ack_timeout_ms * 2, ACK_TIMEOUT_MAX_MS)
                    cursor = 0
                    continue
                self.wake.clear()
                try:
                    await asyncio.wait_for_ms(self.wake.wait(), 500)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                data = self.build(seq)
            except (ValueError, KeyError, FrameError) as e:
                self.bad_records += 1
                self.log("uplink: dropping unreadable record %d: %r" % (seq, e))
                self.outbox.remove(seq)
                continue
            try:
                await link.publish(data)
            except LinkDown:
                continue  # the link logged why; resent on the next session
            cursor = seq
            self.sent += 1
            self._last_send_ms = ticks_ms()

    # -- downlinks ----------------------------------------------------------------------------
    def on_message(self, topic, payload):
        try:
            f = frame.decode(self.k_down, topic, payload, downlink=True)
            if f.key_id != self.key_id:
                raise FrameError("downlink for key id %d" % f.key_id)
            if f.seq <= self.down_seq:
                raise Replay("downlink seq %d <= %d" % (f.seq, self.down_seq))
        except FrameError as e:
            name = type(e).__name__
            self.rejected[name] = self.rejected.get(name, 0) + 1
            self.log("uplink: downlink rejected: %s %s" % (name, e))
            return
        self.down_seq = f.seq
        t = f.msg_type
        if t == frame.DOWN_ACK:
            acked, stage, gw_time = f.body
            self.clock.adopt(gw_time)
            self.acks += 1
            self._last_ack_ms = ticks_ms()
            self._ack_timeout_ms = ACK_TIMEOUT_MS
            self.outbox.remove(acked)
            for lst in self.listeners:
                lst.on_ack(acked, stage)
        elif t == frame.DOWN_SIREN:
            for lst in self.listeners:
                lst.on_siren(f.body[0], f.body[1], f.body[2])
        elif t == frame.DOWN_CONFIG:
            changed = {}
            for k, v in f.body[0].items():
                name = CONFIG_KEYS.get(k)
                if name is not None:
                    changed[name] = v
            if changed:
                self.cfg["settings"].update(changed)
                for lst in self.listeners:
                    lst.on_config(changed)
