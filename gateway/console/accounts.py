"""Console accounts, sessions and login lockout, in the gateway's SQLite file (own tables).

    accounts = Accounts(db, clock)
    accounts.add_user("zhou", "secret", "officer", person_id="p-zhou-min")   # passwd(), disable()
    session = accounts.login("zhou", "secret", source="127.0.0.1")         # -> Session or raises
    accounts.session(token)                                                 # -> Session or None
    accounts.logout(token)

Passwords are hashed with argon2id (argon2-cffi's PasswordHasher, its default parameters).
A session token is 32 random bytes sent once in an HttpOnly, SameSite=Strict cookie; only its
SHA-256 is stored, so a copy of the database opens no session. Each session has its own CSRF
token (checked on every POST) and an absolute expiry.

Lockout: 5 failed logins for one account within LOCK_WINDOW_S lock that account for 30 s,
doubling with each further failure up to 15 minutes. 5 failed logins from one source address (any
accounts) make that address back off too, from 2 s, doubling likewise up to 15 minutes: short at
first because a township office's PCs may share one address (a colleague's typos cost the others
seconds, not the shift), as long as a guesser's after a dozen tries. The
lockout is logged (`fengqiao.console` warning) and kept in `console_audit`. A locked account is
refused even with the right password (that is the point: guessing gets no answers).

Roles: `viewer` reads, `officer` reads and acts on cases, `admin` reads and manages users.

Errors: AccountError (bad input), LoginFailed (wrong name or password, disabled), LockedOut
(retry_after_s).
"""

import hashlib
import hmac
import logging
import secrets
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("fengqiao.console")

ROLES = ("viewer", "officer", "admin")
RIGHTS = {"viewer": {"read"}, "officer": {"read", "act"}, "admin": {"read", "manage"}}
MAX_FAILURES = 5            # per account
MAX_SOURCE_FAILURES = 5     # per source address (any accounts)
LOCK_WINDOW_S = 900
LOCK_BASE_S = 30            # an account's first lock
SOURCE_LOCK_BASE_S = 2      # a source's first back-off: an office shares one address
LOCK_MAX_S = 900
SESSION_TTL_S = 12 * 3600     # one duty shift

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_users (
    username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
    person_id TEXT, disabled INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, source TEXT);
