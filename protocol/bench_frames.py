"""`fengqiao bench frames`: encoded size of every frame type, MAC included (SPEC section 7).

Frames are built with the device codec and verified with the strict decoder; the worst cases use
the largest value of every field. The last line (with --json) is one JSON object.
"""

import json

from protocol import frame, strict

HELP = "encoded size in bytes (MAC included) of alarm, checkin and heartbeat frames"
LORA_PAYLOAD = 51  # bytes per frame at the slowest LoRa-class rate (SPEC section 7)
_KEY = bytes(range(32))
_DEV = 0xFFFFFFFF
_BIG = 0xFFFFFFFF

# name -> (type, body); "worst" uses the largest encoding of each field
CASES = {
    "alarm": (frame.UP_ALARM, [3]),
    "checkin_uid4": (frame.UP_CHECKIN, [65535, bytes(4)]),
    "checkin_uid7": (frame.UP_CHECKIN, [65535, bytes(7)]),
    "checkin_uid10": (frame.UP_CHECKIN, [65535, bytes(10)]),
    "heartbeat_typical": (frame.UP_HEARTBEAT, [3712, 86400, 0, -67, 10203]),
    "heartbeat_worst": (frame.UP_HEARTBEAT, [65535, _BIG, 65535, -128, 65535]),
    "boot": (frame.UP_BOOT, [255, 65535]),
    "alarm_cancel": (frame.UP_ALARM_CANCEL, [_BIG]),
    "tamper": (frame.UP_TAMPER, [False]),
    "battery_low": (frame.UP_BATTERY_LOW, [65535]),
    "ack": (frame.DOWN_ACK, [_BIG, 4, _BIG]),
    "siren": (frame.DOWN_SIREN, [True, 3, _BIG]),
    "config_4_settings": (frame.DOWN_CONFIG, [{1: _BIG, 2: _BIG, 3: _BIG, 4: _BIG}]),
}


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def measure():
    """{name: total bytes}, each frame checked by the strict decoder."""
    k_up, k_down = frame.derive_keys(_KEY)
    sizes = {}
    for name, (code, body) in CASES.items():
        downlink = bool(code & frame.DOWNLINK_BIT)
        topic = frame.topic_for(code, _DEV)
        data = frame.encode(k_down if downlink else k_up, topic, code, _DEV, 255, _BIG, _BIG, body)
        decode = strict.decode_downlink if downlink else strict.decode_uplink
        decode(data, topic, lambda device_id, key_id: _KEY)
        sizes[name] = len(data)
    return sizes


def run(args):
    sizes = measure()
    for name, n in sizes.items():
        print("%-18s %3d bytes (body %d)" % (name, n, n - frame.HEADER_LEN - frame.MAC_LEN))
    frequent = ("alarm", "checkin_uid4", "checkin_uid7", "checkin_uid10", "heartbeat_worst")
    fits = all(sizes[k] <= LORA_PAYLOAD for k in frequent)
    print("alarm, checkin and heartbeat within %d bytes: %s" % (LORA_PAYLOAD, "yes" if fits else "NO"))
    if args.json:
        print(json.dumps({"bench": "frames", "unit": "bytes", "limit": LORA_PAYLOAD, "fits": fits,
                          "alarm": sizes["alarm"], "checkin_uid7": sizes["checkin_uid7"],
                          "heartbeat": sizes["heartbeat_worst"], "heartbeat_typical": sizes["heartbeat_typical"],
                          "sizes": sizes}))
    return 0 if fits else 1
