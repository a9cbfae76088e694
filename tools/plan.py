"""The plan file of `fengqiao deploy` and its state file (the format: tools/DEPLOY.md, section 1).

    plan = load_plan(path)                  # [row dict with 'line']; PlanError listing every error
    check_places(plan, registry, path)      # every place known (registry or field kit), of the right level
    state = State(path)                     # PATH.state.json: what a rerun continues from
"""

import csv
import json
import os

from tools.errors import CliError

COLUMNS = ("role", "village", "place", "name", "group", "power", "checkpoint_id")
GATEWAY_ROLES = {"alarm": "alarm_button", "checkin": "checkpoint"}


class PlanError(CliError):
    """The plan file has errors (each names its line and field)."""


def load_plan(path):
    """[row dict with 'line'] from a CSV plan; raises PlanError listing every error."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else ()
    except OSError as exc:
        raise PlanError("cannot read plan %s: %s" % (path, exc)) from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise PlanError("%s: not a UTF-8 CSV file: %s" % (path, exc)) from exc
    errors = []
    missing = [c for c in COLUMNS if c not in header]
    if not rows:
        errors.append("%s: no rows (header: %s)" % (path, ",".join(COLUMNS)))
    elif missing:
        errors.append("%s:1: missing column(s) %s (header: %s)" % (path, ", ".join(missing), ",".join(COLUMNS)))
    out, places = [], {}
    for i, r in enumerate(rows if not errors else [], start=2):
        def bad(field, why):
            errors.append("%s:%d: %s: %s" % (path, i, field, why))

        r = {k: (v or "").strip() for k, v in r.items() if k}
        if r["role"] not in GATEWAY_ROLES:
            bad("role", "%r: alarm or checkin" % r["role"])
        if not r["place"]:
            bad("place", "required (the place id in the gateway's registry)")
        elif r["place"] in places:
            bad("place", "%r is already on line %d" % (r["place"], places[r["place"]]))
        places[r["place"]] = i
        if r["power"] not in ("mains", "battery"):
            bad("power", "%r: mains or battery" % r["power"])
        cp = r["checkpoint_id"]
        if r["role"] == "checkin" or cp:
            if not cp.isdigit() or int(cp) > 65535:
                bad("checkpoint_id", "%r: 0..65535 required for checkin" % cp)
        r["checkpoint_id"] = int(cp) if cp.isdigit() else None
        r["line"] = i
        out.append(r)
    if errors:
        raise PlanError("plan has %d error(s):\n  %s" % (len(errors), "\n  ".join(errors)))
    return out


def check_places(plan, registry, path):
    """Every row's place must be in the registry before any board is keyed (PlanError otherwise)."""
    want = {"alarm": ("household",), "checkin": ("checkpoint",)}
    errors = []
    for r in plan:
        p = registry.place(r["place"])
        if p is None:
            errors.append("%s:%d: place: %r is not in the gateway's registry (import the village first: "
                          "`fengqiao registry import`)" % (path, r["line"], r["place"]))
        elif p.level not in want[r["role"]]:
            errors.append("%s:%d: place: %r is a %s; a %s goes in a %s" % (path, r["line"], r["place"], p.level,
                                                                        r["role"], want[r["role"]][0]))
    if errors:
        raise PlanError("plan has %d error(s):\n  %s" % (len(errors), "\n  ".join(errors)))


# -- state file ------------------------------------------------------------------------------------
class State:
    """PLAN.state.json: place -> {status, device_id, hwid, fingerprint, error, seconds}."""

    def __init__(self, plan_path):
        self.path = plan_path + ".state.json"
        self.rows = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.rows = json.load(f).get("rows", {})

    def set(self, place, **fields):
        self.rows[place] = dict(self.rows.get(place, {}), **fields)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"v": 1, "rows": self.rows}, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def done(self, place):
        return self.rows.get(place, {}).get("status") == "done"