CREATE TABLE IF NOT EXISTS console_login_failures (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS console_login_failures_key ON console_login_failures(key, at);
CREATE TABLE IF NOT EXISTS console_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, username TEXT, source TEXT,
    action TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
"""


class AccountError(ValueError):
    """A user command that cannot be done (unknown user, bad role, empty password)."""


class LoginFailed(Exception):
    """Wrong user name or password, or the account is disabled (the page says only 'wrong')."""


class LockedOut(Exception):
    def __init__(self, retry_after_s, key):
        super().__init__("too many failed logins: try again in %d s" % retry_after_s)
        self.retry_after_s = retry_after_s
        self.key = key


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    person_id: "str | None"
    csrf: str
    expires_at: float
    token: str = ""

    def can(self, right):
        return right in RIGHTS.get(self.role, ())


def _sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, db, clock, hasher=None, session_ttl_s=SESSION_TTL_S):
        self.db = db
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self.session_ttl_s = session_ttl_s
        self._lock = threading.RLock()
        with self._lock:
            self.db.executescript(_SCHEMA)
        # a wrong user name costs as much as a wrong password (no user-name oracle by timing)
        self._dummy_hash = self.hasher.hash(secrets.token_hex(8))

    # -- users ------------------------------------------------------------------------------

    def add_user(self, username, password, role, person_id=None):
        _check(username, password, role)
        now = self.clock.now()
        with self._lock:
            if self.db.execute("SELECT 1 FROM console_users WHERE username = ?", (username,)).fetchone():
                raise AccountError("user %r exists (use passwd to change the password)" % username)
            self.db.execute("INSERT INTO console_users VALUES (?,?,?,?,0,?,?)",
                            (username, self.hasher.hash(password), role, person_id, now, now))
            self._audit(username, None, "user_added", "role=%s person=%s" % (role, person_id or "-"))

    def passwd(self, username, password):
        _check(username, password, "viewer")
        with self._lock:
            self._require(username)
            self.db.execute("UPDATE console_users SET password_hash = ?, updated_at = ? WHERE username = ?",
                            (self.hasher.hash(password), self.clock.now(), username))
            self.db.execute("DELETE FROM console_sessions WHERE username = ?", (username,))
            self._audit(username, None, "password_changed", "")

    def disable(self, username, disabled=True):
        with self._lock:
            self._require(username)
            self.db.execute("UPDATE console_users SET disabled = ?, updated_at = ? WHERE username = ?",
                            (int(disabled), self.clock.now(), username))
            if disabled:
                self.db.execute("DELETE FROM console_sessions WHERE username = ?", (username,))
            self._audit(username, None, "user_disabled" if disabled else "user_enabled", "")

    def users(self):
        with self._lock:
            rows = self.db.execute("SELECT username, role, person_id, disabled FROM console_users ORDER BY username")
            return [{"username": u, "role": r, "person_id": p, "disabled": bool(d)} for u, r, p, d in rows]

    def _require(self, username):
        if not self.db.execute("SELECT 1 FROM console_users WHERE username = ?", (username,)).fetchone():
            raise AccountError("no console user %r" % username)

    # -- login --------------------------------------------------------------------------------

    def login(self, username, password, source=None):
        """A new Session; LockedOut while the account or the source is locked, LoginFailed if wrong."""
        keys = ["user:" + username] + (["source:" + source] if source else [])
        now = self.clock.now()
        with self._lock:
            for key in keys:
                wait = self._locked_for(key, now)
                if wait > 0:
                    raise LockedOut(wait, key)
            row = self.db.execute("SELECT password_hash, role, person_id, disabled FROM console_users "
                                  "WHERE username = ?", (username,)).fetchone()
        ok = False
        try:
            ok = self.hasher.verify(row[0] if row else self._dummy_hash, password) and row is not None and not row[3]
        except (VerificationError, InvalidHashError):
            ok = False
        with self._lock:
            if not ok:
                for key in keys:
                    self.db.execute("INSERT INTO console_login_failures VALUES (?, ?)", (key, now))
                self._audit(username, source, "login_failed", "")
                for key in keys:
                    wait = self._locked_for(key, now)
                    if wait > 0:
                        log.warning("console login locked", extra={"fields": {
                            "key": key, "retry_after_s": wait, "user": username, "source": source}})
                        self._audit(username, source, "locked_out", "%s for %d s" % (key, wait))
                raise LoginFailed("wrong user name or password")
            self.db.execute("DELETE FROM console_login_failures WHERE key IN (%s)" % ",".join("?" * len(keys)), keys)
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            expires = now + self.session_ttl_s
            self.db.execute("INSERT INTO console_sessions VALUES (?,?,?,?,?,?)",
                            (_sha(token), username, csrf, now, expires, source))
            self.db.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
            self._audit(username, source, "login", "")
            return Session(username, row[1], row[2], csrf, expires, token)

    def _locked_for(self, key, now):
        """Seconds until `key` may try again (0 = not locked)."""
        rows = [t for (t,) in self.db.execute(
            "SELECT at FROM console_login_failures WHERE key = ? AND at > ? ORDER BY at", (key, now - LOCK_WINDOW_S))]
        source = key.startswith("source:")
        limit = MAX_SOURCE_FAILURES if source else MAX_FAILURES
        if len(rows) < limit:
            return 0
        base = SOURCE_LOCK_BASE_S if source else LOCK_BASE_S
        lock_s = min(LOCK_MAX_S, base * 2 ** min(10, len(rows) - limit))
        return max(0, int(rows[-1] + lock_s - now + 0.999))

    def session(self, token):
        if not token:
            return None
        with self._lock:
            row = self.db.execute(
                "SELECT s.username, u.role, u.person_id, s.csrf, s.expires_at, u.disabled FROM console_sessions s "
                "JOIN console_users u ON u.username = s.username WHERE s.token_sha256 = ?", (_sha(token),)).fetchone()
        if row is None or row[5] or row[4] <= self.clock.now():
            return None
        return Session(row[0], row[1], row[2], row[3], row[4], token)

    def logout(self, token):
        with self._lock:
            self.db.execute("DELETE FROM console_sessions WHERE token_sha256 = ?", (_sha(token),))

    def audit(self, username, source, action, detail=""):
        with self._lock:
            self._audit(username, source, action, detail)

    def _audit(self, username, source, action, detail):
        self.db.execute("INSERT INTO console_audit (at, username, source, action, detail) VALUES (?,?,?,?,?)",
                        (self.clock.now(), username, source, action, detail))


def csrf_ok(session, given):
    return bool(given) and session is not None and hmac.compare_digest(session.csrf, given)


def _check(username, password, role):
    if not username or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AccountError("a user name is letters, digits, '-', '_' or '.'")
    if role not in ROLES:
        raise AccountError("role must be one of %s" % ", ".join(ROLES))
    if not password or len(password) < 8:
        raise AccountError("a password has at least 8 characters")
