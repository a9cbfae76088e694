"""The protocol benches run through the real CLI and print one JSON object as the last line.
(Sizes are exact figures, not timings; the fuzz rate is printed, never asserted.)"""

import json

import pytest

from tools import cli


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_bench_frames_sizes(capsys):
    assert cli.main(["bench", "frames", "--json"]) == 0
    result = _last_json(capsys)
    assert (result["alarm"], result["checkin_uid7"], result["heartbeat"]) == (33, 43, 48)
    assert result["fits"] is True and max(result["alarm"], result["checkin_uid7"], result["heartbeat"]) <= 51


@pytest.mark.timeout(120)
def test_bench_fuzz_short_run(capsys):
    assert cli.main(["bench", "fuzz", "--cases", "3000", "--seed", "5", "--json"]) == 0
    result = _last_json(capsys)
    assert result["cases"] == 3000 and result["crashes"] == 0 and result["reproducers"] == []
    assert sum(result["outcomes"].values()) == 3000
    assert result["cases_per_s"] > 0


def test_bench_fuzz_reports_a_crash_with_its_reproducer(capsys, monkeypatch):
    from protocol import fuzz

    def broken(data, topic, downlink):
        raise KeyError("simulated decoder bug")

    monkeypatch.setattr(fuzz, "run_case", broken)
    assert cli.main(["bench", "fuzz", "--cases", "3", "--json"]) == 1
    result = _last_json(capsys)
    assert result["crashes"] == 3 and len(result["reproducers"]) == 3
    first = result["reproducers"][0]
    assert set(first) == {"case", "error", "frame", "topic", "downlink"} and "simulated decoder bug" in first["error"]
    bytes.fromhex(first["frame"])  # the reproducer is the frame in hex


def test_spec_sizes_table_matches_the_bench():
    import os

    from protocol import bench_frames

    sizes = bench_frames.measure()
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "SPEC.md")) as f:
        spec = f.read()
    table = spec[spec.index("## 7. Sizes"):spec.index("## 8. Errors")]
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in table.splitlines() if line.startswith("| `")}
    assert rows["`alarm`, `tamper`"] == "%d" % sizes["alarm"] == "%d" % sizes["tamper"]
    checkin = next(v for k, v in rows.items() if k.startswith("`checkin`"))
    assert checkin == "%d / %d / %d" % (sizes["checkin_uid4"], sizes["checkin_uid7"], sizes["checkin_uid10"])
    assert next(v for k, v in rows.items() if k.startswith("`heartbeat` worst")) == "%d" % sizes["heartbeat_worst"]
    assert next(v for k, v in rows.items() if k.startswith("`heartbeat` typical")) == "%d" % sizes["heartbeat_typical"]
    assert rows["`ack` / `siren` (worst)"] == "%d / %d" % (sizes["ack"], sizes["siren"])
    assert next(v for k, v in rows.items() if k.startswith("`config`")) == "%d" % sizes["config_4_settings"]
