"""Event values shared by the store, the pipeline, the forwarder and the case service.

`StoredEvent` is one entry of the append-only log (gateway/store.py documents how `hash` is
computed). `NewDeviceEvent` is what the verify pipeline hands to `EventStore.append_device_events`:
a verified uplink not yet numbered, timestamped or chained.
"""

from dataclasses import dataclass

# Uplink message codes (SPEC section 3) -> event kind.
UPLINK_KINDS = {
    0x01: "boot",
    0x02: "heartbeat",
    0x03: "alarm",
    0x04: "alarm_cancel",
    0x05: "checkin",
    0x06: "tamper",
    0x07: "battery_low",
}

SOURCE_DEVICE = "device"
SOURCE_GATEWAY = "gateway"

ZERO_HASH = bytes(32)


@dataclass(frozen=True)
class StoredEvent:
    event_id: int            # position in the log, 1, 2, 3 ... (no gaps)
    source: str              # "device" (a verified uplink) | "gateway"
    kind: str                # "alarm", "checkin", ... or a gateway kind ("device_offline", ...)
    device_id: "int | None"
    key_id: "int | None"
    seq: "int | None"
    body: object             # device: the decoded body list; gateway: a dict (JSON-able)
    frame: "bytes | None"    # device: exact frame bytes as received; gateway: None
    topic: "str | None"
    device_time: "int | None"  # device clock (None = unknown, i.e. time field 0)
    received_at: float       # gateway clock when stored (microsecond resolution)
    place_id: "str | None"
    actor: "str | None"      # gateway events: person id or "system"; device events: None
    prev_hash: bytes         # 32 bytes; all zero for event 1
    hash: bytes              # SHA-256(prev_hash || canonical record), see gateway/store.py


@dataclass(frozen=True)
class NewDeviceEvent:
    """A verified uplink, ready to be appended (the store adds id, time and chain)."""

    kind: str
    device_id: int
    key_id: int
    seq: int
    body: object
    frame: bytes
    topic: str
    device_time: "int | None"
    place_id: "str | None" = None
    body_cbor: "bytes | None" = None   # the body's exact CBOR bytes when known (saves re-encoding)
