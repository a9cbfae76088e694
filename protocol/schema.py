"""Message types of SPEC.md section 3: names and body schemas (device and CPython).

A table, not code, and one string rather than dicts: on a board a dict literal is built in the
heap at import (~300 bytes each), a string constant stays in flash (~40 bytes for its object).
The value tables of the body fields (alarm kinds, ack stages, siren patterns, reset reasons,
config keys) are in SPEC section 3; the codec only checks their ranges, so it does not carry them.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol.errors import err

_U16 = const(0xFFFF)  # const(): no global, no qstr on the device
_U32 = const(0xFFFFFFFF)

# the schema letters, as numbers (ord)
_U8 = const(0x42)  # B
_U16_LETTER = const(0x48)  # H
_U32_LETTER = const(0x49)  # I
_SEQ = const(0x53)  # S
_BOOL = const(0x62)  # b
_MAP = const(0x6D)  # m
_RSSI = const(0x72)  # r
_UID = const(0x75)  # u

_E_TYPE = const(24)  # lines of the error catalogue (protocol/errors.py) raised here
_E_LAYOUT = const(25)
_E_RANGE = const(26)

# The v1 type codes, in the order of the records of _TYPES.
_CODES = const(b"\x01\x02\x03\x04\x05\x06\x07\x81\x82\x83")

# One record of _REC characters per code: its name (padded to 12), then its body schema (padded
# to 5), one letter per array element: B uint <= 255, H uint <= 65535, I uint <= 2^32-1,
# S uint 1..2^32-1 (a seq), b bool, r rssi (null or -128..127), u card UID (bytes of 4, 7 or
# 10), m config map (uint <= 2^32-1 -> uint <= 2^32-1), a digit d: uint 0..d (an enumeration).
_REC = const(17)
_TYPES = const(
    "boot        BH   "  # 0x01 reset_reason, fw
    "heartbeat   HIHrH"  # 0x02 battery_mv, uptime_s, outbox_depth, rssi_dbm, fw
    "alarm       3    "  # 0x03 kind
    "alarm_cancelS    "  # 0x04 alarm_seq
    "checkin     Hu   "  # 0x05 checkpoint_id, card_uid
    "tamper      b    "  # 0x06 open
    "battery_low H    "  # 0x07 battery_mv
    "ack         S4I  "  # 0x81 acked_seq, stage, gateway_time
    "siren       b3I  "  # 0x82 on, pattern, duration_s
    "config      m    "  # 0x83 settings
)


def lookup(msg_type):
    """(name, schema letters) of a v1 message type code, None for any other value."""
    for i in range(len(_CODES)):
        if _CODES[i] == msg_type:
            rec = _TYPES[i * _REC : i * _REC + _REC]
            return rec[:12].rstrip(), rec[12:].rstrip()
    return None


def validate_body(msg_type, body):
    """Raise BadBody unless `body` is the v1 layout of `msg_type` (exactly the listed elements,
    each in its range; SPEC section 3). An undefined code raises UnknownType."""
    entry = lookup(msg_type)
    if entry is None:
        raise err(_E_TYPE, (msg_type,))
    name, schema = entry
    if not isinstance(body, (list, tuple)) or len(body) != len(schema):
        raise err(_E_LAYOUT, (name, len(schema)))
    for i in range(len(schema)):
        c = ord(schema[i])  # letters as numbers: no one-letter strings (qstrs) on a board
        v = body[i]
        if c == _BOOL:
            ok = v is True or v is False
        elif c == _UID:
            ok = isinstance(v, (bytes, bytearray)) and 3 < len(v) < 11 and len(v) % 3 == 1  # 4, 7 or 10
        elif c == _MAP:
            ok = isinstance(v, dict)
            if ok:
                for k in v:
                    for x in (k, v[k]):
                        if x is True or x is False or not isinstance(x, int) or not 0 <= x <= _U32:
                            ok = False
        elif v is True or v is False or not isinstance(v, int):  # the rest are integers
            ok = c == _RSSI and v is None
        elif c == _RSSI:
            ok = -128 <= v <= 127
        else:  # unsigned: B, H, I, S, or a digit d (0..d)
            ok = (1 if c == _SEQ else 0) <= v <= (
                0xFF if c == _U8 else _U16 if c == _U16_LETTER else _U32 if c == _U32_LETTER or c == _SEQ else c - 48)
        if not ok:
            raise err(_E_RANGE, (name, i))
