"""Report contents as plain values (rows and summaries); cli.py writes them as CSV, HTML or text.

Patrol (one local date): one row per planned round (route, team, schedule) with its status and
checkpoints; a summary per route and team with rounds by status, checkpoints missed and
compliance = checkpoint visits made within their window / visits planned, in percent, over the
rounds that are over (a round not started counts all its checkpoints as missed; a round still
running or not yet due is listed but not counted).

Alarms (a local time range, by the time the alarm was stored): one row per case with the seconds
from the alarm to each step (dispatch, acknowledgement, feedback on the button, close or cancel)
and a summary per step: count, median, 90th percentile and maximum.
"""

import statistics

from gateway.cases.severity import kind_name
from gateway.patrol.rounds import local_hhmm

PATROL_COLUMNS = ("date", "village", "route", "team", "schedule", "planned_start", "started_at", "status",
                  "checkpoints", "visited", "missed_checkpoints", "out_of_order", "late_start", "flagged_checkins")
ROUND_STATUSES = ("complete", "late", "out_of_order", "missed", "not_started", "running", "pending")


def patrol_report(patrol_service, directory, date, village=None, now=None):
    offset = directory.settings["utc_offset_s"]
    rows, groups = [], {}
    for spec, result in patrol_service.evaluate_date(date, village, now):
        first, last = (result["anchor"] or spec["planned_start"]), (result["ends_at"] or spec["latest_start"])
        used = [c for c in patrol_service.checkins_between(first - spec["grace_s"], last)
                if c["place"] in spec["checkpoints"] and c["flags"]]
        visited = sum(1 for c in result["checkpoints"] if c["status"] == "visited")
        missed = [c["place"] for c in result["checkpoints"] if c["status"] in ("missed", "not_started")]
        rows.append({
            "date": spec["date"], "village": spec["village"], "route": spec["route"], "team": spec["team"],
            "schedule": spec["schedule"], "planned_start": local_hhmm(spec["planned_start"], offset)[:5],
            "started_at": local_hhmm(result["started_at"], offset), "status": result["status"],
            "checkpoints": len(spec["checkpoints"]), "visited": visited,
            "missed_checkpoints": " ".join(missed), "out_of_order": "yes" if result["out_of_order"] else "",
            "late_start": "yes" if result["late_start"] else "", "flagged_checkins": len(used),
            "_result": result, "_flags": used,
        })
        g = groups.setdefault((spec["route"], spec["team"]), {
            "route": spec["route"], "route_name": directory.routes[spec["route"]]["name"], "team": spec["team"],
            "team_name": directory.teams.get(spec["team"], {}).get("name", spec["team"]), "village": spec["village"],
            "rounds": 0, "planned_visits": 0, "visits": 0, "missed_checkpoints": {}, **{s: 0 for s in ROUND_STATUSES}})
        g["rounds"] += 1
        g[result["status"]] += 1
        if result["final"]:  # a round still running or not yet due is not counted in compliance
            g["planned_visits"] += len(spec["checkpoints"])
            g["visits"] += visited
        for place in missed:
            g["missed_checkpoints"][place] = g["missed_checkpoints"].get(place, 0) + 1
    summaries = []
    for g in groups.values():
        g["compliance_pct"] = round(100.0 * g["visits"] / g["planned_visits"], 1) if g["planned_visits"] else 0.0
        summaries.append(g)
    return rows, summaries


STEP_COLUMNS = ("to_dispatch_s", "to_acknowledge_s", "to_feedback_s", "to_close_s")
ALARM_COLUMNS = ("case", "opened", "kind", "level", "device", "place", "status", "escalated_to",
                 "acknowledged_by", "closed_by") + STEP_COLUMNS


def alarms_report(case_service, since, until, utc_offset_s=0):
    from gateway.village.cliutil import fmt_time

    rows = []
    for c in sorted(case_service.list_cases(status=None, since=since, until=until, limit=1_000_000),
                    key=lambda c: c["case_id"]):
        t0 = c["opened_at"]

        def after(t):
            return None if t is None else round(t - t0, 3)

        rows.append({
            "case": c["case_id"], "opened": fmt_time(t0, utc_offset_s), "kind": kind_name(c["kind"]),
            "level": c["level"], "device": "%08x" % c["device_id"], "place": c["place_id"] or "",
            "status": c["status"], "escalated_to": c["escalated_to"], "acknowledged_by": c["acknowledged_by"] or "",
            "closed_by": c["closed_by"] or "",
            "to_dispatch_s": after(c["dispatched_at"]), "to_acknowledge_s": after(c["acknowledged_at"]),
            "to_feedback_s": after(c["feedback_at"]), "to_close_s": after(c["closed_at"]),
        })
    summary = {}
    for col in STEP_COLUMNS:
        values = sorted(r[col] for r in rows if r[col] is not None)
        summary[col] = {"count": len(values), "median": _q(values, 0.5), "p90": _q(values, 0.9),
                        "max": values[-1] if values else None}
    summary["cases"] = len(rows)
    summary["by_status"] = {s: sum(1 for r in rows if r["status"] == s)
                            for s in ("open", "acknowledged", "closed", "cancelled")}
    summary["escalated_township"] = sum(1 for r in rows if r["escalated_to"] in ("township", "county"))
    summary["escalated_county"] = sum(1 for r in rows if r["escalated_to"] == "county")
    return rows, summary


def _q(values, q):
    """Nearest-rank quantile (a value that occurred), None for no values."""
    if not values:
        return None
    if q == 0.5:
        return round(statistics.median(values), 3)
    rank = max(1, int(-(-q * len(values) // 1)))
    return values[min(rank, len(values)) - 1]
