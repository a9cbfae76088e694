"""The village configuration in the gateway's SQLite file, and a read-only in-memory view of it.

    db = open_db(path)                      # WAL, busy timeout; tables created if missing
    import_village(db, data, source)        # replace the whole configuration, one transaction
    d = load_directory(db)                  # Directory: who/where/which group, answered from memory
    import_id(db)                           # changes on every import (services reload on change)

One import replaces everything the previous one wrote (the file describes the gateway's whole
area: its county, township and villages), inside one transaction: a reader sees the old
configuration or the new one, never a mix.
"""

import hashlib
import json
import math
import sqlite3
import threading
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS village_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS village_places (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, parent TEXT, name TEXT NOT NULL,
    checkpoint INTEGER UNIQUE, lat REAL, lon REAL);
CREATE TABLE IF NOT EXISTS village_groups (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS village_group_households (
    group_id TEXT NOT NULL, place_id TEXT NOT NULL UNIQUE, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS village_teams (id TEXT PRIMARY KEY, name TEXT NOT NULL, village TEXT);
CREATE TABLE IF NOT EXISTS village_people (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, place TEXT, team TEXT, phone TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS village_cards (uid TEXT PRIMARY KEY, person_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS village_routes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, village TEXT, team TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS village_route_checkpoints (
    route_id TEXT NOT NULL, position INTEGER NOT NULL, place_id TEXT NOT NULL, expected_min INTEGER NOT NULL,
    PRIMARY KEY (route_id, position));
CREATE TABLE IF NOT EXISTS village_schedules (
    id TEXT PRIMARY KEY, route_id TEXT NOT NULL, start TEXT NOT NULL, start_window_min INTEGER NOT NULL,
    max_duration_min INTEGER NOT NULL, grace_min INTEGER NOT NULL, days TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS village_severity_levels (
    level INTEGER PRIMARY KEY, name TEXT NOT NULL, village_deadline_s INTEGER NOT NULL,
    township_deadline_s INTEGER NOT NULL, patrol_alert INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS village_severity_rules (
    kind TEXT NOT NULL, place_id TEXT, level INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS village_devices (id INTEGER PRIMARY KEY, role TEXT NOT NULL, place_id TEXT);
"""

_TABLES = ("village_places", "village_groups", "village_group_households", "village_teams", "village_people",
           "village_cards", "village_routes", "village_route_checkpoints", "village_schedules",
           "village_severity_levels", "village_severity_rules", "village_devices")


class NotConfigured(LookupError):
    """No village configuration has been imported into this database yet."""


def open_db(path):
    """A connection to the gateway's SQLite file in autocommit mode (explicit BEGIN for writes)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(_SCHEMA)
    return db


def import_village(db, data, source="", now=0.0):
    """Replace the configuration with `data` (from config.parse_village) in one transaction."""
    blob = json.dumps(data, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()
    db.execute("BEGIN IMMEDIATE")
    try:
        for table in _TABLES:
            db.execute("DELETE FROM %s" % table)
        db.executemany("INSERT INTO village_places VALUES (?,?,?,?,?,?,?)",
                       [(p["id"], p["kind"], p["parent"], p["name"], p["checkpoint"], p["lat"], p["lon"])
                        for p in data["places"]])
        for g in data["groups"]:
            db.execute("INSERT INTO village_groups VALUES (?,?)", (g["id"], g["name"]))
            db.executemany("INSERT INTO village_group_households VALUES (?,?,?)",
                           [(g["id"], h, i) for i, h in enumerate(g["households"])])
        db.executemany("INSERT INTO village_teams VALUES (?,?,?)",
                       [(t["id"], t["name"], t["village"]) for t in data["teams"]])
        for p in data["people"]:
            db.execute("INSERT INTO village_people VALUES (?,?,?,?,?,?)",
                       (p["id"], p["name"], p["role"], p["place"], p["team"], p["phone"]))
            db.executemany("INSERT INTO village_cards VALUES (?,?)", [(u, p["id"]) for u in p["cards"]])
        for r in data["routes"]:
            db.execute("INSERT INTO village_routes VALUES (?,?,?,?)", (r["id"], r["name"], r["village"], r["team"]))
            db.executemany("INSERT INTO village_route_checkpoints VALUES (?,?,?,?)",
                           [(r["id"], i, cp, m) for i, (cp, m) in enumerate(zip(r["checkpoints"], r["expected_min"]))])
        db.executemany("INSERT INTO village_schedules VALUES (?,?,?,?,?,?,?)",
                       [(s["id"], s["route"], s["start"], s["start_window_min"], s["max_duration_min"],
                         s["grace_min"], ",".join(s["days"])) for s in data["schedules"]])
        db.executemany("INSERT INTO village_severity_levels VALUES (?,?,?,?,?)",
                       [(lv["level"], lv["name"], lv["village_deadline_s"], lv["township_deadline_s"],
                         int(lv["patrol_alert"])) for lv in data["severity_levels"]])
        db.executemany("INSERT INTO village_severity_rules VALUES (?,?,?)",
                       [(r["kind"], r["place"], r["level"]) for r in data["severity_rules"]])
        db.executemany("INSERT INTO village_devices VALUES (?,?,?)",
                       [(d["id"], d["role"], d["place"]) for d in data["devices"]])
        meta = {"settings": json.dumps(data["settings"], sort_keys=True), "source": source,
                "sha256": digest, "imported_at": repr(float(now))}
        old = db.execute("SELECT value FROM village_meta WHERE key = 'import_id'").fetchone()
        meta["import_id"] = str(int(old[0]) + 1 if old else 1)
        db.executemany("INSERT OR REPLACE INTO village_meta VALUES (?,?)", list(meta.items()))
        # When each schedule was first configured, kept across re-imports: a round whose start was
        # over before its schedule existed was never asked of anyone (live evaluation and reports
        # both skip it), while a later edit of the file must not hide earlier rounds.
        db.executemany("INSERT OR IGNORE INTO village_meta VALUES (?,?)",
                       [("schedule_since:" + s["id"], repr(float(now))) for s in data["schedules"]])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(meta["import_id"])


def import_id(db):
    row = db.execute("SELECT value FROM village_meta WHERE key = 'import_id'").fetchone()
    return int(row[0]) if row else 0


def load_directory(db, registry=None):
    """Read the whole configuration (a few hundred rows) into a Directory; NotConfigured if none."""
    meta = dict(db.execute("SELECT key, value FROM village_meta").fetchall())
    if "settings" not in meta:
        raise NotConfigured("no village configuration imported (run `fengqiao registry import FILE`)")
    places = {r[0]: {"id": r[0], "kind": r[1], "parent": r[2], "name": r[3], "checkpoint": r[4],
                     "lat": r[5], "lon": r[6]}
              for r in db.execute("SELECT id, kind, parent, name, checkpoint, lat, lon FROM village_places")}
    groups = {gid: {"id": gid, "name": name, "households": []}
              for gid, name in db.execute("SELECT id, name FROM village_groups")}
    for gid, place, _ in db.execute("SELECT group_id, place_id, position FROM village_group_households "
                                    "ORDER BY group_id, position"):
        groups[gid]["households"].append(place)
    teams = {r[0]: {"id": r[0], "name": r[1], "village": r[2]} for r in db.execute("SELECT * FROM village_teams")}
    people = {r[0]: {"id": r[0], "name": r[1], "role": r[2], "place": r[3], "team": r[4], "phone": r[5], "cards": []}
              for r in db.execute("SELECT id, name, role, place, team, phone FROM village_people")}
    for uid, pid in db.execute("SELECT uid, person_id FROM village_cards ORDER BY uid"):
        people[pid]["cards"].append(uid)
    routes = {r[0]: {"id": r[0], "name": r[1], "village": r[2], "team": r[3], "checkpoints": [], "expected_min": []}
              for r in db.execute("SELECT id, name, village, team FROM village_routes")}
    for rid, _, place, minutes in db.execute("SELECT * FROM village_route_checkpoints ORDER BY route_id, position"):
        routes[rid]["checkpoints"].append(place)
        routes[rid]["expected_min"].append(minutes)
    schedules = {r[0]: {"id": r[0], "route": r[1], "start": r[2], "start_window_min": r[3], "max_duration_min": r[4],
                        "grace_min": r[5], "days": r[6].split(",") if r[6] else []}
                 for r in db.execute("SELECT * FROM village_schedules")}
    levels = {r[0]: {"level": r[0], "name": r[1], "village_deadline_s": r[2], "township_deadline_s": r[3],
                     "patrol_alert": bool(r[4])}
              for r in db.execute("SELECT * FROM village_severity_levels")}
    rules = [{"kind": r[0], "place": r[1], "level": r[2]} for r in db.execute("SELECT * FROM village_severity_rules")]
    devices = {r[0]: {"id": r[0], "role": r[1], "place": r[2], "status": "planned"}
               for r in db.execute("SELECT * FROM village_devices")}
    registered = registry_devices(db, registry)
    for dev_id, role, place, status in registered:
        planned = devices.get(dev_id, {})
        devices[dev_id] = {"id": dev_id, "role": role, "place": place or planned.get("place"), "status": status}
    d = Directory(json.loads(meta["settings"]), places, groups, teams, people, routes, schedules, levels, rules,
                  devices, import_id=int(meta.get("import_id", 0)), has_registry=bool(registered))
    d.imported_at = float(meta.get("imported_at", 0.0))
    d.schedule_since = {k.split(":", 1)[1]: float(v) for k, v in meta.items() if k.startswith("schedule_since:")}
    return d


def registry_devices(db, registry=None):
    """[(device_id, role, place_id, status)] from G-core's registry: its API when we have the object
    (inside the gateway), else its `devices` table (the CLI has no master key); [] if there is none."""
    if registry is not None:
        return [(d.device_id, d.role, d.place_id, d.status) for d in registry.devices()]
    try:
        return db.execute("SELECT device_id, role, place_id, status FROM devices ORDER BY device_id").fetchall()
    except sqlite3.OperationalError:  # no registry table in this file
        return []


class DirectoryCache:
    """The current Directory, reloaded after an import or a registry change (device added, moved, revoked).

    The import id is checked on every call (one indexed read); the registry's devices at most once
    per `device_check_s` of real time."""

    def __init__(self, db, registry=None, device_check_s=1.0):
        self.db = db
        self.registry = registry
        self.device_check_s = device_check_s
        self._dir = None
        self._sig = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def invalidate(self):
        self._dir, self._sig = None, None

    def current(self):
        """The Directory loaded last (no check, no I/O); None before the first get()."""
        return self._dir

    def get(self):
        with self._lock:
            return self._get()

    def _get(self):
        now = time.monotonic()
        current = import_id(self.db)
        if self._dir is not None and self._dir.import_id == current and now - self._checked < self.device_check_s:
            return self._dir
        self._checked = now
        sig = (current, tuple(registry_devices(self.db, self.registry)))
        if self._dir is None or sig != self._sig:
            try:
                self._dir = load_directory(self.db, self.registry)
            except NotConfigured:
                self._dir = None
            self._sig = sig
        return self._dir


class Directory:
    """Answers who and where from one imported configuration (immutable once built)."""

    def __init__(self, settings, places, groups, teams, people, routes, schedules, levels, rules, devices,
                 import_id=0, has_registry=False):
        self.settings = settings
        self.places, self.groups, self.teams, self.people = places, groups, teams, people
        self.routes, self.schedules, self.levels, self.rules = routes, schedules, levels, rules
        self.devices = devices
        self.import_id = import_id
        self.has_registry = has_registry
        self.imported_at = 0.0          # when this configuration was imported (Unix seconds; 0 = unknown)
        self.schedule_since = {}        # schedule id -> when it was first configured (kept across imports)
        self.group_of_household = {h: g["id"] for g in groups.values() for h in g["households"]}
        self.card_owner = {uid: pid for pid, p in people.items() for uid in p["cards"]}
        self.checkpoint_place = {p["checkpoint"]: pid for pid, p in places.items() if p["checkpoint"] is not None}

    @classmethod
    def from_data(cls, data, import_id=0):
        """Build straight from config.parse_village output (tests, validation without a DB)."""
        def index(items, key="id"):
            return {x[key]: dict(x) for x in items}
        devices = {d["id"]: dict(d, status="planned") for d in data["devices"]}
        return cls(data["settings"], index(data["places"]), index(data["groups"]), index(data["teams"]),
                   index(data["people"]), index(data["routes"]), index(data["schedules"]),
                   index(data["severity_levels"], "level"), list(data["severity_rules"]), devices, import_id)

    # -- places ---------------------------------------------------------------------------

    def ancestors(self, place_id):
        """[place, parent, grandparent, ...] (ids), stopping at unknown ids."""
        out = []
        while place_id in self.places and place_id not in out:
            out.append(place_id)
            place_id = self.places[place_id]["parent"]
        return out

    def above(self, place_id, kind):
        for pid in self.ancestors(place_id):
            if self.places[pid]["kind"] == kind:
                return pid
        return None

    def is_within(self, place_id, area_id):
        return area_id in self.ancestors(place_id)

    def place_name(self, place_id):
        p = self.places.get(place_id)
        return (p["name"] or place_id) if p else str(place_id)

    def distance_m(self, a, b):
        """Great-circle distance between two places with coordinates, else None."""
        pa, pb = self.places.get(a), self.places.get(b)
        if not pa or not pb or None in (pa["lat"], pa["lon"], pb["lat"], pb["lon"]):
            return None
        la1, lo1, la2, lo2 = map(math.radians, (pa["lat"], pa["lon"], pb["lat"], pb["lon"]))
        h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
        return 2 * 6_371_000 * math.asin(min(1.0, math.sqrt(h)))

    # -- devices and people ------------------------------------------------------------------

    def device_place(self, device_id, fallback=None):
        d = self.devices.get(device_id)
        return d["place"] if d and d["place"] else fallback

    def reachable(self, d):
        """A device we can send to: registered and active (or, with no registry at all, planned)."""
        return d["status"] == "active" or (d["status"] == "planned" and not self.has_registry)

    def devices_in(self, place_ids, role=None):
        wanted = set(place_ids)
        return sorted(d["id"] for d in self.devices.values()
                      if d["place"] in wanted and (role is None or d["role"] == role) and self.reachable(d))

    def devices_under(self, area_id, role=None):
        return sorted(d["id"] for d in self.devices.values()
                      if d["place"] and self.is_within(d["place"], area_id) and (role is None or d["role"] == role)
                      and self.reachable(d))

    def people_with(self, role, place_id):
        return sorted(pid for pid, p in self.people.items() if p["role"] == role and p["place"] == place_id)

    def grid_member_for(self, place_id):
        grid = self.above(place_id, "grid")
        members = self.people_with("grid_member", grid) if grid else []
        return members[0] if members else None

    def duty_officers_for(self, place_id):
        township = self.above(place_id, "township")
        return self.people_with("duty_officer", township) if township else []

    def county_officers_for(self, place_id):
        county = self.above(place_id, "county")
        return self.people_with("county_officer", county) if county else []

    def cases_settings(self):
        return self.settings["cases"]

    def patrol_settings(self):
        return self.settings["patrol"]
