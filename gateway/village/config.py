"""The village configuration file (TOML): parse, validate, normalise.

    data = parse_village(text, filename)   # -> normalised dict (see below) or raises ConfigInvalid

A file is accepted whole or refused whole: every problem found is collected into one
`ConfigInvalid` whose `.errors` are `"FILE:LINE: field.path: what is wrong"` strings (the line
comes from `tomlpos.KeyLines`, since tomllib gives none for values). `gateway/sample_village.toml`
documents every section with comments; the format in short:

    utc_offset = "+08:00"                     # local time of schedules and reports
    [cases]    cancel_grace_s, correlate_window_s, siren_duration_s
    [patrol]   max_speed_kmh, clock_tolerance_s
    [[place]]  id, kind (county|township|village|grid|household|checkpoint), parent, name,
               checkpoint (u16, checkpoints only), lat, lon (optional, for the speed check)
    [[group]]  id, name, households = [place ids]          (joint-defence group, ~10 households)
    [[team]]   id, name, village
    [[person]] id, name, role (grid_member|patrol|duty_officer|county_officer), place, team, cards, phone
    [[route]]  id, name, village, team, checkpoints = [place ids], expected_min = [minutes from start]
    [[schedule]] id, route, start = "HH:MM", start_window_min, max_duration_min, grace_min, days
    [severity] default_level; [[severity.level]] level, name, village_deadline_s,
               township_deadline_s, patrol_alert; [[severity.rule]] kind, place (optional), level
    [[device]] id (8 hex digits), role (alarm|checkin; the registry's alarm_button|checkpoint too), place

The normalised dict has the same sections as lists of plain dicts, with defaults filled in, device
ids as ints and card UIDs as lowercase hex.
"""

import re
import tomllib

from gateway.village.tomlpos import KeyLines

PLACE_KINDS = ("county", "township", "village", "grid", "household", "checkpoint")
# The kind a place's parent must have (households and checkpoints hang under a grid).
PARENT_KIND = {"township": "county", "village": "township", "grid": "village",
               "household": "grid", "checkpoint": "grid"}
PERSON_ROLES = ("grid_member", "patrol", "duty_officer", "county_officer")
DEVICE_ROLES = ("alarm_button", "checkpoint")   # as gateway.registry.ROLES
# The words people type everywhere else (provision, hostboard, gateway device add, deploy plans);
# the registry's own names stay accepted so older village files still import.
DEVICE_ROLE_WORDS = {"alarm": "alarm_button", "checkin": "checkpoint"}
ALARM_KINDS = {"emergency": 0, "fire": 1, "medical": 2, "intrusion": 3}   # SPEC section 3, alarm body
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LEVELS = (1, 2, 3, 4, 5)

