"""The daily patrol report against a scenario walked on real firmware.

Four check-in point host boards (the firmware image on the MicroPython VM, MFRC522 simulated on
the board, cards presented through the control socket), the project's Mosquitto, the real gateway
with the cases plugin and an injected clock, the sample village with its routes and schedules
replaced by short ones. The boards take the gateway's time from its acks (firmware/clock.py), so
moving the gateway's clock and acking moves theirs: an evening of rounds runs in seconds.

The scenario on one local date (Dongshan village, UTC+8):

    route-loop (team-dongshan): gate, school, well, ancestral hall at 0, 5, 10, 15 min, grace 2 min
      20:00  complete: Wang Qiang at every checkpoint on time
      20:30  missed: Zhao Lei skips the school and reaches the well 3 min after it was due (1 min
             after its deadline: the late visit does not count)
      21:00  late: Huang Bo starts 7 min after the planned start (window 5 min), then on time;
             a visitor's unknown card is the school's visit (counted, flagged)
      21:30  out of order (grace 5 min): Gao Yan goes to the ancestral hall before the well, both in time
    route-west (team-west): well, ancestral hall at 0, 5 min
      22:00  not started: nobody came

The gateway's own end-of-round evaluations and live missed-checkpoint events are checked too.
Then `fengqiao report patrol --date D --out DIR --config gateway.toml` runs as its own process,
as an operator would, and the CSV (one row per round), the per route and team summary it prints,
and the HTML page are checked against figures computed here from the scenario (`expected_round`
applies the rules of gateway/cases/README.md "Patrol" to the taps; it does not use gateway code).

Covers, from issue 5's Tests: "the report's figures match the scenario".
"""

import csv
import datetime
import math
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from gateway.broker import ProjectBroker
from gateway.cli import GatewayApp
from gateway.clock import ManualClock
from gateway.config import load_config
from gateway.tests.conftest import gateway_config, write_config
from gateway.village.cli import sync_registry
from gateway.village.config import parse_village
from gateway.village.db import import_village, open_db
from gateway.village.testing import sample_text
from tools.hostboard import HostBoard, board_heap, provision_dir
from tools.testing.procs import REPO_ROOT, wait_for

HEAP = board_heap()  # a board's 64 KB, code in ROMFS (firmware/LINK.md, Memory)
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000"]
DATE = datetime.date(2026, 3, 14)                     # long past: the report (system clock) sees every round over
LOCAL = datetime.timezone(datetime.timedelta(hours=8))  # the sample village's utc_offset
DEVICES = {"cp-gate": (0x301, 101), "cp-school": (0x302, 102), "cp-well": (0x303, 103), "cp-temple": (0x304, 104)}

WANG, ZHAO, HUANG = "04a1b2c3", "04112233445566", "0499aabb"    # cards of the sample's patrol members
GAO = "04beef01"                                                # added to the patrol team below
STRANGER = "04deadbe"                                           # on nobody's list
KNOWN_CARDS = {WANG, ZHAO, HUANG, GAO, "04c0ffee"}

