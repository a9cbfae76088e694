"""The `fengqiao` command line: one command table, one error type.

Each command lives in its own module, imported only when that command runs (so a technician's
laptop without the gateway's dependencies can still flash and provision). Each has a line in
COMMANDS: its module, and what `fengqiao --help` says of it. A command module provides:

    HELP = "one line shown at the top of `fengqiao NAME --help`"
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

# name -> (module that implements it, what `fengqiao --help` says of it). Keep sorted by what a
# user does first.
COMMANDS = {
    "demo": ("tools.demo", "a whole simulated village and its alarm and patrol story (Ctrl-C stops it)"),
    "hostboard": ("tools.hostboard_cli", "a board without hardware: hostboard start --role alarm|checkin "
                  "(prints its pty); press | hold | tap | status | stop"),
    "flash": ("tools.flash", "copy the firmware onto a board (USB serial, or --board host)"),
    "provision": ("tools.provision", "write identity, key and settings over the serial console"),
    "deploy": ("tools.deploy", "a plan of boards: identify, key, register, self-test, label"),
    "device": ("gateway.device_cli", "device list | show | revoke | replace | rotate-key | check | import-enrolment"),
    "simulate": ("tools.simulate", "run host boards (the simulated village)"),
    "gateway": ("gateway.cli", "gateway init | run | pubkey | backup | device add | revoke | rotate | list"),
    "registry": ("gateway.village.cli", "registry import FILE (places, groups, people, routes)"),
    "case": ("gateway.cases.cli", "case list | show | ack | dispatch | close"),
    "console": ("gateway.console.cli", "the duty console: user add | passwd | disable; screenshots"),
    "report": ("gateway.reports.cli", "report patrol (today by default) | alarms"),
    "verify": ("gateway.verify_cli", "offline check of upstream envelopes"),
    "bench": ("tools.bench", "measurements: bench frames | fuzz | firmware | gateway | outbox | ..."),
}

DESCRIPTION = ("Fengqiao: village alarm buttons, patrol check-in points and the township gateway. "
               "No hardware needed to try it: `fengqiao demo`, or a host board with "
               "`fengqiao hostboard start --role alarm` (README.md: a first deployment, on one desk).")
EPILOG = "`fengqiao COMMAND --help` lists a command's actions and options."


def _load(name):
    try:
        return importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if exc.name and COMMANDS[name][0].startswith(exc.name):
            raise CliError("command %r is not available in this build (%s)" % (name, exc)) from exc
        raise


def build_parser(argv):
    parser = argparse.ArgumentParser(prog="fengqiao", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (_module, summary) in COMMANDS.items():
        if name == wanted:
            module = _load(name)
            p = sub.add_parser(name, help=summary, description=getattr(module, "HELP", None))
            module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            # Not imported unless chosen, so one broken optional part cannot break the others.
            sub.add_parser(name, help=summary, add_help=False)
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
