"""`fengqiao bench KIND`: benchmarks that print figures (the last line is one JSON object).

Each kind is a module with add_arguments(parser) and run(args), like a top-level command.
"""

import importlib

from tools.errors import CliError

HELP = "measure sizes, rates, latencies and memory; last line is one JSON object"

KINDS = {
    "frames": "protocol.bench_frames",      # encoded size of alarm / checkin / heartbeat frames
    "fuzz": "protocol.bench_fuzz",          # random and mutated frames vs the strict decoder
    "firmware": "tools.bench_firmware",     # heap used and GC high-water mark per role
    "outbox": "tools.bench_outbox",         # kill -9 at random points, nothing acked lost
    "gateway": "gateway.bench",             # events/s, ratio to bare paho, p50/p99 latency
    "flood": "tools.bench_flood",           # victim alarm latency under a flood; time to quarantine
    "cases": "gateway.cases.bench",         # alarm press to neighbours' sirens (dispatch within 1 s)
    "console": "gateway.console.bench",     # store -> visible in the browser; gateway rate with 20 sessions
    "deploy": "tools.testing.deploy_rig",  # seconds per board of `fengqiao deploy` over host boards on ptys
    "memfault": "tools.bench_memfault",     # injected MemoryErrors during sends: nothing acked lost, no seq reused
    "e2e": "tools.bench_e2e",               # press -> stored / county / sirens, idle and under load
    "scale": "tools.bench_scale",           # thousands of devices' heartbeats, offline detection, gateway CPU/RSS
    "storm": "tools.bench_storm",           # the township's power back: every device reconnects with a backlog
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name, modname in KINDS.items():
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue  # not built yet in this checkout
            raise
        p = sub.add_parser(name, help=getattr(module, "HELP", None))
        module.add_arguments(p)
        p.set_defaults(_bench=module)


def run(args):
    if not getattr(args, "_bench", None):
        raise CliError("unknown benchmark %r" % args.kind)
    return args._bench.run(args)