ROUTES = {
    "route-loop": {"name": "Evening loop: gate, school, well, ancestral hall", "team": "team-dongshan",
                   "checkpoints": ["cp-gate", "cp-school", "cp-well", "cp-temple"], "expected_min": [0, 5, 10, 15]},
    "route-west": {"name": "West lane watch: well, ancestral hall", "team": "team-west",
                   "checkpoints": ["cp-well", "cp-temple"], "expected_min": [0, 5]},
}
# id: (route, local start, start_window_min, max_duration_min, grace_min)
SCHEDULES = {
    "loop-2000": ("route-loop", "20:00", 5, 20, 2),
    "loop-2030": ("route-loop", "20:30", 5, 20, 2),
    "loop-2100": ("route-loop", "21:00", 5, 20, 2),
    "loop-2130": ("route-loop", "21:30", 5, 20, 5),
    "west-2200": ("route-west", "22:00", 5, 15, 2),
}
# (round, checkpoint, minutes after the planned start, card), in the order they are walked.
# One card per round: a check-in point counts the same card once per 10 minutes of its own uptime.
# Taps of one card are spaced so that no walk between checkpoints is faster than the sample's 8 km/h
# (the checkpoints are 300-500 m apart): the only flagged check-in is the stranger's.
TAPS = [
    ("loop-2000", "cp-gate", 1, WANG), ("loop-2000", "cp-school", 6, WANG),
    ("loop-2000", "cp-well", 11, WANG), ("loop-2000", "cp-temple", 16, WANG),
    ("loop-2030", "cp-gate", 1, ZHAO), ("loop-2030", "cp-well", 14, ZHAO), ("loop-2030", "cp-temple", 17, ZHAO),
    ("loop-2100", "cp-gate", 7, HUANG), ("loop-2100", "cp-school", 12, STRANGER),
    ("loop-2100", "cp-well", 17, HUANG), ("loop-2100", "cp-temple", 22, HUANG),
    ("loop-2130", "cp-gate", 1, GAO), ("loop-2130", "cp-school", 6, GAO),
    ("loop-2130", "cp-temple", 11, GAO), ("loop-2130", "cp-well", 15, GAO),
]
INTENT = {"loop-2000": "complete", "loop-2030": "missed", "loop-2100": "late", "loop-2130": "out_of_order",
          "west-2200": "not_started"}
REPORT_END = "22:30"     # every round is over


def local(hhmm, minutes=0):
    h, m = map(int, hhmm.split(":"))
    return datetime.datetime(DATE.year, DATE.month, DATE.day, h, m, tzinfo=LOCAL).timestamp() + minutes * 60


def tap_time(round_id, minutes):
    return local(SCHEDULES[round_id][1], minutes)


def village_text():
    """The sample village with its route and schedules replaced by the scenario's, plus a second team
    (team-west, Li Na) and one more member of the sample's patrol team (Gao Yan)."""
    text = sample_text()
    head, sep, rest = text.partition("# ---- patrol route and its rounds")
    _, sep2, tail = rest.partition("# ---- graded response")
    assert sep and sep2, "the sample village's patrol section moved: adapt village_text()"
    out = ['[[team]]\nid = "team-west"\nname = "West lane night watch"\nvillage = "vil-dongshan"\n',
           '[[person]]\nid = "p-li-na"\nname = "Li Na"\nrole = "patrol"\nplace = "vil-dongshan"\n'
           'team = "team-west"\ncards = ["04c0ffee"]\n',
           '[[person]]\nid = "p-gao-yan"\nname = "Gao Yan"\nrole = "patrol"\nplace = "vil-dongshan"\n'
           'team = "team-dongshan"\ncards = ["%s"]\n' % GAO]
    for rid, r in ROUTES.items():
        cps = ", ".join('"%s"' % c for c in r["checkpoints"])
        minutes = ", ".join(str(m) for m in r["expected_min"])
        out.append('[[route]]\nid = "%s"\nname = "%s"\nvillage = "vil-dongshan"\nteam = "%s"\ncheckpoints = [%s]\n'
                   'expected_min = [%s]\n' % (rid, r["name"], r["team"], cps, minutes))
    for sid, (route, start, window, duration, grace) in SCHEDULES.items():
        out.append('[[schedule]]\nid = "%s"\nroute = "%s"\nstart = "%s"\nstart_window_min = %d\n'
                   'max_duration_min = %d\ngrace_min = %d\n' % (sid, route, start, window, duration, grace))
    return head + "# ---- patrol (the report test's routes and rounds)\n\n" + "\n".join(out) + "\n" + sep2 + tail


# -- what the scenario implies (the rules of gateway/cases/README.md "Patrol", applied by hand) ----

