"""Village TOML: the sample is valid; bad files are refused whole with line + field; imports are atomic."""

import sqlite3

import pytest

from gateway.village.config import ConfigInvalid, parse_village
from gateway.village.db import Directory, import_id, import_village, load_directory, open_db
from gateway.village.testing import sample_text
from gateway.village.tomlpos import KeyLines
from tools.cli import main


def line_of(text, needle, after=None):
    """1-based line of the first line containing `needle` (after the line containing `after`)."""
    lines = text.splitlines()
    start = 0
    if after is not None:
        start = next(i for i, l in enumerate(lines) if after in l) + 1
    return next(i for i in range(start, len(lines)) if needle in lines[i]) + 1


def refused(text):
    with pytest.raises(ConfigInvalid) as info:
        parse_village(text, "v.toml")
    return info.value.errors


def test_sample_village_is_valid_and_complete():
    data = parse_village(sample_text(), "sample_village.toml")
    d = Directory.from_data(data)
    kinds = [p["kind"] for p in data["places"]]
    assert kinds.count("household") == 7 and kinds.count("checkpoint") == 4
    assert {g["id"]: len(g["households"]) for g in data["groups"]} == {"jd-east": 4, "jd-west": 3}
    assert d.routes["route-night"]["checkpoints"] == ["cp-gate", "cp-school", "cp-well", "cp-temple"]
    assert [lv["level"] for lv in data["severity_levels"]] == [1, 2, 3, 4, 5]
    assert d.card_owner["04112233445566"] == "p-zhao-lei"   # "04:11:..." normalised
    assert d.grid_member_for("hh-e02") == "p-chen-li" and d.grid_member_for("hh-w01") == "p-wu-fang"
    assert d.duty_officers_for("hh-w01") == ["p-zhou-min"]
    assert d.checkpoint_place[103] == "cp-well"
    assert 0x101 in d.devices and d.devices[0x101]["role"] == "alarm_button"
    assert 200 < d.distance_m("cp-gate", "cp-school") < 400


def test_errors_name_line_and_field_and_all_are_reported():
    text = sample_text()
    bad = (text.replace('cards = ["0499aabb"]', 'cards = ["0499aab"]')
               .replace('parent = "grid-west"\nname = "Ancestral hall"', 'parent = "vil-dongshan"\nname = "Ancestral hall"')
               .replace('start = "02:00"', 'start = "26:00"')
               .replace('households = ["hh-w01", "hh-w02", "hh-w03"]', 'households = ["hh-w01", "hh-e02", "cp-gate"]'))
    errors = refused(bad)
    expect = [
        "v.toml:%d: person[6].cards[0]: card UID '0499aab'" % line_of(bad, 'cards = ["0499aab"]'),
        "v.toml:%d: place[15].parent: parent 'vil-dongshan' is a village" % line_of(
            bad, 'parent = "vil-dongshan"', after='id = "cp-temple"'),
        "v.toml:%d: schedule[1].start: invalid value '26:00'" % line_of(bad, 'start = "26:00"'),
        "v.toml:%d: group[1].households[1]: household 'hh-e02' is already in group 'jd-east'" % line_of(
            bad, 'households = ["hh-w01", "hh-e02"'),
        "v.toml:%d: group[1].households[2]: place 'cp-gate' is a checkpoint, not a household" % line_of(
            bad, 'households = ["hh-w01", "hh-e02"'),
    ]
    for e in expect:
        assert any(err.startswith(e) for err in errors), (e, errors)
    assert len(errors) == len(expect), errors


def test_device_roles_in_the_words_people_type_and_the_registry_names():
    text = sample_text()
    assert 'role = "alarm"' in text and 'role = "checkin"' in text and "alarm_button" not in text
    old_words = text.replace('role = "alarm"', 'role = "alarm_button"').replace('role = "checkin"', 'role = "checkpoint"')
    a, b = parse_village(text, "new.toml"), parse_village(old_words, "old.toml")
    assert a["devices"] == b["devices"] and {d["role"] for d in a["devices"]} == {"alarm_button", "checkpoint"}
    errors = refused(text.replace('role = "alarm"', 'role = "siren"', 1))
    assert any("role" in e and "alarm or checkin" in e for e in errors), errors


