"""`fengqiao report patrol | alarms`: daily patrol compliance and alarm step times.

    fengqiao report patrol [--date 2026-03-14] [--village vil-dongshan] [--out DIR] [--config gateway.toml]
        -> DIR/patrol-2026-03-14[-VILLAGE].csv (one row per round) and .html (readable, per route and
           team: rounds complete / late / out of order / missed / not started, compliance %, missed
           checkpoints, then every round with its checkpoints and flagged check-ins)
    fengqiao report alarms --from 2026-03-01 --to 2026-03-15 [--csv FILE] --config gateway.toml
        -> per-case seconds to dispatch / acknowledge / feedback / close, then a summary

Dates and times are local to the village (`utc_offset` of the village file); --to is exclusive;
`patrol` without --date reports today. Without --config/--db the gateway's config is found as
gateway.config.find_config says ($FENGQIAO_CONFIG, ./gateway.toml, /etc/fengqiao/gateway.toml).
"""

import csv
import html
import io
import json
import os

from tools.errors import CliError

HELP = "reports: patrol [--date D (default today)] [--village V]; alarms --from A --to B"


def add_arguments(parser):
    from gateway.village.cliutil import add_db_arguments

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("patrol", help="patrol rounds of one day: CSV + HTML")
    p.add_argument("--date", help="local date YYYY-MM-DD (default: today, in the village's time zone)")
    p.add_argument("--village", help="only this village's routes (place id)")
    p.add_argument("--out", default=".", help="directory for the CSV and HTML files (default: current)")
    add_db_arguments(p)
    p = sub.add_parser("alarms", help="alarm cases and their step times")
    p.add_argument("--from", dest="since", required=True, help="local date or date-time (inclusive)")
    p.add_argument("--to", dest="until", required=True, help="local date or date-time (exclusive)")
    p.add_argument("--csv", help="also write the per-case rows to this CSV file")
    p.add_argument("--json", action="store_true", help="print rows and summary as one JSON object")
    add_db_arguments(p)


def run(args):
    from gateway.clock import SystemClock
    from gateway.village.cliutil import db_path
    from gateway.village.db import NotConfigured, load_directory, open_db

    db = open_db(db_path(args))
    try:
        try:
            directory = load_directory(db)
        except NotConfigured as exc:
            raise CliError(str(exc)) from exc
        clock = SystemClock()
        if args.action == "patrol":
            return _patrol(db, clock, directory, args)
        return _alarms(db, clock, directory, args)
    finally:
        db.close()


def _patrol(db, clock, directory, args):
    from gateway.patrol.service import PatrolService
    from gateway.reports.build import patrol_report
    from gateway.village.cliutil import parse_date

    if args.date:
        date = parse_date(args.date)
    else:  # today where the village is
        import datetime

        tz = datetime.timezone(datetime.timedelta(seconds=directory.settings["utc_offset_s"]))
        date = datetime.datetime.fromtimestamp(clock.now(), tz=tz).date()
    if args.village and (args.village not in directory.places or directory.places[args.village]["kind"] != "village"):
        raise CliError("--village %r is not a village of this gateway (%s)" % (
            args.village, ", ".join(sorted(p for p, v in directory.places.items() if v["kind"] == "village"))))
    svc = PatrolService(db, clock)
    rows, summaries = patrol_report(svc, directory, date, args.village, now=clock.now())
    if not rows:
        # Nothing to report is not a failure (a day without rounds, or before today's first one).
        print("no patrol rounds on %s%s: nothing to report" % (date, " in " + args.village if args.village else ""))
        return 0
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "patrol-%s%s" % (date.isoformat(), "-" + args.village if args.village else ""))
    with open(stem + ".csv", "w", newline="", encoding="utf-8") as f:
        f.write(patrol_csv(rows))
    with open(stem + ".html", "w", encoding="utf-8") as f:
        f.write(patrol_html(rows, summaries, directory, date, args.village))
    for g in summaries:
        print("%s / %s: %d rounds, %d complete, %d late, %d out of order, %d missed, %d not started; "
              "compliance %.1f%%" % (g["route"], g["team"], g["rounds"], g["complete"], g["late"], g["out_of_order"],
                                     g["missed"], g["not_started"], g["compliance_pct"]))
    print("wrote %s.csv and %s.html" % (stem, stem))
    return 0


def patrol_csv(rows):
    from gateway.reports.build import PATROL_COLUMNS

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(PATROL_COLUMNS)
    for r in rows:
        w.writerow([r[c] for c in PATROL_COLUMNS])
    return out.getvalue()


