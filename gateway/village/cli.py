"""`fengqiao registry import FILE`: load places, joint-defence groups, people, routes, schedules,
severity rules and device placements from a TOML file into the gateway's database.

    fengqiao registry import gateway/sample_village.toml --config gateway.toml
    fengqiao registry import village.toml --db var/gateway/gateway.db [--check]

The file is validated whole first; any error refuses it whole (every error is printed as
FILE:LINE: field: problem) and nothing is written. With --config the places are also written to
the gateway's registry (G-core's `Registry.add_place`) and devices that are already registered
get the place the file gives them; devices not registered yet are kept as planned placements
and take effect when `fengqiao gateway device add` registers them. --check only validates.
"""

import os

from tools.errors import CliError

HELP = "import the village configuration (places, groups, people, routes, schedules, severity) from TOML"

_ORDER = ("county", "township", "village", "grid", "household", "checkpoint")


def add_arguments(parser):
    from gateway.village.cliutil import add_db_arguments

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("import", help="validate and import a village TOML file (all or nothing)")
    p.add_argument("file", help="the TOML file (see gateway/sample_village.toml)")
    p.add_argument("--check", action="store_true", help="only validate; write nothing")
    add_db_arguments(p)


def run(args):
    from gateway.village.config import ConfigInvalid, parse_village

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError("cannot read %s: %s" % (args.file, exc)) from exc
    try:
        data = parse_village(text, os.path.basename(args.file))
    except ConfigInvalid as exc:
        raise CliError("%s refused, nothing imported:\n  %s" % (args.file, "\n  ".join(exc.errors))) from exc
    summary = "%d places, %d groups, %d people, %d routes, %d schedules, %d severity rules, %d devices" % (
        len(data["places"]), len(data["groups"]), len(data["people"]), len(data["routes"]), len(data["schedules"]),
        len(data["severity_rules"]), len(data["devices"]))
    if args.check:
        print("%s is valid: %s" % (args.file, summary))
        return 0
    return do_import(args, data, summary)


def do_import(args, data, summary):
    import time

    from gateway.village.cliutil import db_path, open_registry
    from gateway.village.db import import_village, open_db

    path = db_path(args, must_exist=False)
    registry = open_registry(args)
    try:
        notes = sync_registry(registry, data) if registry else ["registry not updated (give --config to do it)"]
        db = open_db(path)
        try:
            import_id = import_village(db, data, os.path.abspath(args.file), time.time())
        finally:
            db.close()
    finally:
        if registry:
            registry.close()
    print("imported %s into %s (import #%d): %s" % (args.file, path, import_id, summary))
    for n in notes:
        print("  " + n)
    return 0


def sync_registry(registry, data):
    """Write places to G-core's registry and move registered devices to their places.

    Checked first (a registered device with another role refuses the import before any write),
    then applied; add_place is an upsert, so re-running an import is harmless."""
    from gateway.registry import RegistryError

    problems = []
    moves, planned = [], []
    for d in data["devices"]:
        dev = registry.device(d["id"])
        if dev is None:
            planned.append(d["id"])
        elif dev.role != d["role"]:
            problems.append("device %08x is registered as %s, the file says %s" % (d["id"], dev.role, d["role"]))
        elif dev.place_id != d["place"]:
            moves.append(d)
    if problems:
        raise CliError("refused, nothing imported:\n  " + "\n  ".join(problems))
    try:
        for p in sorted(data["places"], key=lambda p: _ORDER.index(p["kind"])):
            registry.add_place(p["id"], p["kind"], p["name"] or p["id"], p["parent"])
        for d in moves:
            registry.set_device_place(d["id"], d["place"])
    except RegistryError as exc:
        raise CliError("the registry refused a place or device (%s); the village tables were not changed" % exc) from exc
    notes = ["registry: %d places written, %d devices moved to their places" % (len(data["places"]), len(moves))]
    if planned:
        notes.append("not registered yet (placement kept until `fengqiao gateway device add`): %s"
                     % ", ".join("%08x" % x for x in planned))
    return notes
