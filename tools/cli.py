"""The `fengqiao` command line: one command table, one error type.

Each command lives in its own module, imported only when that command runs (so a technician's
laptop without the gateway's dependencies can still flash and provision). A command module
provides:

    HELP = "one line shown in `fengqiao --help`"
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int | None

A command reports a failure the user can act on by raising `CliError("what went wrong and what to
do")`: it is printed to stderr as `fengqiao: ...` and the exit status is 1. Anything else that
escapes is a bug and keeps its traceback.
"""

import argparse
import importlib
import sys

from tools.errors import CliError

# name -> module that implements it. Keep sorted by what a user does first.
COMMANDS = {
    "demo": "tools.demo",              # broker + gateway + simulated village + duty view
    "hostboard": "tools.hostboard_cli",  # a host board on a pty: start | press | hold | tap | status | stop
    "flash": "tools.flash",            # copy the firmware onto a board over USB serial
    "provision": "tools.provision",    # write identity, key and settings over the serial console
    "deploy": "tools.deploy",          # a plan of boards: identify, key, register, self-test, label
    "device": "gateway.device_cli",    # device list | show | revoke | replace | rotate-key | check | import-enrolment
    "simulate": "tools.simulate",      # run host boards (the simulated village)
    "gateway": "gateway.cli",          # gateway run --config FILE, device add/revoke
    "registry": "gateway.village.cli",  # registry import FILE (places, groups, people, routes)
    "case": "gateway.cases.cli",       # case list | show | ack | dispatch | close
    "console": "gateway.console.cli",  # duty console: user add | passwd | disable; screenshots
    "report": "gateway.reports.cli",   # report patrol | alarms
    "verify": "gateway.verify_cli",    # offline check of upstream envelopes
    "bench": "tools.bench",            # bench frames | fuzz | firmware | gateway | outbox
}


def _load(name):
    try:
        return importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name and COMMANDS[name].startswith(exc.name):
            raise CliError("command %r is not available in this build (%s)" % (name, exc)) from exc
        raise


def build_parser(argv):
    parser = argparse.ArgumentParser(prog="fengqiao", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name in COMMANDS:
        if name == wanted:
            module = _load(name)
            p = sub.add_parser(name, help=getattr(module, "HELP", None))
            module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            # Not imported unless chosen, so one broken optional part cannot break the others.
            sub.add_parser(name, help="(run `fengqiao %s --help`)" % name, add_help=False)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not getattr(args, "_module", None):
            parser.print_help()
            return 2
        return args._module.run(args) or 0
    except CliError as exc:
        print("fengqiao: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fengqiao: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`fengqiao case show 1 | head -3`): stop quietly, as a Unix tool does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