def expected_round(round_id):
    route_id, start, window_min, duration_min, grace_min = SCHEDULES[round_id]
    route = ROUTES[route_id]
    offset = {cp: m * 60 for cp, m in zip(route["checkpoints"], route["expected_min"])}
    planned, grace = local(start), grace_min * 60
    taps = sorted((tap_time(r, m), cp, card) for r, cp, m, card in TAPS if r == round_id)
    out = {"schedule": round_id, "route": route_id, "team": route["team"], "checkpoints": len(offset),
           "flagged": sum(1 for _, _, card in taps if card not in KNOWN_CARDS), "first_tap": None}
    starts = [t for t in taps if planned - grace <= t[0] <= planned + max(window_min, duration_min) * 60]
    if not starts:
        return dict(out, status="not_started", visited=0, missed=list(route["checkpoints"]),
                    late_start=False, out_of_order=False)
    t0, cp0, _ = starts[0]
    anchor = t0 - offset[cp0]
    on_time = {}
    for t, cp, _ in taps:
        if anchor - grace <= t <= anchor + offset[cp] + grace and cp not in on_time:
            on_time[cp] = t
    missed = [cp for cp in route["checkpoints"] if cp not in on_time]
    order = [route["checkpoints"].index(cp) for cp, _ in sorted(on_time.items(), key=lambda kv: kv[1])]
    late_start = t0 > planned + window_min * 60
    status = ("missed" if missed else "out_of_order" if order != sorted(order) else "late" if late_start
              else "complete")
    return dict(out, status=status, visited=len(on_time), missed=missed, late_start=late_start,
                out_of_order=order != sorted(order), first_tap=t0)


def expected_summaries(rounds):
    groups = {}
    for r in rounds:
        g = groups.setdefault((r["route"], r["team"]), {"rounds": 0, "complete": 0, "late": 0, "out_of_order": 0,
                                                        "missed": 0, "not_started": 0, "planned": 0, "visits": 0,
                                                        "missed_checkpoints": {}})
        g["rounds"] += 1
        g[r["status"]] += 1
        g["planned"] += r["checkpoints"]
        g["visits"] += r["visited"]
        for cp in r["missed"]:
            g["missed_checkpoints"][cp] = g["missed_checkpoints"].get(cp, 0) + 1
    for g in groups.values():
        g["compliance_pct"] = round(100.0 * g["visits"] / g["planned"], 1)
    return groups


# -- the rig -------------------------------------------------------------------------------------

class Village:
    """Gateway (injected clock, config file) + one check-in point host board per checkpoint."""

    def __init__(self, work, broker, clock):
        self.clock = clock
        self.work = work
        raw = gateway_config(work, broker, gateway={"plugins": ["gateway.cases"]}, cases={"tick_s": 0.1},
                             log={"level": "warning", "format": "text"})
        self.config_path = write_config(work / "gateway.toml", raw)
        self.app = GatewayApp(load_config(self.config_path), clock=clock)
        os.makedirs(self.app.data_dir, mode=0o700, exist_ok=True)
        self.data = parse_village(village_text(), "village.toml")
        db = open_db(os.path.join(self.app.data_dir, "gateway.db"))
        import_village(db, self.data, "test_patrol_report")
        db.close()
        self.boards, self.boot = {}, {}
        self.app.start()
        try:
            for place, (dev, number) in DEVICES.items():
                key = os.urandom(32)
                self.app.registry.add_device(dev, "checkpoint", None, key=key)
                broker.add_device(dev, key)
                flash = work / ("cp-%x" % dev)
                provision_dir(str(flash), {"device_id": dev, "key": key, "role": "checkin", "broker_host": "127.0.0.1",
                                           "broker_port": broker.port, "checkpoint_id": number})
                self.boards[place] = HostBoard(str(flash), heap=HEAP, args=FAST).start()
            sync_registry(self.app.registry, self.data)
            devs = {dev: place for place, (dev, _) in DEVICES.items()}
            wait_for(lambda: self.boot.update({devs[e.device_id]: e.seq for e in self.events("boot")})
                     or set(self.boot) == set(self.boards), 60, "every check-in point's boot frame stored")
        except BaseException:
            self.stop()
            raise

    def events(self, kind, source=None):
        return [e for e in self.app.store.events_after(0, 100_000)
                if e.kind == kind and (source is None or e.source == source)]

    def checkins(self, place):
        return [e for e in self.events("checkin") if e.device_id == DEVICES[place][0]]

    def sync_clock(self, place, t):
        """Move the gateway's clock to t and give the board at `place` the new time: an ack carries it,
        and the chirp (siren pattern 3) sent after it on the same topic shows it was taken."""
        self.clock.set(t)
        dev, hb = DEVICES[place][0], self.boards[place]
        n = len(hb.buzzer_history())
        self.app.ctx.send_ack(dev, self.boot[place], 0)
        self.app.ctx.send_downlink(dev, 0x82, [True, 3, 0])
        wait_for(lambda: len(hb.buzzer_history()) > n, 15, "the board at %s to chirp after taking the time" % place)

    @staticmethod
    def _buzzer_quiet(hb, quiet_ms=300):
        reply = hb.request("buzzer", since=1 << 30)
        last = hb.buzzer_history(since=max(reply["count"] - 1, 0))
        return not reply["on"] and (not last or reply["now_ms"] - last[-1][0] >= quiet_ms)

    def tap(self, place, card, t):
        """At gateway time t, present `card` at `place` until its check-in is stored."""
        self.sync_clock(place, t)
        n = len(self.checkins(place))
        hb = self.boards[place]
        led_k = hb.request("led", since=1 << 30)["count"]
        hb.card(card)
        try:
            wait_for(lambda: len(self.checkins(place)) > n, 15, "check-in of card %s at %s stored" % (card, place))
        finally:
            hb.remove_card()
        # The board's "confirmed" (green flash, two beeps) for this check-in, and its beeps over:
        # otherwise they could come during the next sync_clock and pass for its chirp.
        wait_for(lambda: any(rgb == (0, 1, 0) for _t, rgb in hb.led_history(since=led_k)), 15,
                 "the board at %s to show the check-in confirmed" % place)
        wait_for(lambda: self._buzzer_quiet(hb), 5, "the board at %s to finish its confirmed beeps" % place)
        ev = self.checkins(place)[-1]
        assert ev.body == [DEVICES[place][1], bytes.fromhex(card)]
        assert t <= ev.device_time <= t + 10, "the board's clock follows the gateway's acks"
        return ev

    def stop(self):
        for hb in self.boards.values():
            hb.stop()
        self.app.stop()


