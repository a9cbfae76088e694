"""Patrol rounds as plain functions over values: which rounds are planned, and how each went.

A route is an ordered list of checkpoints, each with an expected time in minutes after the round
starts. A schedule gives the route's rounds: a local start time S, a start window, a maximum
duration and a grace per checkpoint. For a round:

- it *starts* with the first check-in at any of its checkpoints between S - grace and the latest
  start S + max(start window, max duration). The round's clock (anchor) is that check-in's time
  minus its checkpoint's expected offset, so a round begun at checkpoint 2 still times the others;
- checkpoint i is due at anchor + expected_i and counts when visited by anchor + expected_i + grace
  (its deadline); a visit after the deadline does not repair it (the checkpoint stays *missed*, the
  late visit is kept in `late_visit_at`). The round ends at anchor + max duration;
- status, in this priority: `not_started` (no check-in by the latest start), `missed` (a checkpoint
  not visited by its deadline), `running` (deadlines still ahead), `out_of_order` (all visited, not
  in route order), `late` (all visited in order, but started after the start window), `complete`.

Check-ins are placed by their `time` (the device's clock when it had one), so a round walked while
the network was down and delivered an hour later evaluates exactly like the same round delivered
live: `evaluate(spec, checkins)` depends only on the check-ins' times and places.

`evaluate(..., now=t)` is the live view at t: deadlines after t are `pending`, and a round whose
start window has passed without a check-in is `not_started` (final only at its latest start).
"""

import datetime

from gateway.village.config import DAYS


def local_midnight(date, utc_offset_s):
    """Unix time of 00:00 local on `date` (datetime.date)."""
    epoch = datetime.datetime(date.year, date.month, date.day, tzinfo=datetime.timezone.utc).timestamp()
    return epoch - utc_offset_s


def local_date(t, utc_offset_s):
    return datetime.datetime.fromtimestamp(t + utc_offset_s, tz=datetime.timezone.utc).date()


def local_hhmm(t, utc_offset_s):
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t + utc_offset_s, tz=datetime.timezone.utc).strftime("%H:%M:%S")


def planned_rounds(directory, date, village=None):
    """Round specs of every schedule on local `date` (optionally only one village's routes)."""
    offset = directory.settings["utc_offset_s"]
    midnight = local_midnight(date, offset)
    specs = []
    for s in sorted(directory.schedules.values(), key=lambda x: (x["route"], x["start"], x["id"])):
        route = directory.routes[s["route"]]
        if village and route["village"] != village:
            continue
        if DAYS[date.weekday()] not in s["days"]:
            continue
        hh, mm = map(int, s["start"].split(":"))
        start = midnight + hh * 3600 + mm * 60
        specs.append(round_spec(route, s, date, start))
    return specs


def round_spec(route, schedule, date, planned_start):
    grace = schedule["grace_min"] * 60
    window_end = planned_start + schedule["start_window_min"] * 60
    duration = schedule["max_duration_min"] * 60
    return {
        "key": "%s/%s/%s" % (schedule["id"], route["id"], date.isoformat()),
        "schedule": schedule["id"], "route": route["id"], "team": route["team"], "village": route["village"],
        "date": date.isoformat(), "planned_start": planned_start, "window_end": window_end,
        "earliest_start": planned_start - grace,
        "latest_start": planned_start + max(schedule["start_window_min"] * 60, duration),
        "checkpoints": list(route["checkpoints"]), "expected_s": [m * 60 for m in route["expected_min"]],
        "grace_s": grace, "max_duration_s": duration,
    }


def span(spec):
    """(first, last) instant a check-in of this round can have."""
    return spec["earliest_start"] - spec["max_duration_s"], spec["latest_start"] + spec["max_duration_s"]


