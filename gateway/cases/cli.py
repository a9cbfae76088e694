"""`fengqiao case list | show | ack | dispatch | close`: the duty officer's actions on cases.

    fengqiao case list  --config gateway.toml [--status open|acknowledged|closed|cancelled|all]
    fengqiao case show  7 --config gateway.toml
    fengqiao case ack   7 --by p-chen-li [--note "on my way"] --config gateway.toml
    fengqiao case dispatch 7 --to p-wu-fang --by p-zhou-min [--note ...] --config gateway.toml
    fengqiao case close 7 --by p-chen-li --note "pan fire put out, nobody hurt" --config gateway.toml

The commands act on the gateway's database through the same CaseService the gateway uses. The
step is recorded at once; its effects (the signed upstream event, the button's light, sirens off)
are queued and the running gateway performs them on its next timer tick (about a second); `show`
says when some are still waiting (for instance while the gateway is stopped).
"""

import json

from tools.errors import CliError

HELP = "alarm cases: list, show, ack, dispatch, close (the five-step loop)"


def add_arguments(parser):
    from gateway.village.cliutil import add_db_arguments

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="cases, newest first")
    p.add_argument("--status", default="open", choices=("open", "acknowledged", "closed", "cancelled", "all"),
                   help="open = not yet closed or cancelled (default)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    add_db_arguments(p)
    p = sub.add_parser("show", help="one case with every step")
    p.add_argument("case_id", type=int)
    p.add_argument("--json", action="store_true")
    add_db_arguments(p)
    p = sub.add_parser("ack", help="a responder acknowledges: the button shows someone is coming")
    p.add_argument("case_id", type=int)
    p.add_argument("--by", required=True, help="person id of the responder")
    p.add_argument("--note", default="")
    add_db_arguments(p)
    p = sub.add_parser("dispatch", help="route the case to a person")
    p.add_argument("case_id", type=int)
    p.add_argument("--to", required=True, help="person id to send")
    p.add_argument("--by", required=True, help="person id of who dispatches")
    p.add_argument("--note", default="")
    add_db_arguments(p)
    p = sub.add_parser("close", help="close the case with a note")
    p.add_argument("case_id", type=int)
    p.add_argument("--by", required=True, help="person id")
    p.add_argument("--note", required=True, help="what happened and what was done")
    add_db_arguments(p)


def open_service(args):
    from gateway.cases.service import CaseService
    from gateway.clock import SystemClock
    from gateway.village.cliutil import db_path
    from gateway.village.db import open_db

    return CaseService(open_db(db_path(args)), SystemClock())


def run(args):
    from gateway.cases.service import CaseError

    svc = open_service(args)
    try:
        d = svc.directory()
        offset = d.settings["utc_offset_s"] if d else 0
        if args.action == "list":
            return _list(svc, args, offset)
        if args.action == "show":
            return _show(svc, args, offset)
        if args.action == "ack":
            svc.acknowledge(args.case_id, args.by, args.note)
            print("case %d acknowledged by %s; the button will show someone is coming" % (args.case_id, args.by))
        elif args.action == "dispatch":
            svc.dispatch(args.case_id, args.by, args.to, args.note)
            print("case %d dispatched to %s by %s" % (args.case_id, args.to, args.by))
        elif args.action == "close":
            svc.close(args.case_id, args.by, args.note)
            print("case %d closed by %s" % (args.case_id, args.by))
        return 0
    except CaseError as exc:
        raise CliError(str(exc)) from exc
    finally:
        svc.db.close()


def _list(svc, args, offset):
    from gateway.cases.severity import kind_name
    from gateway.village.cliutil import fmt_time

    status = None if args.status == "all" else args.status
    cases = svc.list_cases(status=status, limit=args.limit)
    if args.json:
        print(json.dumps(cases, sort_keys=True))
        return 0
    if not cases:
        print("no %s cases" % ("" if status is None else status))
        return 0
    print("%-5s %-12s %-19s %-9s %-3s %-10s %-12s %-9s %s" % ("case", "status", "opened", "kind", "lvl", "device",
                                                             "place", "escalated", "acknowledged by"))
    for c in cases:
        print("%-5d %-12s %-19s %-9s %-3d %-10s %-12s %-9s %s" % (
            c["case_id"], c["status"], fmt_time(c["opened_at"], offset), kind_name(c["kind"]), c["level"],
            "%08x" % c["device_id"], c["place_id"] or "-", c["escalated_to"], c["acknowledged_by"] or "-"))
    return 0


def _show(svc, args, offset):
    from gateway.cases.severity import kind_name
    from gateway.village.cliutil import fmt_time

    c = svc.get(args.case_id)
    if args.json:
        print(json.dumps(c, sort_keys=True))
        return 0
    print("case %d: %s %s alarm, level %d, %s" % (c["case_id"], c["status"], kind_name(c["kind"]), c["level"],
                                                 c["place_id"] or "unknown place"))
    print("  button %08x seq %s, group %s, village %s, first responder %s" % (
        c["device_id"], c["alarm_seq"], c["group_id"] or "-", c["village_id"] or "-", c["first_responder"] or "-"))
    print("  escalated to %s; deadlines: village %s, township %s" % (
        c["escalated_to"], fmt_time(c["village_deadline"], offset), fmt_time(c["township_deadline"], offset)))
    if c["close_note"]:
        print("  note: %s" % c["close_note"])
    print("  steps:")
    for s in c["steps"]:
        detail = ", ".join("%s=%s" % (k, v) for k, v in sorted(s["detail"].items()) if v not in (None, "", []))
        print("    %s  %-14s %-14s %s" % (fmt_time(s["at"], offset), s["step"], s["actor"], detail))
    if c["sirens"]:
        print("  sirens: %s" % ", ".join("%08x%s" % (s["device_id"], " (off)" if s["off_at"] else "")
                                         for s in c["sirens"]))
    if c["pending_effects"]:
        print("  %d effect(s) waiting for the gateway (it sends them within a second while running)"
              % c["pending_effects"])
    return 0