@pytest.fixture
def host_only(hil_port):
    if hil_port:
        pytest.skip(reason="presents patrol cards through the host board's control channel, which a real "
                           "board on %s does not have" % hil_port)


@pytest.fixture
def village(host_only, tmp_path):
    broker = ProjectBroker(str(tmp_path / "broker")).start()
    try:
        v = Village(tmp_path, broker, ManualClock(local("19:50")))
        try:
            yield v
        finally:
            v.stop()
    finally:
        broker.stop()


def fengqiao(*args):
    exe = shutil.which("fengqiao", path=os.path.dirname(sys.executable))
    argv = [exe] if exe else [sys.executable, "-m", "tools.cli"]
    result = subprocess.run(argv + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, "fengqiao %s failed:\n%s%s" % (" ".join(args), result.stdout, result.stderr)
    return result.stdout


def html_section(page, route_name):
    """The HTML from the route's <h2> to the next <h2> (or the end)."""
    start = page.index("<h2>%s" % route_name)
    end = page.find("<h2>", start + 1)
    return page[start:end if end >= 0 else len(page)]


@pytest.mark.timeout(120)
def test_patrol_report_figures_match_the_scenario_walked_on_real_checkin_points(village, tmp_path):
    expected = [expected_round(r) for r in SCHEDULES]
    assert {r["schedule"]: r["status"] for r in expected} == INTENT, "the scenario no longer says what it means"
    summaries = expected_summaries(expected)

    for round_id, place, minutes, card in TAPS:
        village.tap(place, card, tap_time(round_id, minutes))
    village.clock.set(local(REPORT_END))
    keys = {"%s/%s/%s" % (r["schedule"], r["route"], DATE.isoformat()): r for r in expected}
    wait_for(lambda: keys.keys() <= {e.body["round"] for e in village.events("patrol_round_evaluated", "gateway")},
             15, "the gateway's end-of-round evaluation of all %d rounds" % len(keys))
    live = {e.body["round"]: e.body["status"] for e in village.events("patrol_round_evaluated", "gateway")
            if e.body["round"] in keys}
    assert live == {k: r["status"] for k, r in keys.items()}
    raised = sorted((e.body["round"], e.body["checkpoint"])
                    for e in village.events("patrol_missed_checkpoint", "gateway") if e.body["round"] in keys)
    assert raised == sorted((k, cp) for k, r in keys.items() if r["status"] == "missed" for cp in r["missed"])

    assert time.time() > local(REPORT_END), "the report runs on the system clock: every round must be over"
    out = tmp_path / "reports"
    stdout = fengqiao("report", "patrol", "--date", DATE.isoformat(), "--out", str(out),
                      "--config", village.config_path)

    # the CSV: one row per planned round of the date
    csv_path = out / ("patrol-%s.csv" % DATE.isoformat())
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = {row["schedule"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(SCHEDULES)
    for r in expected:
        row = rows[r["schedule"]]
        got = {"route": row["route"], "team": row["team"], "status": row["status"],
               "checkpoints": int(row["checkpoints"]), "visited": int(row["visited"]),
               "missed": row["missed_checkpoints"].split(), "late_start": row["late_start"] == "yes",
               "out_of_order": row["out_of_order"] == "yes", "flagged": int(row["flagged_checkins"])}
        assert got == {k: r[k] for k in got}, "round %s" % r["schedule"]
        assert row["date"] == DATE.isoformat() and row["village"] == "vil-dongshan"
        assert row["planned_start"] == SCHEDULES[r["schedule"]][1]
        if r["first_tap"] is None:
            assert row["started_at"] == ""
        else:                       # the board's time of the first tap: the gateway's time plus the seconds it took
            started = datetime.datetime.combine(DATE, datetime.time.fromisoformat(row["started_at"]), LOCAL).timestamp()
            assert r["first_tap"] <= started <= r["first_tap"] + 10, "round %s started at %s" % (
                r["schedule"], row["started_at"])

    # per route and team: from the CSV rows, and as the command prints them
    for (route, team), g in summaries.items():
        mine = [row for row in rows.values() if (row["route"], row["team"]) == (route, team)]
        counts = {s: sum(1 for row in mine if row["status"] == s)
                  for s in ("complete", "late", "out_of_order", "missed", "not_started")}
        assert len(mine) == g["rounds"] and counts == {s: g[s] for s in counts}, route
        visits, planned = sum(int(row["visited"]) for row in mine), sum(int(row["checkpoints"]) for row in mine)
        assert math.isclose(round(100.0 * visits / planned, 1), g["compliance_pct"]), route
        missed = {}
        for row in mine:
            for cp in row["missed_checkpoints"].split():
                missed[cp] = missed.get(cp, 0) + 1
        assert missed == g["missed_checkpoints"], route
        line = ("%s / %s: %d rounds, %d complete, %d late, %d out of order, %d missed, %d not started; "
                "compliance %.1f%%" % (route, team, g["rounds"], g["complete"], g["late"], g["out_of_order"],
                                       g["missed"], g["not_started"], g["compliance_pct"]))
        assert line in stdout.splitlines(), "summary line %r not printed:\n%s" % (line, stdout)
    assert summaries[("route-loop", "team-dongshan")]["compliance_pct"] == 87.5      # 14 of 16 visits, by hand
    assert summaries[("route-west", "team-west")]["compliance_pct"] == 0.0

    # the HTML page names each route, its compliance and the checkpoints missed
    html_path = out / ("patrol-%s.html" % DATE.isoformat())
    assert html_path.is_file()
    page = html_path.read_text(encoding="utf-8")
    names = {p["id"]: p["name"] for p in village.data["places"]}
    for (route, team), g in summaries.items():
        section = html_section(page, ROUTES[route]["name"])
        summary_row = re.search(r"<td>[0-9.]+ %</td><td>([^<]*)</td>", section)
        assert summary_row, "no summary row under %s" % ROUTES[route]["name"]
        assert "%.1f %%" % g["compliance_pct"] in summary_row.group(0)
        for cp, n in g["missed_checkpoints"].items():
            assert "%s (%d)" % (names[cp], n) in summary_row.group(1), (cp, summary_row.group(1))
        for cp in ROUTES[route]["checkpoints"]:
            if cp not in g["missed_checkpoints"]:
                assert names[cp] not in summary_row.group(1)
    assert "Primary school (1)" in html_section(page, ROUTES["route-loop"]["name"])   # the checkpoint Zhao skipped