def evaluate(spec, checkins, now=None):
    """Evaluate one round. `checkins`: dicts with at least place, time, card, event_id (any order).

    Returns a dict: status, final, started_at, anchor, ends_at, checkpoints (one dict each: place,
    expected_at, deadline, visited_at, late_visit_at, card, event_id, status), missed (places),
    out_of_order, late_start.
    """
    cps = spec["checkpoints"]
    offset_of = dict(zip(cps, spec["expected_s"]))
    ours = sorted((c for c in checkins if c["place"] in offset_of), key=lambda c: (c["time"], c["event_id"]))
    result = {"key": spec["key"], "schedule": spec["schedule"], "route": spec["route"], "team": spec["team"],
              "village": spec["village"], "date": spec["date"], "planned_start": spec["planned_start"],
              "started_at": None, "anchor": None, "ends_at": None, "late_start": False, "out_of_order": False,
              "missed": [], "checkpoints": [], "status": None, "final": True}
    starts = [c for c in ours if spec["earliest_start"] <= c["time"] <= spec["latest_start"]]
    if not starts:
        if now is not None and now < spec["window_end"]:
            result["status"], result["final"] = "pending", False
        else:
            result["status"] = "not_started"
            result["final"] = now is None or now >= spec["latest_start"]
        result["checkpoints"] = [{"place": p, "expected_at": None, "deadline": None, "visited_at": None,
                                  "late_visit_at": None, "card": None, "event_id": None, "status": result["status"]}
                                 for p in cps]
        return result
    first = starts[0]
    anchor = first["time"] - offset_of[first["place"]]
    ends = anchor + spec["max_duration_s"]
    result.update(started_at=first["time"], anchor=anchor, ends_at=ends, late_start=first["time"] > spec["window_end"])
    visits_order = []
    pending = False
    for place in cps:
        expected = anchor + offset_of[place]
        deadline = expected + spec["grace_s"]
        visits = [c for c in ours if c["place"] == place and anchor - spec["grace_s"] <= c["time"] <= ends]
        on_time = [c for c in visits if c["time"] <= deadline]
        late = [c for c in visits if c["time"] > deadline]
        entry = {"place": place, "expected_at": expected, "deadline": deadline, "visited_at": None,
                 "late_visit_at": late[0]["time"] if late else None, "card": None, "event_id": None}
        if on_time:
            v = on_time[0]
            entry.update(visited_at=v["time"], card=v["card"], event_id=v["event_id"], status="visited")
            visits_order.append((v["time"], v["event_id"], cps.index(place)))
        elif now is not None and now < deadline:
            entry["status"] = "pending"
            pending = True
        else:
            entry["status"] = "missed"
            result["missed"].append(place)
        result["checkpoints"].append(entry)
    order = [i for _, _, i in sorted(visits_order)]
    result["out_of_order"] = order != sorted(order)
    if result["missed"]:
        status = "missed"
    elif pending:
        status = "running"
    elif result["out_of_order"]:
        status = "out_of_order"
    elif result["late_start"]:
        status = "late"
    else:
        status = "complete"
    result["status"] = status
    result["final"] = now is None or now >= ends
    return result


def speed_flags(checkins, distance_m, max_speed_kmh):
    """{event_id: detail} for check-ins made by a card that got there faster than `max_speed_kmh`
    allows from its previous check-in (by time) at another place with a known distance."""
    flags = {}
    by_card = {}
    for c in checkins:
        by_card.setdefault(c["card"], []).append(c)
    limit_mps = max_speed_kmh / 3.6
    for card, items in by_card.items():
        items.sort(key=lambda c: (c["time"], c["event_id"]))
        for prev, cur in zip(items, items[1:]):
            if prev["place"] == cur["place"] or prev["place"] is None or cur["place"] is None:
                continue
            dist = distance_m(prev["place"], cur["place"])
            if dist is None:
                continue
            dt = cur["time"] - prev["time"]
            if dt <= 0 or dist / dt > limit_mps:
                flags[cur["event_id"]] = {"from": prev["place"], "from_event_id": prev["event_id"],
                                          "distance_m": round(dist), "seconds": round(dt, 3),
                                          "speed_kmh": None if dt <= 0 else round(dist / dt * 3.6, 1)}
    return flags
