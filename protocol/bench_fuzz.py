"""`fengqiao bench fuzz`: random and mutated frames through the strict decoder.

Only protocol.errors exceptions may come out; anything else is a bug: it is reported with a
reproducer (hex of the frame, topic, direction) and the exit status is 1. Prints counts by
outcome and by generator, and (with --json) one JSON object as the last line with cases,
seconds and cases/s. Cases come from protocol/fuzz.py; the same --seed gives the same cases.
"""

import collections
import json
import time
import traceback

from protocol import fuzz

HELP = "random and mutated frames vs the strict decoder: outcomes, cases/s, any crash"
MAX_REPORTED = 10


def add_arguments(parser):
    parser.add_argument("--cases", type=int, default=100_000, help="number of cases (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args):
    outcomes = collections.Counter()
    by_generator = collections.Counter()
    failures = []
    clock = time.perf_counter
    decoding = 0.0  # seconds inside the decoder alone (the rest is making the cases)
    start = clock()
    for i, (data, topic, downlink, generator) in enumerate(fuzz.cases(args.seed, args.cases)):
        by_generator[generator] += 1
        t0 = clock()
        try:
            outcomes[fuzz.run_case(data, topic, downlink)] += 1
        except Exception as exc:  # noqa: BLE001 - the point: anything that is not a FrameError is a bug
            outcomes["CRASH " + type(exc).__name__] += 1
            if len(failures) < MAX_REPORTED:
                failures.append({"case": i, "error": repr(exc), "frame": data.hex(), "topic": topic,
                                 "downlink": downlink, "traceback": traceback.format_exc()})
        decoding += clock() - t0
    seconds = clock() - start
    for f in failures:
        print("CRASH case %d: %s\n  frame %s\n  topic %r downlink %s\n%s" % (
            f["case"], f["error"], f["frame"], f["topic"], f["downlink"], f["traceback"]))
    for name, n in sorted(outcomes.items()):
        print("%-20s %d" % (name, n))
    rate = args.cases / seconds if seconds else 0.0
    decoder_rate = args.cases / decoding if decoding else 0.0
    print("%d cases in %.1f s (%.0f cases/s; decoder alone %.0f cases/s), seed %d, %d non-protocol exceptions" % (
        args.cases, seconds, rate, decoder_rate, args.seed, sum(n for k, n in outcomes.items() if k.startswith("CRASH"))))
    if args.json:
        print(json.dumps({"bench": "fuzz", "cases": args.cases, "seed": args.seed, "seconds": round(seconds, 3),
                          "cases_per_s": round(rate, 1),
                          "decoder_cases_per_s": round(decoder_rate, 1), "crashes": sum(n for k, n in outcomes.items() if k.startswith("CRASH")),
                          "outcomes": dict(sorted(outcomes.items())), "by_generator": dict(sorted(by_generator.items())),
                          "reproducers": [{k: f[k] for k in ("case", "error", "frame", "topic", "downlink")} for f in failures]}))
    return 1 if failures else 0