# Built-in graded response (used when the file has no [[severity.level]]). Deadlines count from
# the moment the alarm was stored; level 5 goes to the township at once (village deadline unused).
DEFAULT_LEVELS = [
    {"level": 1, "name": "blue", "village_deadline_s": 900, "township_deadline_s": 3600, "patrol_alert": False},
    {"level": 2, "name": "yellow", "village_deadline_s": 600, "township_deadline_s": 1800, "patrol_alert": True},
    {"level": 3, "name": "orange", "village_deadline_s": 300, "township_deadline_s": 1200, "patrol_alert": True},
    {"level": 4, "name": "red", "village_deadline_s": 180, "township_deadline_s": 600, "patrol_alert": True},
    {"level": 5, "name": "critical", "village_deadline_s": 0, "township_deadline_s": 300, "patrol_alert": True},
]
DEFAULT_CASES = {"cancel_grace_s": 30, "correlate_window_s": 120, "siren_duration_s": 180}
DEFAULT_PATROL = {"max_speed_kmh": 8.0, "clock_tolerance_s": 120}
DEFAULT_LEVEL = 3

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_OFFSET = re.compile(r"^([+-])([01][0-9]|2[0-3]):([0-5][0-9])$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class ConfigInvalid(ValueError):
    """The file was refused; `.errors` lists every problem as "FILE:LINE: field: message"."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("%d error(s):\n  %s" % (len(self.errors), "\n  ".join(self.errors)))


class _Checker:
    """Collects errors with the line of the field they concern."""

    def __init__(self, filename, lines):
        self.filename = filename
        self.lines = lines
        self.errors = []

    def error(self, path, message):
        line = self.lines.line(path)
        where = "%s:%s" % (self.filename, line if line else "?")
        self.errors.append("%s: %s: %s" % (where, _dotted(path), message))

    def table(self, value, path, known):
        if not isinstance(value, dict):
            self.error(path, "must be a table")
            return {}
        for key in value:
            if key not in known:
                self.error(path + (key,), "unknown field (expected one of: %s)" % ", ".join(known))
        return value

    def get(self, tbl, key, path, kind, required=False, default=None, check=None, hint=""):
        """Read tbl[key] of python type `kind`; record an error and return `default` if wrong."""
        if key not in tbl:
            if required:
                self.error(path + (key,), "missing (required)")
            return default
        value = tbl[key]
        ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
        if ok and check is not None and not check(value):
            ok = False
        if not ok:
            self.error(path + (key,), "invalid value %r%s" % (value, (": " + hint) if hint else ""))
            return default
        return value


def _dotted(path):
    out = ""
    for part in path:
        out += ("[%d]" % part) if isinstance(part, int) else (("." if out else "") + part)
    return out


def parse_village(text, filename="<village>"):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        from gateway.config import toml_error_text  # file:line:column, also at the end of the document

        raise ConfigInvalid([toml_error_text(filename, text, exc)]) from exc
    c = _Checker(filename, KeyLines(text))
    data = _validate(doc, c)
    if c.errors:
        raise ConfigInvalid(c.errors)
    return data


def parse_utc_offset(text):
    m = _OFFSET.match(text or "")
    if not m:
        return None
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)


def card_hex(uid_text):
    """Normalise a card UID written as hex (colons/spaces allowed) -> lowercase hex or None."""
    if not isinstance(uid_text, str):
        return None
    h = uid_text.replace(":", "").replace(" ", "").lower()
    if not _HEX.match(h) or len(h) not in (8, 14, 20):
        return None
    return h


def _validate(doc, c):
    top = c.table(doc, (), ("format", "utc_offset", "cases", "patrol", "place", "group", "team", "person",
                             "route", "schedule", "severity", "device"))
    c.get(top, "format", (), int, check=lambda v: v == 1, hint="this gateway reads format 1")
    offset_text = c.get(top, "utc_offset", (), str, default="+08:00", check=lambda v: parse_utc_offset(v) is not None,
                        hint='write it as "+08:00"')
    settings = {"utc_offset": offset_text, "utc_offset_s": parse_utc_offset(offset_text)}

    cases = c.table(top.get("cases", {}), ("cases",), tuple(DEFAULT_CASES))
    settings["cases"] = {k: c.get(cases, k, ("cases",), int, default=v, check=lambda x: 0 < x <= 86400,
                                  hint="seconds, 1..86400") for k, v in DEFAULT_CASES.items()}
    patrol = c.table(top.get("patrol", {}), ("patrol",), tuple(DEFAULT_PATROL))
    settings["patrol"] = {
        "max_speed_kmh": float(c.get(patrol, "max_speed_kmh", ("patrol",), (int, float), default=8.0,
                                     check=lambda x: 0 < x <= 200, hint="km/h, 0..200")),
        "clock_tolerance_s": c.get(patrol, "clock_tolerance_s", ("patrol",), int, default=120,
                                   check=lambda x: 0 < x <= 86400, hint="seconds, 1..86400"),
    }

    places = _places(top, c)
    by_id = {p["id"]: p for p in places}
    groups = _groups(top, c, by_id)
    teams = _teams(top, c, by_id)
    people = _people(top, c, by_id, {t["id"] for t in teams})
    routes = _routes(top, c, by_id, {t["id"] for t in teams})
    schedules = _schedules(top, c, {r["id"]: r for r in routes})
    levels, rules, default_level = _severity(top, c, by_id)
    settings["severity_default"] = default_level
    devices = _devices(top, c, by_id)
    return {"settings": settings, "places": places, "groups": groups, "teams": teams, "people": people,
            "routes": routes, "schedules": schedules, "severity_levels": levels, "severity_rules": rules,
            "devices": devices}


def _array(top, key, c):
    value = top.get(key, [])
    if not isinstance(value, list):
        c.error((key,), "must be an array of tables ([[%s]])" % key)
        return []
    return value


def _ident(c, tbl, path, seen, what):
    ident = c.get(tbl, "id", path, str, required=True, check=_ID.match, hint="letters, digits, _ . : - (max 64)")
    if ident is not None:
        if ident in seen:
            c.error(path + ("id",), "duplicate %s id %r" % (what, ident))
        seen.add(ident)
    return ident


def _ref(c, tbl, key, path, by_id, kinds, required=True):
    """A reference to a place of one of `kinds`; returns the id or None."""
    ident = c.get(tbl, key, path, str, required=required)
    if ident is None:
        return None
    place = by_id.get(ident)
    if place is None:
        c.error(path + (key,), "no place with id %r" % ident)
        return None
    if place["kind"] not in kinds:
        c.error(path + (key,), "place %r is a %s, expected %s" % (ident, place["kind"], " or ".join(kinds)))
        return None
    return ident


def _places(top, c):
    places, seen, checkpoints = [], set(), {}
    raw = _array(top, "place", c)
    for i, tbl in enumerate(raw):
        path = ("place", i)
        tbl = c.table(tbl, path, ("id", "kind", "parent", "name", "checkpoint", "lat", "lon"))
        p = {"id": _ident(c, tbl, path, seen, "place"),
             "kind": c.get(tbl, "kind", path, str, required=True, check=lambda v: v in PLACE_KINDS,
                           hint="one of " + ", ".join(PLACE_KINDS)),
             "parent": c.get(tbl, "parent", path, str),
             "name": c.get(tbl, "name", path, str, default=""),
             "checkpoint": None, "lat": None, "lon": None}
        for key, lo, hi in (("lat", -90, 90), ("lon", -180, 180)):
            v = c.get(tbl, key, path, (int, float), check=lambda v, lo=lo, hi=hi: lo <= v <= hi,
                      hint="degrees %d..%d" % (lo, hi))
            p[key] = float(v) if v is not None else None
        if p["kind"] == "checkpoint":
            cp = c.get(tbl, "checkpoint", path, int, required=True, check=lambda v: 1 <= v <= 65535,
                       hint="checkpoint number 1..65535 (what the check-in point sends)")
            if cp is not None:
                if cp in checkpoints:
                    c.error(path + ("checkpoint",), "checkpoint number %d already used by %r" % (cp, checkpoints[cp]))
                checkpoints[cp] = p["id"]
            p["checkpoint"] = cp
        elif "checkpoint" in tbl:
            c.error(path + ("checkpoint",), "only places of kind checkpoint have a checkpoint number")
        places.append((i, p))
    by_id = {p["id"]: p for _, p in places if p["id"]}
    for i, p in places:
        path = ("place", i)
        if p["kind"] is None:
            continue
        want = PARENT_KIND.get(p["kind"])
        if want is None:
            if p["parent"] is not None:
                c.error(path + ("parent",), "a county has no parent")
            continue
        if p["parent"] is None:
            c.error(path + ("parent",), "missing (a %s belongs to a %s)" % (p["kind"], want))
        elif p["parent"] not in by_id:
            c.error(path + ("parent",), "no place with id %r" % p["parent"])
        elif by_id[p["parent"]]["kind"] != want:
            c.error(path + ("parent",), "parent %r is a %s, a %s belongs to a %s"
                    % (p["parent"], by_id[p["parent"]]["kind"], p["kind"], want))
    return [p for _, p in places if p["id"]]


def village_of(by_id, place_id):
    """The village above (or at) a place, or None."""
    seen = 0
    while place_id in by_id and seen < 10:
        if by_id[place_id]["kind"] == "village":
            return place_id
        place_id, seen = by_id[place_id]["parent"], seen + 1
    return None


def _groups(top, c, by_id):
    groups, seen, member_of = [], set(), {}
    for i, tbl in enumerate(_array(top, "group", c)):
        path = ("group", i)
        tbl = c.table(tbl, path, ("id", "name", "households"))
        g = {"id": _ident(c, tbl, path, seen, "group"), "name": c.get(tbl, "name", path, str, default=""),
             "households": []}
        hh = c.get(tbl, "households", path, list, required=True, check=lambda v: len(v) >= 2,
                   hint="a list of at least two household place ids")
        villages = set()
        for j, h in enumerate(hh or []):
            if not isinstance(h, str) or h not in by_id:
                c.error(path + ("households", j), "no place with id %r" % (h,))
            elif by_id[h]["kind"] != "household":
                c.error(path + ("households", j), "place %r is a %s, not a household" % (h, by_id[h]["kind"]))
            elif h in member_of:
                c.error(path + ("households", j), "household %r is already in group %r" % (h, member_of[h]))
            else:
                member_of[h] = g["id"]
                g["households"].append(h)
                villages.add(village_of(by_id, h))
        if len(villages) > 1:
            c.error(path + ("households",), "households of one group must be in one village (found %s)"
                    % ", ".join(sorted(str(v) for v in villages)))
        if g["id"]:
            groups.append(g)
    return groups


def _teams(top, c, by_id):
    teams, seen = [], set()
    for i, tbl in enumerate(_array(top, "team", c)):
        path = ("team", i)
        tbl = c.table(tbl, path, ("id", "name", "village"))
        t = {"id": _ident(c, tbl, path, seen, "team"), "name": c.get(tbl, "name", path, str, default=""),
             "village": _ref(c, tbl, "village", path, by_id, ("village",))}
        if t["id"]:
            teams.append(t)
    return teams


def _people(top, c, by_id, team_ids):
    people, seen, cards = [], set(), {}
    place_kinds = {"grid_member": ("grid",), "duty_officer": ("township",), "county_officer": ("county",),
                   "patrol": ("village",)}
    for i, tbl in enumerate(_array(top, "person", c)):
        path = ("person", i)
        tbl = c.table(tbl, path, ("id", "name", "role", "place", "team", "cards", "phone"))
        role = c.get(tbl, "role", path, str, required=True, check=lambda v: v in PERSON_ROLES,
                     hint="one of " + ", ".join(PERSON_ROLES))
        p = {"id": _ident(c, tbl, path, seen, "person"), "name": c.get(tbl, "name", path, str, default=""),
             "role": role, "place": None, "team": None, "cards": [],
             "phone": c.get(tbl, "phone", path, str, default="")}
        if role is not None:
            p["place"] = _ref(c, tbl, "place", path, by_id, place_kinds[role], required=role != "patrol")
        if role == "patrol":
            team = c.get(tbl, "team", path, str, required=True)
            if team is not None and team not in team_ids:
                c.error(path + ("team",), "no team with id %r" % team)
            p["team"] = team
        elif "team" in tbl:
            c.error(path + ("team",), "only patrol members belong to a team")
        raw_cards = c.get(tbl, "cards", path, list, default=[])
        if raw_cards and role != "patrol":
            pass  # a grid member or officer may also carry a card; allowed
        for j, uid in enumerate(raw_cards):
            h = card_hex(uid)
            if h is None:
                c.error(path + ("cards", j), "card UID %r is not 4, 7 or 10 bytes of hex" % (uid,))
            elif h in cards:
                c.error(path + ("cards", j), "card %s already belongs to %r" % (h, cards[h]))
            else:
                cards[h] = p["id"]
                p["cards"].append(h)
        if p["id"]:
            people.append(p)
    return people


def _routes(top, c, by_id, team_ids):
    routes, seen = [], set()
    for i, tbl in enumerate(_array(top, "route", c)):
        path = ("route", i)
        tbl = c.table(tbl, path, ("id", "name", "village", "team", "checkpoints", "expected_min"))
        r = {"id": _ident(c, tbl, path, seen, "route"), "name": c.get(tbl, "name", path, str, default=""),
             "village": _ref(c, tbl, "village", path, by_id, ("village",)),
             "team": c.get(tbl, "team", path, str, required=True), "checkpoints": [], "expected_min": []}
        if r["team"] is not None and r["team"] not in team_ids:
            c.error(path + ("team",), "no team with id %r" % r["team"])
        cps = c.get(tbl, "checkpoints", path, list, required=True, check=lambda v: len(v) >= 2,
                    hint="an ordered list of at least two checkpoint place ids")
        for j, cp in enumerate(cps or []):
            if not isinstance(cp, str) or cp not in by_id:
                c.error(path + ("checkpoints", j), "no place with id %r" % (cp,))
            elif by_id[cp]["kind"] != "checkpoint":
                c.error(path + ("checkpoints", j), "place %r is a %s, not a checkpoint" % (cp, by_id[cp]["kind"]))
            elif cp in r["checkpoints"]:
                c.error(path + ("checkpoints", j), "checkpoint %r appears twice" % cp)
            elif r["village"] and village_of(by_id, cp) != r["village"]:
                c.error(path + ("checkpoints", j), "checkpoint %r is not in village %r" % (cp, r["village"]))
            else:
                r["checkpoints"].append(cp)
        exp = c.get(tbl, "expected_min", path, list, required=True)
        if exp is not None and cps is not None:
            if len(exp) != len(cps):
                c.error(path + ("expected_min",), "has %d entries for %d checkpoints" % (len(exp), len(cps)))
            elif not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in exp):
                c.error(path + ("expected_min",), "minutes from the round's start must be whole numbers >= 0")
            elif exp[0] != 0 or any(b < a for a, b in zip(exp, exp[1:])):
                c.error(path + ("expected_min",), "must start at 0 and never decrease (route order)")
            else:
                r["expected_min"] = list(exp)
        if r["id"]:
            routes.append(r)
    return routes


def _schedules(top, c, routes):
    schedules, seen = [], set()
    for i, tbl in enumerate(_array(top, "schedule", c)):
        path = ("schedule", i)
        tbl = c.table(tbl, path, ("id", "route", "start", "start_window_min", "max_duration_min", "grace_min", "days"))
        s = {"id": _ident(c, tbl, path, seen, "schedule"), "route": c.get(tbl, "route", path, str, required=True),
             "start": c.get(tbl, "start", path, str, required=True, check=_HHMM.match, hint='local time "HH:MM"')}
        if s["route"] is not None and s["route"] not in routes:
            c.error(path + ("route",), "no route with id %r" % s["route"])
        for key, default in (("start_window_min", 30), ("max_duration_min", None), ("grace_min", 10)):
            s[key] = c.get(tbl, key, path, int, required=default is None, default=default,
                           check=lambda v: 0 <= v <= 1440, hint="minutes 0..1440")
        days = c.get(tbl, "days", path, list, default=list(DAYS))
        for j, d in enumerate(days):
            if d not in DAYS:
                c.error(path + ("days", j), "invalid day %r (one of %s)" % (d, ", ".join(DAYS)))
        s["days"] = [d for d in DAYS if d in days]
        route = routes.get(s["route"])
        if route and route["expected_min"] and s["max_duration_min"] is not None:
            if route["expected_min"][-1] > s["max_duration_min"]:
                c.error(path + ("max_duration_min",), "%d min is shorter than the route's last expected time (%d min)"
                        % (s["max_duration_min"], route["expected_min"][-1]))
        if s["id"]:
            schedules.append(s)
    return schedules


def _severity(top, c, by_id):
    sev = c.table(top.get("severity", {}), ("severity",), ("default_level", "level", "rule"))
    default_level = c.get(sev, "default_level", ("severity",), int, default=DEFAULT_LEVEL,
                          check=lambda v: v in LEVELS, hint="1..5")
    levels = []
    raw = sev.get("level")
    if raw is None:
        levels = [dict(x) for x in DEFAULT_LEVELS]
    elif not isinstance(raw, list):
        c.error(("severity", "level"), "must be an array of tables ([[severity.level]])")
    else:
        seen = set()
        for i, tbl in enumerate(raw):
            path = ("severity", "level", i)
            tbl = c.table(tbl, path, ("level", "name", "village_deadline_s", "township_deadline_s", "patrol_alert"))
            lv = {"level": c.get(tbl, "level", path, int, required=True, check=lambda v: v in LEVELS, hint="1..5"),
                  "name": c.get(tbl, "name", path, str, default=""),
                  "village_deadline_s": c.get(tbl, "village_deadline_s", path, int, required=True,
                                              check=lambda v: 0 <= v <= 86400, hint="seconds 0..86400"),
                  "township_deadline_s": c.get(tbl, "township_deadline_s", path, int, required=True,
                                               check=lambda v: 1 <= v <= 172800, hint="seconds 1..172800"),
                  "patrol_alert": c.get(tbl, "patrol_alert", path, bool, default=True)}
            if lv["level"] in seen:
                c.error(path + ("level",), "level %d defined twice" % lv["level"])
            seen.add(lv["level"])
            if (lv["village_deadline_s"] is not None and lv["township_deadline_s"] is not None
                    and lv["level"] != 5 and lv["township_deadline_s"] <= lv["village_deadline_s"]):
                c.error(path + ("township_deadline_s",), "must be later than village_deadline_s (%d s)"
                        % lv["village_deadline_s"])
            levels.append(lv)
        missing = [lv for lv in LEVELS if lv not in seen]
        if missing:
            c.error(("severity", "level"), "levels %s missing: define all five levels 1..5"
                    % ", ".join(map(str, missing)))
        levels.sort(key=lambda x: x["level"] or 0)
    rules = []
    raw_rules = sev.get("rule", [])
    if not isinstance(raw_rules, list):
        c.error(("severity", "rule"), "must be an array of tables ([[severity.rule]])")
        raw_rules = []
    keys = {}
    for i, tbl in enumerate(raw_rules):
        path = ("severity", "rule", i)
        tbl = c.table(tbl, path, ("kind", "place", "level"))
        r = {"kind": c.get(tbl, "kind", path, str, required=True, check=lambda v: v in ALARM_KINDS,
                           hint="one of " + ", ".join(ALARM_KINDS)),
             "place": None,
             "level": c.get(tbl, "level", path, int, required=True, check=lambda v: v in LEVELS, hint="1..5")}
        if "place" in tbl:
            r["place"] = _ref(c, tbl, "place", path, by_id, PLACE_KINDS)
        key = (r["kind"], r["place"])
        if r["kind"] is not None and key in keys:
            c.error(path, "same kind and place as severity.rule[%d]" % keys[key])
        keys[key] = i
        rules.append(r)
    return levels, rules, default_level


def _devices(top, c, by_id):
    devices, seen = [], set()
    for i, tbl in enumerate(_array(top, "device", c)):
        path = ("device", i)
        tbl = c.table(tbl, path, ("id", "role", "place"))
        raw = c.get(tbl, "id", path, str, required=True,
                    check=lambda v: len(v) == 8 and _HEX.match(v) and int(v, 16) != 0,
                    hint="8 hex digits, not all zero (e.g. \"0000002a\")")
        dev_id = int(raw, 16) if raw else None
        if dev_id is not None:
            if dev_id in seen:
                c.error(path + ("id",), "duplicate device id %s" % raw)
            seen.add(dev_id)
        role = c.get(tbl, "role", path, str, required=True,
                     check=lambda v: v in DEVICE_ROLES or v in DEVICE_ROLE_WORDS, hint="alarm or checkin")
        role = DEVICE_ROLE_WORDS.get(role, role)
        kinds = {"alarm_button": ("household", "checkpoint"), "checkpoint": ("checkpoint",)}.get(role, PLACE_KINDS)
        place = _ref(c, tbl, "place", path, by_id, kinds)
        if dev_id is not None:
            devices.append({"id": dev_id, "role": role, "place": place})
    return devices
