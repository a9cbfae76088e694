"""What the console's pages show, as plain values (dicts and lists): no HTML, no HTTP.

    v = Views(cases, patrol, list_devices, supervisor, clock, held)   # list_devices: registry.devices (no keys);
                           # held: () -> ids of the devices quarantined for flooding (service.held)
    v.board()              # open cases: unacknowledged first, then level (5 first), then oldest first
    v.board(after=N)       # the same, only cases opened after case N (what the page fetches on case_opened)
    v.case(case_id)        # one case with its timeline of steps and the people one can dispatch to
    v.devices(filters)     # every registered device with online/offline, last seen, battery, tamper, quarantined
    v.patrol_today(village)
    v.history(filters)     # cases in a local date range with response time per step

Each call reads the case/patrol tables through the services (their own lock and connection) and
the in-memory state of supervision; it is run off the web server's event loop (a thread).
"""

import datetime
import statistics

from gateway.cases.severity import kind_name
from gateway.patrol.rounds import local_date

STEP_ORDER = ("received", "dispatched", "acknowledged", "feedback", "closed")


class Views:
    def __init__(self, cases, patrol, list_devices, supervisor, clock, held=None):
        self.cases = cases
        # The flood guard's cut-off (gateway/quarantine.py): a quarantined device is a device fault
        # the duty officer must see on the device page, not only as a line in the live feed.
        self.held = held
        self.patrol = patrol
        self.list_devices = list_devices      # the registry's device list only: the console holds no key
        self.supervisor = supervisor
        self.clock = clock

    def directory(self):
        return self.cases.directory()

    def offset(self):
        d = self.directory()
        return d.settings["utc_offset_s"] if d else 0

    # -- names ---------------------------------------------------------------------------------

    @staticmethod
    def _place(d, place_id):
        return d.place_name(place_id) if d and place_id else (place_id or "")

    @staticmethod
    def _person(d, person_id):
        if d and person_id in d.people:
            return d.people[person_id]["name"]
        return person_id or ""

    def _row(self, d, c):
        village = c["village_id"] or (d.above(c["place_id"], "village") if d and c["place_id"] else None)
        if c["status"] == "open":
            deadline = {"village": c["village_deadline"], "township": c["township_deadline"]}.get(c["escalated_to"])
        else:
            deadline = None
        step = "feedback" if c["feedback_at"] else ("acknowledged" if c["acknowledged_at"] else
                                                   ("dispatched" if c["dispatched_at"] else "received"))
        if c["status"] in ("closed", "cancelled"):
            step = c["status"]
        level_name = (d.levels.get(c["level"], {}).get("name") if d else None) or str(c["level"])
        return {
            "case_id": c["case_id"], "status": c["status"], "kind": kind_name(c["kind"]), "level": c["level"],
            "level_name": level_name, "device": "%08x" % c["device_id"], "place_id": c["place_id"],
            "place": self._place(d, c["place_id"]), "village_id": village, "village": self._place(d, village),
            "opened_at": c["opened_at"], "step": step, "deadline": deadline, "escalated_to": c["escalated_to"],
            "turn": c["escalated_to"], "acknowledged_by": self._person(d, c["acknowledged_by"]),
            "assigned_to": self._person(d, c["assigned_to"]), "closed_at": c["closed_at"],
            "closed_by": self._person(d, c["closed_by"]), "close_note": c["close_note"] or "",
        }

    # -- pages -----------------------------------------------------------------------------------

    def board(self, after=None):
        """The open cases in board order; after: only those with a case id above it (new ones).

        static/console.js mirrors this order (boardKey) to place a new row without a full refetch."""
        d = self.directory()
        rows = [self._row(d, c) for c in self.cases.list_cases(status="open", limit=1000, after_id=after)]
        rows.sort(key=lambda r: (r["status"] != "open", -r["level"], r["opened_at"], r["case_id"]))
        return rows

    def case(self, case_id):
        d = self.directory()
        c = self.cases.get(case_id)
        row = self._row(d, c)
        steps = []
        for s in c["steps"]:
            detail = dict(s["detail"])
            steps.append({"step": s["step"], "at": s["at"], "actor": s["actor"],
                          "actor_name": self._person(d, s["actor"]), "note": detail.pop("note", "") or "",
                          "outcome": detail.pop("outcome", None),
                          "to": self._person(d, detail.pop("to", None)) if "to" in detail else "",
                          "detail": {k: v for k, v in sorted(detail.items()) if v not in (None, "", [], {})}})
        done = {s["step"] for s in steps}
        row.update(steps=steps, loop=[(name, name in done) for name in STEP_ORDER],
                   inputs=[{"device": "%08x" % i["device_id"], "kind": i["kind"], "role": i["role"],
                            "received_at": i["received_at"]} for i in c["inputs"]],
                   pending_effects=c["pending_effects"],
                   group=(d.groups.get(c["group_id"], {}).get("name") if d and c["group_id"] else "") or "",
                   first_responder=self._person(d, c["first_responder"]))
        return row

    def people(self):
        d = self.directory()
        if not d:
            return []
        return [{"id": pid, "name": p["name"], "role": p["role"], "team": p["team"]}
                for pid, p in sorted(d.people.items())]

    def teams(self):
        """The village file's teams with their members' ids (a dispatch may go to a whole team)."""
        d = self.directory()
        if not d:
            return []
        return [{"id": tid, "name": t["name"] or tid,
                 "members": [pid for pid, p in sorted(d.people.items()) if p["team"] == tid]}
                for tid, t in sorted(d.teams.items())]

    def devices(self, village=None, grid=None, state=None, role=None):
        d = self.directory()
        sup = self.supervisor
        held = self.held() if self.held is not None else set()
        out = []
        for dev in self.list_devices():
            place = dev.place_id or (d.device_place(dev.device_id) if d else None)
            vil = d.above(place, "village") if d and place else None
            grd = d.above(place, "grid") if d and place else None
            offline = sup is not None and dev.device_id in sup.offline
            row = {"device": dev.text_id, "role": dev.role, "status": dev.status, "place_id": place,
                   "place": self._place(d, place), "village_id": vil, "village": self._place(d, vil),
                   "grid_id": grd, "grid": self._place(d, grd),
                   "online": dev.status == "active" and not offline, "offline": offline,
                   "revoked": dev.status != "active",
                   "battery_low": sup is not None and dev.device_id in sup.battery_low,
                   "tamper": sup is not None and dev.device_id in sup.tamper_open,
                   "quarantined": dev.device_id in held,
                   "last_seen": sup.last_seen.get(dev.device_id) if sup is not None else None}
            if village and vil != village or grid and grd != grid or role and dev.role != role:
                continue
            if state and not row.get(state):
                continue
            out.append(row)
        out.sort(key=lambda r: (not r["offline"], not (r["tamper"] or r["battery_low"] or r["quarantined"]), r["revoked"],
                                r["device"]))
        return out

    def areas(self):
        """Villages and grids for the filters: [(id, name, kind)]."""
        d = self.directory()
        if not d:
            return []
        return sorted(((pid, p["name"], p["kind"]) for pid, p in d.places.items() if p["kind"] in ("village", "grid")),
                      key=lambda x: (x[2] != "village", x[0]))

    def patrol_today(self, village=None, date=None):
        from gateway.reports.build import patrol_report

        d = self.directory()
        if d is None or self.patrol is None:
            return None, [], []
        date = date or local_date(self.clock.now(), d.settings["utc_offset_s"])
        rows, summaries = patrol_report(self.patrol, d, date, village, now=self.clock.now())
        out = []
        for r in rows:
            res = r["_result"]
            out.append({
                "route": d.routes[r["route"]]["name"] or r["route"], "team": d.teams.get(r["team"], {}).get("name", r["team"]),
                "schedule": r["schedule"], "planned_start": r["planned_start"], "started_at": r["started_at"],
                "status": r["status"], "checkpoints": r["checkpoints"], "visited": r["visited"],
                "points": [{"place": self._place(d, c["place"]), "status": c["status"], "visited_at": c["visited_at"],
                            "deadline": c["deadline"], "late_visit_at": c["late_visit_at"]} for c in res["checkpoints"]],
                "flags": [{"place": self._place(d, f["place"]), "time": f["time"], "card": f["card"],
                           "who": self._person(d, d.card_owner.get(f["card"])), "flags": sorted(f["flags"])}
                          for f in r["_flags"]],
            })
        return date, out, summaries

    def history(self, since_date, until_date, village=None, level=None, outcome=None, status=None):
        """Cases stored in [since_date, until_date] (local dates, both inclusive) and step times."""
        d = self.directory()
        off = self.offset()
        t0 = _midnight(since_date, off)
        t1 = _midnight(until_date + datetime.timedelta(days=1), off)
        rows = []
        for c in self.cases.list_cases(status=None, since=t0, until=t1, limit=5000):
            r = self._row(d, c)
            if village and r["village_id"] != village or level and r["level"] != level:
                continue
            if status and c["status"] != status:
                continue
            got = self.cases.get(c["case_id"])
            closed = [s for s in got["steps"] if s["step"] == "closed"]
            r["outcome"] = closed[-1]["detail"].get("outcome") if closed else None
            if outcome and r["outcome"] != outcome:
                continue
            r["times"] = {k: (None if c[k] is None else round(c[k] - c["opened_at"], 1))
                          for k in ("dispatched_at", "acknowledged_at", "feedback_at", "closed_at")}
            rows.append(r)
        summary = {}
        for k in ("dispatched_at", "acknowledged_at", "feedback_at", "closed_at"):
            vals = sorted(r["times"][k] for r in rows if r["times"][k] is not None)
            summary[k] = {"count": len(vals), "median": round(statistics.median(vals), 1) if vals else None,
                          "max": vals[-1] if vals else None}
        return rows, summary


def _midnight(date, offset):
    return datetime.datetime(date.year, date.month, date.day, tzinfo=datetime.timezone.utc).timestamp() - offset
