"""`fengqiao gateway init | device add | revoke | list | place add` and the sample config."""

import os
import stat
import subprocess
import sys

import pytest

from gateway.broker import ProjectBroker
from gateway.config import ConfigError, from_dict, load_config
from gateway.tests.conftest import TestClient, write_config
from tools.testing.procs import REPO_ROOT, wait_for

SAMPLE = os.path.join(REPO_ROOT, "gateway", "gateway.sample.toml")


def fq(*args):
    return subprocess.run([sys.executable, "-m", "tools.cli", "gateway", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_toml_syntax_errors_give_line_and_column(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\ndata_dir = "x\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2:14: TOML syntax: Illegal character"):
        load_config(str(bad))
    bad.write_text('[gateway]\nplugins = ["gateway.cases",\n')  # "at end of document" in tomllib
    r = fq("init", "--config", str(bad))
    assert r.returncode == 1 and r.stderr.strip() == "fengqiao: %s:3:1: TOML syntax: Invalid value" % bad, r.stderr


def test_sample_config_loads_and_typos_are_errors():
    cfg = load_config(SAMPLE)
    assert cfg["supervision"]["default_heartbeat_interval_s"] * cfg["supervision"]["offline_factor"] \
        + cfg["supervision"]["check_interval_s"] <= 90
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict({"pipeline": {"max_btach": 5}})
    with pytest.raises(ConfigError, match="must be a int"):
        from_dict({"pipeline": {"max_batch": "5"}})


@pytest.mark.timeout(120)
def test_device_add_revoke_reload_running_broker(tmp_path):
    broker = ProjectBroker(tmp_path / "gw" / "broker").start()
    try:
        cfg = write_config(tmp_path / "g.toml", {
            "gateway": {"data_dir": str(tmp_path / "gw")},
            "broker": {"manage": False, "port": broker.port, "tls_port": broker.tls_port}})
        r = fq("init", "--config", cfg)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(tmp_path / "gw" / "master.key").st_mode) == 0o600
        assert fq("place", "add", "--config", cfg, "--id", "c1", "--level", "county", "--name", "County").returncode == 0
        r = fq("device", "add", "--config", cfg, "--id", "0000002A", "--role", "alarm", "--place", "c1",
               "--key-out", str(tmp_path / "a.key"))
        assert r.returncode == 0 and "broker reloaded" in r.stdout and not r.stderr, r.stderr
        key_a = bytes.fromhex((tmp_path / "a.key").read_text())
        assert key_a.hex() not in r.stdout + r.stderr
        (tmp_path / "b.key").write_bytes(bytes(range(32)))
        old_word = fq("device", "add", "--config", cfg, "--id", "0000002b", "--role", "checkpoint",
                      "--key-file", str(tmp_path / "b.key"))  # the registry's name: accepted, with a note
        assert old_word.returncode == 0 and "say --role checkin" in old_word.stderr, old_word.stderr
        a = TestClient(broker.port, *broker.device_credentials(0x2A, key_a))
        b = TestClient(broker.port, *broker.device_credentials(0x2B, bytes(range(32))))
        assert a.connect() and b.connect()
        r = fq("device", "revoke", "--config", cfg, "--id", "0000002a")
        assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
        wait_for(a.disconnected.is_set, 10, "revoked device to be dropped")
        again = TestClient(broker.port, *broker.device_credentials(0x2A, key_a))
        assert not again.connect()
        assert not b.disconnected.is_set()
        listing = fq("device", "list", "--config", cfg).stdout
        assert "0000002a alarm    revoked" in listing and "0000002b checkin  active" in listing, listing
        typo = fq("device", "add", "--config", cfg, "--id", "0000002c", "--role", "button", "--key-out", "x.key")
        assert typo.returncode == 2 and "choose alarm or checkin" in typo.stderr
        bad = fq("device", "add", "--config", cfg, "--id", "xyz", "--role", "checkin", "--key-out", str(tmp_path / "c.key"))
        assert bad.returncode == 1 and bad.stderr.startswith("fengqiao: --id")
        dup = fq("device", "add", "--config", cfg, "--id", "0000002b", "--role", "checkin", "--key-out", str(tmp_path / "d.key"))
        assert dup.returncode == 1 and "already exists" in dup.stderr
        for c in (a, b, again):
            c.close()
    finally:
        broker.stop()
