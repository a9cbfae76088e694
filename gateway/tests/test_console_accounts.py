"""Console accounts without a browser: argon2id hashes, sessions, lockout and backoff, the CLI."""

import subprocess
import sys

import pytest

from gateway.clock import ManualClock
from gateway.console.accounts import (AccountError, Accounts, LockedOut, LoginFailed, MAX_FAILURES,
                                      MAX_SOURCE_FAILURES, csrf_ok)
from gateway.village.db import open_db
from tools.testing.procs import REPO_ROOT


@pytest.fixture
def accounts(tmp_path):
    db = open_db(tmp_path / "gw.db")
    a = Accounts(db, ManualClock(1_800_000_000.0), session_ttl_s=3600)
    a.add_user("zhou", "correct horse", "officer", person_id="p-zhou-min")
    yield a
    db.close()


def test_password_is_an_argon2id_hash_and_the_token_is_not_stored(accounts):
    h, = accounts.db.execute("SELECT password_hash FROM console_users").fetchone()
    assert h.startswith("$argon2id$") and "correct horse" not in h
    s = accounts.login("zhou", "correct horse", "10.0.0.5")
    stored = [r[0] for r in accounts.db.execute("SELECT token_sha256 FROM console_sessions")]
    assert s.token not in stored and len(stored) == 1
    assert accounts.session(s.token).person_id == "p-zhou-min"
    assert csrf_ok(s, s.csrf) and not csrf_ok(s, "") and not csrf_ok(s, s.csrf[:-1] + "x")


def test_session_expires_and_passwd_or_disable_ends_it(accounts):
    s = accounts.login("zhou", "correct horse")
    accounts.clock.set(accounts.clock.now() + 3601)
    assert accounts.session(s.token) is None
    s = accounts.login("zhou", "correct horse")
    accounts.passwd("zhou", "battery staple")
    assert accounts.session(s.token) is None
    s = accounts.login("zhou", "battery staple")
    accounts.disable("zhou")
    assert accounts.session(s.token) is None
    with pytest.raises(LoginFailed):
        accounts.login("zhou", "battery staple")


def test_five_failures_lock_the_account_with_a_doubling_backoff(accounts):
    for _ in range(MAX_FAILURES):
        with pytest.raises(LoginFailed):
            accounts.login("zhou", "wrong", "10.0.0.5")
    with pytest.raises(LockedOut) as locked:
        accounts.login("zhou", "correct horse", "10.0.0.5")      # even the right password
    assert locked.value.retry_after_s == 30
    actions = [a for (a,) in accounts.db.execute("SELECT action FROM console_audit ORDER BY id")]
    assert "locked_out" in actions
    accounts.clock.set(accounts.clock.now() + 31)
    with pytest.raises(LoginFailed):
        accounts.login("zhou", "wrong again", "10.0.0.5")
    with pytest.raises(LockedOut) as locked:
        accounts.login("zhou", "correct horse", "10.0.0.5")
    assert locked.value.retry_after_s == 60                     # doubled
    accounts.clock.set(accounts.clock.now() + 61)
    assert accounts.login("zhou", "correct horse", "10.0.0.5").username == "zhou"


def test_one_source_guessing_many_accounts_backs_off_and_is_logged(accounts, caplog):
    accounts.add_user("wu", "another pw", "viewer")
    with caplog.at_level("WARNING", logger="fengqiao.console"):
        for i in range(MAX_SOURCE_FAILURES):                      # 5 guesses over 3 names from one address
            with pytest.raises(LoginFailed):
                accounts.login("guess%d" % (i % 3), "wrong", "10.0.0.9")
    assert any(r.getMessage() == "console login locked" and getattr(r, "fields", {}).get("key") == "source:10.0.0.9"
               for r in caplog.records)
    with pytest.raises(LockedOut) as locked:
        accounts.login("wu", "another pw", "10.0.0.9")           # a real account, from that address
    assert locked.value.key == "source:10.0.0.9" and locked.value.retry_after_s == 2
    assert accounts.login("wu", "another pw", "10.0.0.10").username == "wu"   # another address gets in
    waits = []
    for i in range(6):                                           # each further guess doubles the wait
        accounts.clock.set(accounts.clock.now() + (waits[-1] if waits else 2))
        with pytest.raises(LoginFailed):
            accounts.login("guess%d" % (i % 3), "wrong", "10.0.0.9")
        with pytest.raises(LockedOut) as locked:
            accounts.login("guess0", "wrong", "10.0.0.9")
        waits.append(locked.value.retry_after_s)
    assert waits == [4, 8, 16, 32, 64, 128]
    accounts.clock.set(accounts.clock.now() + 128)
    assert accounts.login("wu", "another pw", "10.0.0.9").username == "wu"   # the office gets back in


def test_bad_input_is_refused(accounts):
    with pytest.raises(AccountError):
        accounts.add_user("zhou", "another pw", "officer")
    with pytest.raises(AccountError):
        accounts.add_user("x", "short", "officer")
    with pytest.raises(AccountError):
        accounts.add_user("x", "long enough", "root")


@pytest.mark.timeout(60)
def test_cli_user_add_list_disable(tmp_path):
    db = str(tmp_path / "gw.db")
    open_db(db).close()
    pw = tmp_path / "pw"
    pw.write_text("a secret pw\n")

    def fq(*args):
        r = subprocess.run([sys.executable, "-m", "tools.cli", "console", "user"] + list(args) + ["--db", db],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    assert fq("add", "wu", "--role", "viewer", "--password-file", str(pw))[0] == 0
    code, out = fq("add", "wu", "--role", "viewer", "--password-file", str(pw))
    assert code == 1 and "exists" in out
    assert fq("disable", "wu")[0] == 0
    code, out = fq("list")
    assert "wu" in out and "disabled" in out and "a secret pw" not in out
    pw.write_text("a new secret\n")
    assert fq("passwd", "wu", "--password-file", str(pw))[0] == 0
    assert fq("enable", "wu")[0] == 0
    conn = open_db(db)
    try:
        a = Accounts(conn, ManualClock(1_800_000_000.0))
        with pytest.raises(LoginFailed):
            a.login("wu", "a secret pw")
        assert a.login("wu", "a new secret").role == "viewer"
    finally:
        conn.close()