@pytest.mark.parametrize("old,new,field,message", [
    ('id = "hh-e04"', 'id = "hh-e03"', "place[8].id", "duplicate place id 'hh-e03'"),
    ('expected_min = [0, 10, 20, 30]', 'expected_min = [0, 10, 30]', "route[0].expected_min", "has 3 entries"),
    ('expected_min = [0, 10, 20, 30]', 'expected_min = [0, 20, 10, 30]', "route[0].expected_min", "never decrease"),
    ('max_duration_min = 60', 'max_duration_min = 20', "schedule[0].max_duration_min", "shorter than the route"),
    ('role = "grid_member"\nplace = "grid-east"', 'role = "grid_member"\nplace = "hh-e01"', "person[0].place",
     "is a household, expected grid"),
    ('team = "team-dongshan"\ncards = ["04a1b2c3"]', 'team = "team-x"\ncards = ["04a1b2c3"]', "person[4].team",
     "no team with id 'team-x'"),
    ('cards = ["0499aabb"]', 'cards = ["04a1b2c3"]', "person[6].cards[0]", "already belongs to 'p-wang-qiang'"),
    ('kind = "fire"\nplace = "hh-w03"', 'kind = "flood"\nplace = "hh-w03"', "severity.rule[4].kind", "invalid value 'flood'"),
    ('checkpoint = 104', 'checkpoint = 103', "place[15].checkpoint", "already used by 'cp-well'"),
    ('id = "00000304"', 'id = "0000030g"', "device[10].id", "8 hex digits"),
    ('role = "checkin"\nplace = "cp-gate"', 'role = "checkin"\nplace = "hh-e01"', "device[7].place",
     "is a household, expected checkpoint"),
    ('clock_tolerance_s = 120', 'clock_tolerance_s = 120\nwalking = 5', "patrol.walking", "unknown field"),
    ('township_deadline_s = 600', 'township_deadline_s = 100', "severity.level[3].township_deadline_s",
     "must be later than village_deadline_s"),
])
def test_each_rule_is_checked_with_its_line(old, new, field, message):
    text = sample_text()
    assert old in text
    bad = text.replace(old, new, 1)
    errors = refused(bad)
    hits = [e for e in errors if (": %s: " % field) in e and message in e]
    assert hits, errors
    line = int(hits[0].split(":")[1])
    key = [part for part in field.replace("]", "").replace("[", ".").split(".") if not part.isdigit()][-1]
    assert bad.splitlines()[line - 1].strip().startswith(key + " ="), (line, bad.splitlines()[line - 1])


def test_missing_severity_level_and_required_fields():
    text = sample_text()
    start = text.index("[[severity.level]]\nlevel = 3")
    end = text.index("[[severity.level]]", start + 5)
    errors = refused(text[:start] + text[end:])
    assert any("severity.level: levels 3 missing" in e for e in errors), errors
    errors = refused('[[place]]\nid = "c"\nname = "no kind"\n')
    assert errors == ["v.toml:1: place[0].kind: missing (required)"]


def test_toml_syntax_error_names_its_line_and_column():
    errors = refused('format = 1\n[[place]]\nid = "x"\nkind = county\n')
    assert errors == ["v.toml:4:8: TOML syntax: Invalid value"], errors
    # tomllib says only "at end of document" for an unclosed string: the position is still given.
    errors = refused('format = 1\nname = "Dongshan')
    assert errors == ["v.toml:2:17: TOML syntax: Unterminated string"], errors


def test_keylines_handles_nested_tables_multiline_arrays_and_dotted_keys():
    text = '\n'.join([
        'a = 1',                     # 1
        '[[route]]',                 # 2
        'id = "r1"',                 # 3
        'checkpoints = [',           # 4
        '  "x", # comment [',        # 5
        '  "y",',                    # 6
        ']',                         # 7
        'after = 2',                 # 8
        '[[route.stop]]',            # 9
        'name = "s0"',               # 10
        '[[route]]',                 # 11
        'id = "r2"',                 # 12
        '[[route.stop]]',            # 13
        'name = "t0"',               # 14
        '[severity]',                # 15
        'x.y = 3',                   # 16
        'note = """two',             # 17
        'id = not a key"""',         # 18
        'z = 4',                     # 19
    ])
    k = KeyLines(text)
    assert k.line(("a",)) == 1
    assert k.line(("route", 0, "checkpoints")) == 4
    assert k.line(("route", 0, "checkpoints", 1)) == 4
    assert k.line(("route", 0, "after")) == 8
    assert k.line(("route", 0, "stop", 0, "name")) == 10
    assert k.line(("route", 1, "id")) == 12
    assert k.line(("route", 1, "stop", 0, "name")) == 14
    assert k.line(("severity", "x", "y")) == 16
    assert k.line(("severity", "z")) == 19
    assert k.line(("severity", "id")) == 15      # not found: falls back to the table header
    assert k.line(("nothing",)) is None


