"""`fengqiao report patrol | alarms` on a scenario whose figures are known, and `fengqiao case ...`."""

import csv
import datetime
import json

import pytest

from gateway.cases.service import CaseService
from gateway.clock import ManualClock
from gateway.patrol import rounds
from gateway.patrol.service import PatrolService
from gateway.village.testing import EventMaker, StubContext, sample_db
from tools.cli import main

DATE = datetime.date(2026, 3, 14)
MIDNIGHT = rounds.local_midnight(DATE, 8 * 3600)
POINTS = [("cp-gate", 0x301, 101), ("cp-school", 0x302, 102), ("cp-well", 0x303, 103), ("cp-temple", 0x304, 104)]


@pytest.fixture
def patrol_db(tmp_path):
    """02:00 round walked completely; 21:00 round with the school skipped and an unknown card at the hall."""
    clock = ManualClock(MIDNIGHT)
    path = tmp_path / "g.db"
    svc = PatrolService(sample_db(path), clock)
    mk = EventMaker(clock)
    early, late = MIDNIGHT + 2 * 3600 + 300, MIDNIGHT + 21 * 3600 + 600
    for i, (place, dev, number) in enumerate(POINTS):
        clock.set(early + i * 600)
        svc.on_event(mk.checkin(dev, number, "04a1b2c3"))
        if place != "cp-school":
            clock.set(late + i * 600)
            svc.on_event(mk.checkin(dev, number, "0499aabb" if place != "cp-temple" else "cafebabe"))
    clock.set(MIDNIGHT + 86400 + 6 * 3600)
    svc.tick()
    svc.db.close()
    return path


def test_patrol_report_figures_match_the_scenario(patrol_db, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["report", "patrol", "--date", "2026-03-14", "--db", str(patrol_db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "route-night / team-dongshan: 2 rounds, 1 complete, 0 late, 0 out of order, 1 missed, 0 not started; " \
           "compliance 87.5%" in printed
    with open(out / "patrol-2026-03-14.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["schedule"], r["planned_start"], r["status"], r["visited"], r["missed_checkpoints"],
             r["flagged_checkins"]) for r in rows] == [
        ("night-late", "02:00", "complete", "4", "", "0"),
        ("night-early", "21:00", "missed", "3", "cp-school", "1")]
    assert rows[0]["started_at"] == "02:05:00" and rows[1]["started_at"] == "21:10:00"
    page = (out / "patrol-2026-03-14.html").read_text()
    assert "Night loop: gate, school, well, ancestral hall" in page and "Dongshan red-armband patrol" in page
    assert "87.5 %" in page and "Primary school (1)" in page and "unknown_card" in page and "Wang Qiang" in page
    assert main(["report", "patrol", "--date", "2026-03-14", "--village", "vil-dongshan", "--db", str(patrol_db),
                 "--out", str(out)]) == 0
    assert (out / "patrol-2026-03-14-vil-dongshan.csv").exists()


def test_patrol_report_refuses_bad_arguments(patrol_db, tmp_path, capsys):
    assert main(["report", "patrol", "--date", "14/03/2026", "--db", str(patrol_db)]) == 1
    assert main(["report", "patrol", "--date", "2026-03-14", "--village", "grid-east", "--db", str(patrol_db)]) == 1
    assert main(["report", "patrol", "--date", "2026-03-14", "--db", str(tmp_path / "missing.db")]) == 1
    err = capsys.readouterr().err
    assert "YYYY-MM-DD" in err and "not a village" in err and "no gateway database" in err


def test_patrol_report_defaults_to_today_and_finds_the_gateway_config(patrol_db, tmp_path, capsys, monkeypatch):
    from gateway import config
    from gateway.config import write_config
    from gateway.village.testing import sample_db  # noqa: F401 (the sample schedules run every day)

    monkeypatch.delenv("FENGQIAO_CONFIG", raising=False)
    monkeypatch.delenv("FENGQIAO_DB", raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "etc" / "gateway.toml"))
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["report", "patrol", "--out", "r"]) == 1
    err = capsys.readouterr().err
    assert "say which gateway" in err and "./gateway.toml" in err and "FENGQIAO_CONFIG" in err, err

    # The config in the current directory; relative paths in it are relative to it.
    write_config(tmp_path / "gateway.toml", {"gateway": {"data_dir": ".", "database": "g.db"}})
    monkeypatch.chdir(tmp_path)
    assert main(["report", "patrol", "--out", "r"]) == 0
    today = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=8))).date()  # sample: UTC+8
    assert (tmp_path / "r" / ("patrol-%s.csv" % today.isoformat())).exists()
    assert main(["case", "list"]) == 0

    # Then $FENGQIAO_CONFIG wins over ./gateway.toml (and says so when it is not there) ...
    monkeypatch.setenv("FENGQIAO_CONFIG", str(tmp_path / "nope.toml"))
    assert main(["case", "list"]) == 1
    assert "no config file %s" % (tmp_path / "nope.toml") in capsys.readouterr().err
    # ... and /etc/fengqiao/gateway.toml is the last place looked.
    monkeypatch.delenv("FENGQIAO_CONFIG")
    monkeypatch.chdir(empty)
    (tmp_path / "etc").mkdir()
    write_config(config.SYSTEM_CONFIG, {"gateway": {"data_dir": str(tmp_path), "database": "g.db"}})
    assert main(["report", "patrol", "--date", "2026-03-14", "--out", "r"]) == 0
    assert (empty / "r" / "patrol-2026-03-14.csv").exists()


