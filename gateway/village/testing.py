"""Helpers for the tests of cases, patrols, village import and reports, and for `fengqiao bench cases`
(the sample village); the gateway itself never imports this module.

`StubContext` stands in for the gateway's GatewayContext in *unit* tests only (the integration
test uses the real gateway service): it records downlinks, acks and emitted events, and appends
emitted events to a real EventStore when given one.
"""

import os

from gateway.events import StoredEvent, ZERO_HASH
from gateway.village.config import parse_village
from gateway.village.db import import_village, open_db

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_village.toml")


def sample_text():
    with open(SAMPLE, encoding="utf-8") as f:
        return f.read()


def sample_db(path, text=None):
    db = open_db(path)
    import_village(db, parse_village(text or sample_text(), "sample_village.toml"), "sample")
    return db


class StubContext:
    def __init__(self, clock, store=None, registry=None, fail_downlinks_to=()):
        self.clock = clock
        self.store = store
        self.registry = registry
        self.downlinks = []     # (device_id, msg_type, body, at)
        self.acks = []          # (device_id, acked_seq, stage, at)
        self.emitted = []       # (kind, body, device_id, place_id, actor)
        self.fail_downlinks_to = set(fail_downlinks_to)

    def send_downlink(self, device_id, msg_type, body):
        if device_id in self.fail_downlinks_to:
            raise ConnectionError("device %08x unreachable" % device_id)
        self.downlinks.append((device_id, msg_type, list(body), self.clock.now()))

    def send_ack(self, device_id, acked_seq, stage):
        self.acks.append((device_id, acked_seq, stage, self.clock.now()))

    def emit(self, kind, body, device_id=None, place_id=None, actor="system"):
        self.emitted.append((kind, body, device_id, place_id, actor))
        if self.store is not None:
            return self.store.append_gateway_event(kind, body, device_id=device_id, place_id=place_id, actor=actor)
        return None

    def kinds(self):
        return [e[0] for e in self.emitted]

    def sirens(self):
        """{device_id: [on, pattern, duration]} of the latest siren downlink per device."""
        out = {}
        for dev, msg_type, body, _ in self.downlinks:
            if msg_type == 0x82:
                out[dev] = body
        return out


class EventMaker:
    """Builds StoredEvents as the gateway would hand them to a handler (ids increase)."""

    def __init__(self, clock, start_id=1):
        self.clock = clock
        self.next_id = start_id
        self.seqs = {}

    def device(self, kind, device_id, body, device_time="now", place_id=None, seq=None, key_id=1, received_at=None):
        seq = seq if seq is not None else self.seqs.get(device_id, 0) + 1
        self.seqs[device_id] = max(seq, self.seqs.get(device_id, 0))
        rx = self.clock.now() if received_at is None else received_at
        dt = int(rx) if device_time == "now" else device_time
        ev = StoredEvent(self.next_id, "device", kind, device_id, key_id, seq, body, b"", "fq/v1/%08x/up" % device_id,
                         dt, rx, place_id, None, ZERO_HASH, ZERO_HASH)
        self.next_id += 1
        return ev

    def alarm(self, device_id, kind=0, **kw):
        return self.device("alarm", device_id, [kind], **kw)

    def cancel(self, device_id, alarm_seq, **kw):
        return self.device("alarm_cancel", device_id, [alarm_seq], **kw)

    def checkin(self, device_id, checkpoint, card_hex, **kw):
        return self.device("checkin", device_id, [checkpoint, bytes.fromhex(card_hex)], **kw)

    def heartbeat(self, device_id, outbox_depth=0, **kw):
        return self.device("heartbeat", device_id, [4100, 3600, outbox_depth, None, 10000], **kw)