def test_import_replaces_everything_in_one_transaction(tmp_path):
    db = open_db(tmp_path / "g.db")
    data = parse_village(sample_text(), "s")
    assert import_village(db, data, "s") == 1
    before = load_directory(db)
    broken = parse_village(sample_text(), "s")
    broken["people"][1]["cards"] = ["04a1b2c3"]       # bypasses validation: violates the card primary key
    with pytest.raises(sqlite3.IntegrityError):
        import_village(db, broken, "broken")
    after = load_directory(db)
    assert import_id(db) == 1
    assert after.people == before.people and after.places == before.places and after.devices == before.devices
    smaller = parse_village(sample_text(), "s")
    smaller["routes"], smaller["schedules"] = [], []
    assert import_village(db, smaller, "s2") == 2
    assert load_directory(db).routes == {}


def test_cli_refuses_invalid_file_and_keeps_the_old_configuration(tmp_path, capsys):
    db_file = tmp_path / "g.db"
    good = tmp_path / "village.toml"
    good.write_text(sample_text(), encoding="utf-8")
    assert main(["registry", "import", str(good), "--db", str(db_file)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(sample_text().replace('name = "Chen Li"', 'name = 42').replace('level = 4\n\n[[severity.rule]]\nkind = "medical"\nlevel = 3',
                                                                                     'level = 9\n\n[[severity.rule]]\nkind = "medical"\nlevel = 3'),
                   encoding="utf-8")
    capsys.readouterr()
    assert main(["registry", "import", str(bad), "--db", str(db_file)]) == 1
    err = capsys.readouterr().err
    assert "refused, nothing imported" in err
    assert "bad.toml:%d: person[0].name: invalid value 42" % line_of(bad.read_text(), "name = 42") in err
    assert "severity.rule[0].level: invalid value 9" in err
    d = load_directory(open_db(db_file))
    assert d.people["p-chen-li"]["name"] == "Chen Li" and d.import_id == 1
    assert main(["registry", "import", str(bad), "--check"]) == 1
    assert main(["registry", "import", str(good), "--check"]) == 0
    assert "is valid" in capsys.readouterr().out


def test_cli_import_writes_places_and_device_placements_to_the_registry(tmp_path, capsys):
    from gateway.registry import Registry

    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[gateway]\ndata_dir = "data"\n', encoding="utf-8")
    (tmp_path / "data").mkdir(mode=0o700)
    reg = Registry(tmp_path / "data" / "gateway.db", tmp_path / "data" / "master.key")
    reg.add_device(0x101, "alarm_button")
    reg.add_device(0x301, "checkpoint")
    reg.close()
    village = tmp_path / "village.toml"
    village.write_text(sample_text(), encoding="utf-8")
    assert main(["registry", "import", str(village), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "16 places written, 2 devices moved" in out and "00000102" in out
    reg = Registry(tmp_path / "data" / "gateway.db", tmp_path / "data" / "master.key")
    assert reg.device(0x101).place_id == "hh-e01" and reg.device(0x301).place_id == "cp-gate"
    assert [p.place_id for p in reg.place_path("hh-e02")] == ["county-anji", "tsp-qiaotou", "vil-dongshan",
                                                              "grid-east", "hh-e02"]
    reg.add_device(0x102, "checkpoint")        # registered with a role the file contradicts
    reg.close()
    assert main(["registry", "import", str(village), "--config", str(cfg)]) == 1
    assert "registered as checkpoint, the file says alarm_button" in capsys.readouterr().err
    d = load_directory(open_db(tmp_path / "data" / "gateway.db"))
    assert d.import_id == 1
    assert d.devices[0x101]["status"] == "active" and d.devices[0x103]["status"] == "planned"
    assert d.devices_in(["hh-e01", "hh-e03"]) == [0x101]    # planned devices are not sent to once a registry exists
