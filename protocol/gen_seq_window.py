"""Generate protocol/vectors/seq_window.txt: vectors of the gateway's sequence rule (SPEC section 4).

    python -m protocol.gen_seq_window            # (re)write the file
    python -m protocol.gen_seq_window --check    # exit 1 if the file differs from what this makes

Each vector is a sequence of (device, key id) uplink numbers, all with valid MACs, arriving in that
order, and the outcome SPEC section 4 gives each: "new", "duplicate" or "Replay". The outcomes come
from the rule as written, over a plain set of stored numbers (no bitmap), so they check the
gateway's bitmap window (gateway/pipeline.py) independently.
"""

import json
import os
import sys

W = 256
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "seq_window.txt")

HEADER = """\
# Fengqiao protocol v1 test vectors: the gateway's sequence rule with its anti-replay window
# Generator: protocol/gen_seq_window.py (the rule of SPEC section 4 over a set of stored numbers,
#   independent of the bitmap in gateway/pipeline.py). Deterministic.
# Each line: {"name", "arrivals": [seq, ...] in arrival order (one device and key id, valid MACs),
#   "outcomes": ["new" | "duplicate" | "Replay", ...] one per arrival}. W = 256.
"""


def outcomes(arrivals):
    stored, top, out = set(), 0, []
    for seq in arrivals:
        if seq in stored:
            out.append("duplicate")
        elif seq > top or seq > top - W:
            out.append("new")
            stored.add(seq)
            top = max(top, seq)
        else:
            out.append("Replay")
    return out


CASES = [
    ("in order", [1, 2, 3]),
    ("gap then the skipped numbers arrive late", [1, 5, 2, 3, 4]),
    ("issue 14: 1-5 acked, 6-10 lost by the broker, 11 stored, 6-10 resent", list(range(1, 6)) + [11] + list(range(6, 12))),
    ("duplicates of the highest and of a late one", [10, 10, 7, 7]),
    ("window edge: H - W + 1 is inside, H - W is outside", [1, 1 + W + 10, 11 + 1, 11, 1]),
    ("a jump larger than the window", [3, 3 + 5 * W, 4, 3, 5 * W + 3 - W + 1]),
    ("first frame of a device may be any number", [4000, 3999, 3745, 3744]),
]


def render():
    lines = [HEADER]
    for name, arrivals in CASES:
        lines.append(json.dumps({"name": name, "arrivals": arrivals, "outcomes": outcomes(arrivals)}) + "\n")
    return "".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        with open(PATH, encoding="utf-8") as f:
            same = f.read() == text
        print("%s: %s" % (PATH, "up to date" if same else "DIFFERS from the generator"))
        return 0 if same else 1
    with open(PATH, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote %s (%d vectors)" % (PATH, len(CASES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