@pytest.fixture
def cases_db(tmp_path):
    """Case 1: ack after 40 s, closed after 600 s. Case 2: cancelled after 10 s. Case 3: open, escalated."""
    clock = ManualClock(MIDNIGHT + 10 * 3600)
    path = tmp_path / "g.db"
    svc = CaseService(sample_db(path), clock)
    ctx = StubContext(clock)
    mk = EventMaker(clock)
    t0 = clock.now()
    c1 = svc.on_event(mk.alarm(0x101, 1))
    svc.flush(ctx)
    clock.set(t0 + 40)
    svc.acknowledge(c1, "p-chen-li")
    svc.flush(ctx)
    clock.set(t0 + 600)
    svc.close(c1, "p-chen-li", "stove fire out")
    clock.set(t0 + 3600)
    alarm = mk.alarm(0x201, 0)
    svc.on_event(alarm)
    clock.set(t0 + 3610)
    svc.on_event(mk.cancel(0x201, alarm.seq))
    clock.set(t0 + 7200)
    svc.on_event(mk.alarm(0x102, 3))
    clock.set(t0 + 7200 + 301)
    svc.check_deadlines()
    svc.flush(ctx)
    svc.db.close()
    return path


def test_alarm_report_step_times(cases_db, tmp_path, capsys):
    assert main(["report", "alarms", "--from", "2026-03-14", "--to", "2026-03-15", "--db", str(cases_db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["case"]: r for r in report["cases"]}
    assert (rows[1]["to_dispatch_s"], rows[1]["to_acknowledge_s"], rows[1]["to_feedback_s"], rows[1]["to_close_s"]) \
        == (0, 40, 40, 600)
    assert rows[2]["status"] == "cancelled" and rows[2]["to_close_s"] == 10 and rows[2]["to_acknowledge_s"] is None
    assert rows[3]["status"] == "open" and rows[3]["escalated_to"] == "township"
    s = report["summary"]
    assert s["cases"] == 3 and s["by_status"] == {"open": 1, "acknowledged": 0, "closed": 1, "cancelled": 1}
    assert s["to_close_s"] == {"count": 2, "median": 305, "p90": 600, "max": 600}
    assert s["escalated_township"] == 1 and s["escalated_county"] == 0
    csv_path = tmp_path / "alarms.csv"
    assert main(["report", "alarms", "--from", "2026-03-14T10:00", "--to", "2026-03-14T11:00", "--db", str(cases_db),
                 "--csv", str(csv_path)]) == 0
    text = capsys.readouterr().out
    assert "1 cases (open 0, acknowledged 0, closed 1, cancelled 0)" in text
    with open(csv_path, newline="") as f:
        only = list(csv.DictReader(f))
    assert [(r["case"], r["to_acknowledge_s"], r["acknowledged_by"]) for r in only] == [("1", "40.0", "p-chen-li")]
    assert main(["report", "alarms", "--from", "2026-03-15", "--to", "2026-03-14", "--db", str(cases_db)]) == 1


def test_case_commands(cases_db, capsys):
    db = ["--db", str(cases_db)]
    assert main(["case", "list"] + db) == 0
    out = capsys.readouterr().out
    assert "intrusion" in out and "township" in out and "stove" not in out and len(out.strip().splitlines()) == 2
    assert main(["case", "list", "--status", "all", "--json"] + db) == 0
    assert [c["status"] for c in json.loads(capsys.readouterr().out)] == ["open", "cancelled", "closed"]
    assert main(["case", "show", "1"] + db) == 0
    out = capsys.readouterr().out
    for text in ("case 1: closed fire alarm, level 4, hh-e01", "acknowledged   p-chen-li", "note: stove fire out",
                 "feedback"):
        assert text in out
    assert main(["case", "dispatch", "3", "--to", "p-wu-fang", "--by", "p-zhou-min"] + db) == 0
    assert main(["case", "ack", "3", "--by", "p-wu-fang", "--note", "at the gate"] + db) == 0
    assert main(["case", "ack", "3", "--by", "p-wu-fang"] + db) == 1
    assert main(["case", "close", "3", "--by", "p-wu-fang", "--note", "stray dog, no intruder"] + db) == 0
    assert main(["case", "close", "3", "--by", "p-wu-fang", "--note", "again"] + db) == 1
    assert main(["case", "ack", "99", "--by", "p-wu-fang"] + db) == 1
    assert main(["case", "ack", "3", "--by", "someone"] + db) == 1
    err = capsys.readouterr().err
    assert "already acknowledged" in err and "is closed" in err and "no case 99" in err and "no person 'someone'" in err
    assert main(["case", "show", "3", "--json"] + db) == 0
    case = json.loads(capsys.readouterr().out)
    assert [(s["step"], s["actor"]) for s in case["steps"]][-3:] == [
        ("dispatched", "p-zhou-min"), ("acknowledged", "p-wu-fang"), ("closed", "p-wu-fang")]
    assert case["pending_effects"] > 0           # waiting for the gateway to send them
    assert main(["case", "list"]) == 1           # which gateway? refused with a message
