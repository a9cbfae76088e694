# Mutated frames through the device codec ON MICROPYTHON (64 KB heap); also runs on CPython.
# Usage: micropython -X heapsize=64k protocol/tests/mpy_fuzz.py protocol/vectors SEED N
# Seeds are the valid frame vectors; each case mutates one (bytes changed, inserted, deleted,
# cut), and re-signs half of them so the body parser and schema checks are reached.
# Prints "CASE <frame hex> <topic> <0|1 downlink> <outcome>" per case (outcome: "ok", the
# FrameError name, or "CRASH:<type>"), then "SUMMARY cases=<n> crashes=<n>". The CPython test
# replays every case through the strict decoder and expects the same outcome.
import json
import random
import sys
from binascii import hexlify, unhexlify

from protocol import frame
from protocol.errors import FrameError


def load(folder):
    seeds = []
    with open(folder + "/frames_valid.txt") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            v = json.loads(line)
            k_up, k_down = frame.derive_keys(unhexlify(v["device_key"]))
            down = v["receiver"] == "device"
            seeds.append((unhexlify(v["frame"]), v["topic"], down, k_down if down else k_up))
    return seeds


def mutate(b):
    b = bytearray(b)
    for _ in range(random.randint(1, 3)):
        op = random.randrange(4)
        i = random.randrange(len(b) + 1)
        if op == 0 and i < len(b):
            b[i] = random.getrandbits(8)
        elif op == 1:
            b = b[:i] + bytes([random.getrandbits(8)]) + b[i:]
        elif op == 2:
            b = b[:i] + b[i + 1 :]
        else:
            b = b[: i + 15]
    return bytes(b)


def main(folder, seed, n):
    random.seed(seed)
    seeds = load(folder)
    crashes = 0
    for _ in range(n):
        data, topic, down, k = random.choice(seeds)
        data = mutate(data)
        if random.getrandbits(1) and len(data) > 31:
            data = frame.sign(k, topic, data[:-16])
        try:
            frame.decode(k, topic, data, down)
            outcome = "ok"
        except FrameError as e:
            outcome = type(e).__name__
        except Exception as e:  # the finding this script exists for: report, do not hide
            outcome = "CRASH:" + type(e).__name__
            crashes += 1
        print("CASE %s %s %d %s" % (hexlify(data).decode(), topic, down, outcome))
    print("SUMMARY cases=%d crashes=%d" % (n, crashes))


main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