def patrol_html(rows, summaries, directory, date, village):
    from gateway.patrol.rounds import local_hhmm

    offset = directory.settings["utc_offset_s"]
    e = html.escape
    name = directory.place_name
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Patrol report %s</title>" % e(str(date)),
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #999;padding:.3em .6em;text-align:left}.missed,.not_started{background:#fdd}"
             ".complete{background:#dfd}.late,.out_of_order{background:#ffd}</style></head><body>",
             "<h1>Patrol report, %s%s</h1>" % (e(str(date)), e(" - " + name(village)) if village else "")]
    for g in summaries:
        parts.append("<h2>%s &mdash; %s</h2>" % (e(g["route_name"] or g["route"]), e(g["team_name"])))
        parts.append("<table><tr><th>rounds</th><th>complete</th><th>late</th><th>out of order</th><th>missed</th>"
                     "<th>not started</th><th>compliance</th><th>checkpoints missed</th></tr>")
        missed = ", ".join("%s (%d)" % (name(p), n) for p, n in sorted(g["missed_checkpoints"].items())) or "none"
        parts.append("<tr><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%.1f %%</td>"
                     "<td>%s</td></tr></table>" % (g["rounds"], g["complete"], g["late"], g["out_of_order"], g["missed"],
                                                  g["not_started"], g["compliance_pct"], e(missed)))
        for r in rows:
            if (r["route"], r["team"]) != (g["route"], g["team"]):
                continue
            res = r["_result"]
            parts.append("<h3>Round %s (planned %s): <span class='%s'>%s</span></h3>" % (
                e(r["schedule"]), e(r["planned_start"]), e(r["status"]), e(r["status"].replace("_", " "))))
            parts.append("<table><tr><th>checkpoint</th><th>expected</th><th>deadline</th><th>visited</th>"
                         "<th>by</th><th>status</th></tr>")
            for c in res["checkpoints"]:
                who = directory.card_owner.get(c["card"], c["card"] or "") if c["card"] else ""
                who = directory.people[who]["name"] if who in directory.people else who
                late = " (late visit %s)" % local_hhmm(c["late_visit_at"], offset) if c["late_visit_at"] else ""
                parts.append("<tr class='%s'><td>%s</td><td>%s</td><td>%s</td><td>%s%s</td><td>%s</td><td>%s</td></tr>" % (
                    e(c["status"]), e(name(c["place"])), local_hhmm(c["expected_at"], offset),
                    local_hhmm(c["deadline"], offset), local_hhmm(c["visited_at"], offset), e(late), e(who),
                    e(c["status"])))
            parts.append("</table>")
            for f in r["_flags"]:
                parts.append("<p>Flagged check-in at %s %s by card %s: %s</p>" % (
                    e(name(f["place"])), local_hhmm(f["time"], offset), e(f["card"]), e(", ".join(sorted(f["flags"])))))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _alarms(db, clock, directory, args):
    from gateway.cases.service import CaseService
    from gateway.reports.build import ALARM_COLUMNS, STEP_COLUMNS, alarms_report
    from gateway.village.cliutil import parse_local

    offset = directory.settings["utc_offset_s"]
    since = parse_local(args.since, offset, "--from")
    until = parse_local(args.until, offset, "--to")
    if until <= since:
        raise CliError("--to must be after --from")
    svc = CaseService(db, clock)
    rows, summary = alarms_report(svc, since, until, offset)
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(ALARM_COLUMNS)
            for r in rows:
                w.writerow(["" if r[c] is None else r[c] for c in ALARM_COLUMNS])
    if args.json:
        print(json.dumps({"cases": rows, "summary": summary}, sort_keys=True))
        return 0
    print("%-5s %-19s %-9s %-3s %-8s %-10s %-12s %-9s %8s %8s %8s %8s" % (
        "case", "opened", "kind", "lvl", "device", "place", "status", "escalated", "dispatch", "ack", "feedback",
        "close"))
    for r in rows:
        print("%-5d %-19s %-9s %-3d %-8s %-10s %-12s %-9s %8s %8s %8s %8s" % (
            r["case"], r["opened"], r["kind"], r["level"], r["device"], r["place"], r["status"], r["escalated_to"],
            *[_secs(r[c]) for c in STEP_COLUMNS]))
    print("\n%d cases (%s); escalated to the township: %d, to the county: %d" % (
        summary["cases"], ", ".join("%s %d" % kv for kv in summary["by_status"].items()),
        summary["escalated_township"], summary["escalated_county"]))
    print("%-18s %6s %9s %9s %9s" % ("seconds to", "cases", "median", "p90", "max"))
    for c in STEP_COLUMNS:
        s = summary[c]
        print("%-18s %6d %9s %9s %9s" % (c[3:-2], s["count"], _secs(s["median"]), _secs(s["p90"]), _secs(s["max"])))
    return 0


def _secs(v):
    return "-" if v is None else ("%.1f" % v)
