"""A damaged database is found at start (issue 14): a named StoreDamaged, no traceback, exit 1."""

import os
import subprocess
import sys

import pytest

from gateway.clock import ManualClock
from gateway.store import EventStore, StoreDamaged, check_database
from gateway.tests.conftest import write_config
from tools.testing.procs import REPO_ROOT


def make_db(path, n=1000):
    store = EventStore(path, ManualClock(1_700_000_000.0), synchronous="NORMAL")
    for i in range(n):
        store.append_gateway_event("note", {"i": i, "pad": "x" * 100})
    store.close()   # the last connection checkpoints the WAL into the file
    assert not os.path.exists(str(path) + "-wal") or os.path.getsize(str(path) + "-wal") == 0
    return path


def zero_length(p):
    open(p, "wb").close()


def random_start(p):
    with open(p, "r+b") as f:
        f.write(os.urandom(64))


def truncated(p):
    os.truncate(p, os.path.getsize(p) // 2)


def garbage_middle(p):
    with open(p, "r+b") as f:
        f.seek(os.path.getsize(p) // 2)
        f.write(os.urandom(4096))


@pytest.mark.parametrize("damage, words", [
    (zero_length, "empty"), (random_start, "SQLite header"), (truncated, "truncated"),
    (garbage_middle, "quick_check|malformed")])
def test_damage_is_named(tmp_path, damage, words):
    db = make_db(tmp_path / "gateway.db")
    assert check_database(db) is True
    damage(db)
    with pytest.raises(StoreDamaged, match=words) as info:
        check_database(db)
    assert "restore the last backup" in str(info.value) and "--new-chain" in str(info.value)


def test_missing_file_is_not_damage(tmp_path):
    assert check_database(tmp_path / "none.db") is False


def test_cli_prints_it_without_traceback(tmp_path):
    os.makedirs(tmp_path / "gw")
    db = make_db(tmp_path / "gw" / "gateway.db")
    garbage_middle(db)
    cfg = write_config(tmp_path / "g.toml", {"gateway": {"data_dir": str(tmp_path / "gw")},
                                             "broker": {"manage": False, "port": 1, "tls_port": 2}})
    r = subprocess.run([sys.executable, "-m", "tools.cli", "gateway", "run", "--config", cfg], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "is damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_backup_while_the_gateway_writes(tmp_path):
    import threading

    from gateway.store import backup_database

    os.makedirs(tmp_path / "gw")
    db = make_db(tmp_path / "gw" / "gateway.db", n=200)
    store = EventStore(db, ManualClock(1_700_000_000.0))   # synchronous=FULL, as the gateway runs
    stop, written = threading.Event(), []

    def writer():
        while not stop.is_set():
            written.append(store.append_gateway_event("note", {"pad": "y" * 200}).event_id)

    t = threading.Thread(target=writer)
    t.start()
    try:
        from tools.testing.procs import wait_for
        wait_for(lambda: len(written) > 50, 20, "the writer to commit")
        cfg = write_config(tmp_path / "g.toml", {"gateway": {"data_dir": str(tmp_path / "gw")}})
        r = subprocess.run([sys.executable, "-m", "tools.cli", "gateway", "backup", "--config", cfg,
                            str(tmp_path / "b1.db")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        n_during = len(written)
        count, head = backup_database(db, tmp_path / "b2.db")
        wait_for(lambda: len(written) > n_during + 20, 20, "the writer to go on after the backups")
    finally:
        stop.set()
        t.join()
        store.close()
    assert "quick_check ok" in r.stdout
    for name in ("b1.db", "b2.db"):
        assert check_database(tmp_path / name) is True
        copy = EventStore(tmp_path / name, ManualClock(0.0))
        n = copy.count()
        assert n >= 250 and copy.verify_chain() == n and copy.head()[0] == n   # a whole prefix of the chain
        copy.close()
    assert head == count and head < 200 + len(written)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "gateway", "backup", "--config", cfg,
                        str(tmp_path / "b1.db")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not overwriting" in r.stderr
