"""Message types of SPEC.md section 3: names, value tables and body schemas (device and CPython).

A table, not code, because bytecode costs heap on the device."""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol.errors import BadBody, UnknownType

TYPE_NAMES = {
    0x01: "boot",
    0x02: "heartbeat",
    0x03: "alarm",
    0x04: "alarm_cancel",
    0x05: "checkin",
    0x06: "tamper",
    0x07: "battery_low",
    0x81: "ack",
    0x82: "siren",
    0x83: "config",
}
TYPE_CODES = {name: code for code, name in TYPE_NAMES.items()}

ALARM_KINDS = {0: "emergency", 1: "fire", 2: "medical", 3: "intrusion"}
ACK_STAGES = {0: "stored", 1: "dispatched", 2: "responder_acknowledged", 3: "closed", 4: "cancelled"}
SIREN_PATTERNS = {0: "steady", 1: "neighbour_alarm", 2: "patrol_alert", 3: "chirp"}
RESET_REASONS = {0: "power_on", 1: "hard_reset", 2: "watchdog", 3: "deep_sleep_wake", 4: "soft_reset", 5: "brown_out", 255: "other"}
CONFIG_KEYS = {1: "heartbeat_interval_s", 2: "checkin_repeat_s", 3: "hold_ms", 4: "low_battery_mv"}
UID_LENGTHS = (4, 7, 10)

_U16 = const(0xFFFF)  # const(): no global, no qstr on the device
_U32 = const(0xFFFFFFFF)

# Body schemas. One letter per array element: B uint <= 255, H uint <= 65535, I uint <= 2^32-1, S uint 1..2^32-1
# (a seq), b bool, r rssi (null or -128..127), u card UID (bytes of 4, 7 or 10), m config map
# (uint <= 2^32-1 -> uint <= 2^32-1), a digit d: uint 0..d (an enumeration). A table, not code,

SCHEMAS = {
    0x01: "BH",      # boot: reset_reason, fw
    0x02: "HIHrH",   # heartbeat: battery_mv, uptime_s, outbox_depth, rssi_dbm, fw
    0x03: "3",       # alarm: kind
    0x04: "S",       # alarm_cancel: alarm_seq
    0x05: "Hu",      # checkin: checkpoint_id, card_uid
    0x06: "b",       # tamper: open
    0x07: "H",       # battery_low: battery_mv
    0x81: "S4I",     # ack: acked_seq, stage, gateway_time
    0x82: "b3I",     # siren: on, pattern, duration_s
    0x83: "m",       # config: settings
}


def _uint_ok(v, lo, hi):
    return v is not True and v is not False and isinstance(v, int) and lo <= v <= hi


def validate_body(msg_type, body):
    """Raise BadBody unless `body` is the v1 layout of `msg_type` (exactly the listed elements,
    each in its range; SPEC section 3). An undefined code raises UnknownType."""
    schema = SCHEMAS.get(msg_type)
    if schema is None:
        raise UnknownType("message type %r" % (msg_type,))
    if not isinstance(body, (list, tuple)) or len(body) != len(schema):
        raise BadBody("%s body must be an array of %d" % (TYPE_NAMES[msg_type], len(schema)))
    for i in range(len(schema)):
        c = schema[i]
        v = body[i]
        if c == "B":
            ok = _uint_ok(v, 0, 255)
        elif c == "H":
            ok = _uint_ok(v, 0, _U16)
        elif c == "I":
            ok = _uint_ok(v, 0, _U32)
        elif c == "S":
            ok = _uint_ok(v, 1, _U32)
        elif c == "b":
            ok = v is True or v is False
        elif c == "r":
            ok = v is None or _uint_ok(v, -128, 127)
        elif c == "u":
            ok = isinstance(v, (bytes, bytearray)) and len(v) in UID_LENGTHS
        elif c == "m":
            ok = isinstance(v, dict)
            if ok:
                for k in v:
                    if not (_uint_ok(k, 0, _U32) and _uint_ok(v[k], 0, _U32)):
                        ok = False
        else:
            ok = _uint_ok(v, 0, ord(c) - 48)
        if not ok:
            raise BadBody("%s element %d out of range" % (TYPE_NAMES[msg_type], i))
